"""The spool: sequence numbers that survive restarts, removal on acknowledgement, the bound."""

from __future__ import annotations

import json
import subprocess
import sys

from soclab.edge.instruments.base import Reading
from soclab.edge.spool import Spool

T0 = 1_700_000_000_000_000_000


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading(T0 + (start + i) * 1000, {"bat_v": 12.0 + i / 100}) for i in range(n)]


def test_sequence_numbers_continue_after_reopen(tmp_path):
    spool = Spool(tmp_path / "s.sqlite")
    assert spool.append(readings(3)) == range(0, 3)
    spool.remove(0, 2)
    spool.close()
    spool = Spool(tmp_path / "s.sqlite")
    assert spool.depth == 0
    assert spool.append(readings(2)) == range(3, 5)


def test_rows_are_the_samples_json_in_order(tmp_path):
    spool = Spool(tmp_path / "s.sqlite")
    spool.append(readings(3))
    rows = spool.peek(-1, 10)
    assert [r[0] for r in rows] == [0, 1, 2]
    assert json.loads(rows[1][2]) == {"seq": 1, "t_ns": T0 + 1000, "values": {"bat_v": 12.01}}
    assert [r[0] for r in spool.peek(0, 1)] == [1]


def test_non_finite_values_are_flagged_not_sent(tmp_path):
    spool = Spool(tmp_path / "s.sqlite")
    spool.append([Reading(T0, {"bat_v": float("nan"), "bat_a": 1.0})])
    sample = json.loads(spool.peek(-1, 1)[0][2])
    assert sample["values"] == {"bat_a": 1.0}
    assert sample["flags"] == ["invalid:bat_v"]
    assert spool.invalid_values == 1


def test_a_value_that_cannot_travel_is_flagged_and_costs_no_other_value(tmp_path):
    """An integer beyond 64 bits (InfluxDB refuses it) or a value that is no number would make the
    schema refuse the whole message it rides in, its good samples too."""
    spool = Spool(tmp_path / "s.sqlite")
    spool.append([Reading(T0, {"bat_v": 2**64, "bat_a": -(2**63), "soc_pct": "80", "load_on": True})])  # type: ignore[dict-item]
    sample = json.loads(spool.peek(-1, 1)[0][2])
    assert sample["values"] == {"bat_a": -(2**63), "load_on": True}
    assert sample["flags"] == ["invalid:bat_v", "invalid:soc_pct"]
    assert spool.invalid_values == 2


def test_full_spool_drops_oldest_and_counts_it(tmp_path, caplog):
    spool = Spool(tmp_path / "s.sqlite", max_samples=5)
    spool.append(readings(4))
    spool.append(readings(3, start=4))
    assert spool.depth == 5
    assert [r[0] for r in spool.peek(-1, 10)] == [2, 3, 4, 5, 6]
    assert spool.dropped == 2
    assert "event=spool_full policy=drop-oldest dropped=2" in caplog.text
    spool.close()
    assert Spool(tmp_path / "s.sqlite", max_samples=5).dropped == 2


def test_appended_samples_survive_kill_9(tmp_path):
    path = tmp_path / "s.sqlite"
    code = f"""
import os, signal
from soclab.edge.spool import Spool
from soclab.edge.instruments.base import Reading
s = Spool({str(path)!r})
s.append([Reading({T0} + i, {{"bat_v": 1.0}}) for i in range(100)])
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9
    spool = Spool(path)
    assert spool.depth == 100
    assert spool.next_seq == 100
