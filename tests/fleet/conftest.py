"""A NATS cluster shared by the tests of one module (started in about a second), and the fleet
tests' report, printed at the end of the run (and kept in var/fleet.txt)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from soclab.dev.localservices import NatsCluster

ACK_WAIT_S = 3.0  # NATS's default is 30 s; short here so that redelivery tests stay short

_REPORT: list[str] = []


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three nodes; a test that kills one starts it again before it ends."""
    with NatsCluster(tmp_path_factory.mktemp("nats"), ack_wait_s=ACK_WAIT_S) as cluster:
        yield cluster


@pytest.fixture
def fleet_report() -> list[str]:
    return _REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORT:
        terminalreporter.section("fleet: recovery times")
        for line in _REPORT:
            terminalreporter.write_line(line)
        out = Path(__file__).parents[2] / "var" / "fleet.txt"
        out.parent.mkdir(exist_ok=True)
        out.write_text("\n".join(_REPORT) + "\n", encoding="utf-8")
