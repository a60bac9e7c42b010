"""Fixtures of the runs tests: ``rig_factory`` builds the simulated lab with its edge processes
(``rig.Rig``) on the session's InfluxDB, for a test module to keep while its cases run; the
``run_report`` collects the measured times, printed at the end of the session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rig import Rig

from soclab.dev.localservices import InfluxDB1, V2WriteShim

_REPORT: list[str] = []


@pytest.fixture(scope="module")
def rig_factory(
    tmp_path_factory: pytest.TempPathFactory, _influx_server: tuple[InfluxDB1, V2WriteShim]
) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**options: Any) -> Rig:
        server, shim = _influx_server
        rig = Rig(Path(tmp_path_factory.mktemp("rig")), server, **options)
        rig.shim_url = shim.url
        made.append(rig)
        return rig.start()

    yield make
    for rig in made:
        rig.close()


@pytest.fixture(scope="session")
def run_report() -> list[str]:
    return _REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORT:
        terminalreporter.section("runs: time to the safe state, samples lost")
        for line in _REPORT:
            terminalreporter.write_line(line)
