"""The small pieces of runs, without processes: the command words of ``soclab run cmd``, the
run status as people read it, the run controller's journal, and what the bridge makes of a
journal, a command result and a run status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from soclab.cloud.bridge import runs as bridge_runs
from soclab.cloud.bridge.intake import Rejected
from soclab.edge.runs.journal import Journal
from soclab.tools.runs.cli import UsageError, arguments, command_message, describe
from soclab.wire import InvalidMessage

EXAMPLES = Path(__file__).parents[2] / "schemas" / "examples" / "valid"


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return loaded


# --- soclab run cmd ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "words", "args"),
    [
        ("input", ["off"], {"on": False}),
        ("remote", ["on"], {"on": True}),
        ("set_current", ["2.5"], {"a": 2.5}),
        ("set_power", ["w=100"], {"w": 100.0}),
        ("charge_limits", ["current_max_a=3", "voltage_v=14.2"], {"current_max_a": 3.0, "voltage_v": 14.2}),
        (
            "conf",
            ["BatChgMax_A=4", "LoadEnDefault=false"],
            {"values": {"BatChgMax_A": 4.0, "LoadEnDefault": False}},
        ),
        ("safe", [], {}),
    ],
)
def test_command_words_become_valid_commands(command: str, words: list[str], args: dict[str, Any]) -> None:
    assert arguments(command, words) == args
    message = command_message(
        ("lab1", "pi-01", "eload"), command, args, issuer="operator/alice", expires_s=30
    )
    assert message["expires_ns"] - message["issued_ns"] == 30_000_000_000
    assert message.get("args", {}) == args


@pytest.mark.parametrize(
    ("command", "words"), [("input", ["maybe"]), ("set_current", ["lots"]), ("conf", ["x"])]
)
def test_words_that_make_no_command_are_refused_before_anything_is_sent(
    command: str, words: list[str]
) -> None:
    with pytest.raises(UsageError):
        command_message(("lab1", "pi-01", "eload"), command, arguments(command, words), issuer="operator/a",
                        expires_s=30)  # fmt: skip


def test_the_schema_refuses_what_the_words_cannot_tell() -> None:
    with pytest.raises(InvalidMessage):
        command_message(
            ("lab1", "pi-01", "eload"), "set_current", {"a": -1.0}, issuer="operator/a", expires_s=30
        )
    with pytest.raises(InvalidMessage):
        command_message(("lab1", "pi-01", "eload"), "dance", {}, issuer="operator/a", expires_s=30)


def test_the_run_status_for_people() -> None:
    text = describe(example("run-status-running.json"))
    assert text.splitlines()[0].startswith("lab1/pi-01: running (at ")
    assert "  run r-20240601-2: two cycles" in text
    assert "  cycle 1/2, step 1/8: Discharge at 3 A until 11.8 V" in text
    assert "  elapsed 00:10:00, in this step 00:10:00; until voltage <= 11.8 V" in text
    assert "  voltage on eload.bat_v: 12.21 (fallback: the reference is missing)" in text
    assert "  last event: step at step 1 of run r-20240601-2: run started" in text


# --- the journal -------------------------------------------------------------------------------------


def test_the_journal_numbers_records_orders_their_times_and_keeps_them_until_confirmed(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    event = {"run_event": {"run": "r-1", "event": "start", "reason": "test"}}
    first = journal.append({"t_ns": 1_717_200_000_000_000_000, **event})
    same = journal.append({"t_ns": 1_717_200_000_000_000_000, **event})  # a coarse clock
    earlier = journal.append({"t_ns": 1_717_100_000_000_000_000, **event})  # a clock stepped back
    assert [r["seq"] for r in (first, same, earlier)] == [0, 1, 2]
    assert first["t_ns"] < same["t_ns"] < earlier["t_ns"], "no two records share an InfluxDB identity"
    journal.begin({"id": "r-1"}, 5)
    journal.close()
    again = Journal(tmp_path / "journal.sqlite")  # the process was killed: everything is still there
    assert [r["seq"] for r in again.unconfirmed()] == [0, 1, 2]
    assert again.active() == ({"id": "r-1"}, 5)
    assert again.confirmed([[0, 1]]) == 2
    assert [r["seq"] for r in again.unconfirmed()] == [2]
    assert again.append({"t_ns": 1, **event})["seq"] == 3, "sequence numbers are never reused"
    again.end()
    assert again.active() is None


# --- the bridge ----------------------------------------------------------------------------------------


def test_a_journal_becomes_run_events_and_commands_confirmed_by_sequence_number() -> None:
    payload = json.dumps(example("journal.json")).encode()
    lines, ranges = bridge_runs.lines("soclab/lab1/pi-01/run/journal", payload)
    assert ranges == [[0, 2]]
    assert lines[0] == (
        'run_events,node=pi-01,run=r-20240601-2,site=lab1 event="start",'
        'reason="started by operator/alice (c-20240601-0004)" 1717200000000000000'
    )
    assert lines[1].startswith("commands,device=eload,node=pi-01,site=lab1 ")
    assert "issued_ns=1717200000050000000i" in lines[1]
    assert "cycle=1i" in lines[2]
    assert "step=2i" in lines[2]
    assert "value=11.79" in lines[2]


def test_a_command_result_and_a_run_status_are_stored_too() -> None:
    result = json.dumps(example("cmd-result-failed.json")).encode()
    (line,) = bridge_runs.lines("soclab/lab1/pi-01/eload/cmd/result", result)[0]
    assert line.startswith('commands,device=eload,node=pi-01,site=lab1 command="input",')
    assert 'outcome="failed"' in line
    status = json.dumps(example("run-status-running.json")).encode()
    (line,) = bridge_runs.lines("soclab/lab1/pi-01/run/status", status)[0]
    assert line.startswith(
        'run_status,node=pi-01,site=lab1 cycle=1i,description="Discharge at 3 A until 11.8 V"'
    )
    assert "value=12.21" in line


@pytest.mark.parametrize(
    ("topic", "name", "why"),
    [
        ("soclab/lab1/pi-02/run/journal", "journal.json", "does not match the topic"),
        ("soclab/lab1/pi-01/mppt/cmd/result", "cmd-result-failed.json", "on the topic of lab1/pi-01/mppt"),
        ("soclab/lab1/pi-01/run/journal", "run-status-running.json", "soclab.journal/1"),
    ],
)
def test_what_does_not_fit_its_topic_is_rejected(topic: str, name: str, why: str) -> None:
    with pytest.raises(Rejected, match=why):
        bridge_runs.lines(topic, json.dumps(example(name)).encode())
