"""The fault campaign's figures, printed at the end of the test run (and kept in var/)."""

from __future__ import annotations

from pathlib import Path

import pytest

_REPORT: list[str] = []


@pytest.fixture
def campaign_report() -> list[str]:
    return _REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORT:
        terminalreporter.section("fault campaign")
        for line in _REPORT:
            terminalreporter.write_line(line)
        out = Path(__file__).parents[2] / "var" / "fault-campaign.txt"
        out.parent.mkdir(exist_ok=True)
        out.write_text("\n".join(_REPORT) + "\n", encoding="utf-8")
