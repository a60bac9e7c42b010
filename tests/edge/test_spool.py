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


def test_an_append_is_checked_as_a_whole_or_value_by_value_with_the_same_result(tmp_path):
    """All floats, finite: checked once for the append. Floats whose sum overflows, or a bad value
    among thousands, or integers: value by value. Either way every good value travels as it is."""
    spool = Spool(tmp_path / "s.sqlite")
    spool.append([Reading(T0, {"bat_v": 1e308}), Reading(T0 + 1, {"bat_v": 1e308}, ("clock_step",))])
    spool.append([Reading(T0 + 2 + i, {"bat_v": 1.5, "bat_a": -0.25}) for i in range(1000)])
    one_bad = [Reading(T0 + 3000, {"bat_v": float("-inf")})]
    spool.append([Reading(T0 + 2000 + i, {"bat_v": 1.5}) for i in range(999)] + one_bad)
    spool.append([Reading(T0 + 4000, {"bat_v": 3.0, "n": 7}, ("b", "a", "b"))])
    samples = [json.loads(body) for _, _, body in spool.peek(-1, 10_000)]
    assert [s["seq"] for s in samples] == list(range(2003))
    assert samples[0] == {"seq": 0, "t_ns": T0, "values": {"bat_v": 1e308}}
    assert samples[1] == {"seq": 1, "t_ns": T0 + 1, "values": {"bat_v": 1e308}, "flags": ["clock_step"]}
    assert samples[2] == {"seq": 2, "t_ns": T0 + 2, "values": {"bat_v": 1.5, "bat_a": -0.25}}
    assert samples[2001] == {"seq": 2001, "t_ns": T0 + 3000, "values": {}, "flags": ["invalid:bat_v"]}
    last = {"seq": 2002, "t_ns": T0 + 4000, "values": {"bat_v": 3.0, "n": 7}, "flags": ["a", "b"]}
    assert samples[2002] == last
    assert spool.invalid_values == 1


def test_a_sample_stays_one_row_whatever_its_strings_hold(tmp_path):
    """Samples of one append are encoded together and split at line ends: a flag holding a line
    break (escaped in JSON) or another line separator must not split its sample."""
    spool = Spool(tmp_path / "s.sqlite")
    spool.append([Reading(T0 + i, {"bat_v": 1.0}, (f"x\n\u2028\x85{i}",)) for i in range(3)])
    samples = [json.loads(body) for _, _, body in spool.peek(-1, 10)]
    assert [s["flags"] for s in samples] == [[f"x\n\u2028\x85{i}"] for i in range(3)]
