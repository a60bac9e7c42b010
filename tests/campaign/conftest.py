"""The bad-input campaign: fixtures (one pipeline per module) and its report.

Each attack test records what it threw and what it cost the good devices (``Record``); the
report is printed at the end of the run and kept in ``var/bad-input-campaign.txt``: per class of
attack, the inputs tried, the pipeline's processes that crashed, the good samples lost and
doubled, and a note (e.g. the good devices' lag during a flood). Classes whose fix is not on
main yet are marked ``xfail(strict=True)`` with their finding's number: their row says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pipeline import DEVICES, Count, Pipeline

from soclab.dev.localservices import InfluxDB1, V2WriteShim


@dataclass
class Record:
    finding: str
    attack: str
    inputs: int
    crashes: list[tuple[str, int]]
    lost: int
    doubled: int
    note: str
    expected_to_fail: bool


_RECORDS: list[Record] = []


def _pipeline(
    tmp_path_factory: pytest.TempPathFactory,
    server: tuple[InfluxDB1, V2WriteShim],
    site: str,
    production: bool,
    device_env: dict[str, dict[str, str]] | None = None,
) -> Iterator[Pipeline]:
    influx, shim = server
    folder = tmp_path_factory.mktemp(site)
    with Pipeline(
        folder, influx, shim.url, site=site, production=production, device_env=device_env
    ) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def production(
    tmp_path_factory: pytest.TempPathFactory, _influx_server: tuple[InfluxDB1, V2WriteShim]
) -> Iterator[Pipeline]:
    """The pipeline on the production broker's configuration (TLS, passwords, per-device ACL)."""
    yield from _pipeline(tmp_path_factory, _influx_server, "camp-prod", production=True)


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, _influx_server: tuple[InfluxDB1, V2WriteShim]
) -> Iterator[Pipeline]:
    """The lab pipeline as ``make lab`` runs it (development broker, anonymous). The e-load's
    publisher waits up to 3 s to fill a batch, so its spool always holds samples not yet sent
    (as a LabJack's does): what a forged confirmation could delete."""
    env = {"eload": {"SOCLAB_BATCH_MAX_DELAY_S": "3"}}
    yield from _pipeline(tmp_path_factory, _influx_server, "camp-lab", production=False, device_env=env)


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., Record]:
    """``record(finding, attack, inputs, pipeline, since, note="", settle_s=30)``: settle the good
    samples assigned since ``since`` (waiting up to ``settle_s``), count them, restart what
    crashed, and keep the row for the report."""

    def make(
        finding: str,
        attack: str,
        inputs: int,
        pipeline: Pipeline,
        since: dict[str, int],
        note: str = "",
        settle_s: float = 30.0,
    ) -> Record:
        crashes = pipeline.restart_crashed()  # first: a crashed publisher's spool drains again
        counts: dict[str, Count] = pipeline.settle(since, settle_s)
        crashes += pipeline.restart_crashed()
        row = Record(
            finding,
            attack,
            inputs,
            crashes,
            sum(len(c.lost) for c in counts.values()),
            sum(c.doubled for c in counts.values()),
            note,
            request.node.get_closest_marker("xfail") is not None,
        )
        _RECORDS.append(row)
        return row

    return make


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RECORDS:
        return
    lines = [f"{'finding':<8}{'attack':<58}{'inputs':>8}{'crashes':>8}{'lost':>6}{'doubled':>8}  note"]
    for r in _RECORDS:
        mark = " (xfail: fix not on main)" if r.expected_to_fail else ""
        lines.append(
            f"{r.finding:<8}{r.attack[:57]:<58}{r.inputs:>8}{len(r.crashes):>8}{r.lost:>6}{r.doubled:>8}"
            f"  {r.note}{mark}"
        )
    fixed = [r for r in _RECORDS if not r.expected_to_fail]
    lines.append(
        f"total: {sum(r.inputs for r in _RECORDS)} inputs; where the fix is on main: "
        f"{sum(len(r.crashes) for r in fixed)} crashes, {sum(r.lost for r in fixed)} good samples lost, "
        f"{sum(r.doubled for r in fixed)} doubled (good devices: {', '.join(DEVICES)})"
    )
    terminalreporter.section("bad-input campaign")
    for line in lines:
        terminalreporter.write_line(line)
    out = Path(__file__).parents[2] / "var" / "bad-input-campaign.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
