"""The shared battery file: one writer process, readers elsewhere, never a torn snapshot.

Cross-process tests run real child processes (``python -c``) and bound every wait.
"""

from __future__ import annotations

import dataclasses
import mmap
import struct
import subprocess
import sys
import time

import pytest

from soclab.dev.sim.battery import BatteryState
from soclab.dev.sim.instruments import labjack_t7 as standin
from soclab.dev.sim.shared_battery import (
    SIZE,
    BatteryStateCorrupt,
    BatteryStateMissing,
    BatteryStateReader,
    BatteryStateStale,
    BatteryStateWriter,
    interpolate,
)
from soclab.edge.instruments import kind
from soclab.edge.instruments.labjack_t7.driver import LabJackDriver

DEADLINE_S = 20.0


def state(n: float) -> BatteryState:
    """A state whose every field is a known function of n, so a torn one shows."""
    return BatteryState(
        t_s=n,
        soc=n * 1.0,
        ocv_v=n * 2.0,
        voltage_v=n * 3.0,
        current_a=-n,
        charged_ah=n * 4.0,
        discharged_ah=n * 5.0,
        temperature_degc=n * 6.0,
    )


def consistent(s: BatteryState) -> bool:
    n = s.t_s
    return s == state(n)


# --- one process ----------------------------------------------------------------------------------
def test_round_trip_pair_and_interpolation(tmp_path):
    path = tmp_path / "battery.state"
    with BatteryStateWriter(path) as writer:
        reader = BatteryStateReader(path)
        now = time.time_ns()
        writer.write(state(1), t_ns=now - 20_000_000)
        (t1, s1), (t0, s0) = reader.pair()
        assert (t1, s1) == (t0, s0) == (now - 20_000_000, state(1))  # only one snapshot so far
        writer.write(state(2), t_ns=now)
        assert reader.read() == (now, state(2))
        latest, previous = reader.pair()
        assert latest == (now, state(2))
        assert previous == (now - 20_000_000, state(1))
        mid = reader.at(now - 10_000_000)
        assert (mid.voltage_v, mid.current_a) == (pytest.approx(4.5), pytest.approx(-1.5))
        assert reader.at(now + 10**9) == state(2)  # held after the latest, never extrapolated
        reader.close()


def test_interpolate_orders_its_inputs():
    a, b = (100, state(1)), (200, state(3))
    assert interpolate(b, a, 150).soc == pytest.approx(2.0)
    assert interpolate(a, b, 50) == state(1)


def test_missing_empty_stale_and_foreign_files(tmp_path):
    path = tmp_path / "battery.state"
    reader = BatteryStateReader(path, max_age_s=0.5)
    with pytest.raises(BatteryStateMissing, match="no battery state file"):
        reader.read()
    writer = BatteryStateWriter(path)
    with pytest.raises(BatteryStateMissing, match="nothing written"):
        reader.read()
    writer.write(state(1), t_ns=time.time_ns() - 2_000_000_000)
    with pytest.raises(BatteryStateStale, match=r"2\.0 s old"):
        reader.read()
    writer.close(unlink=True)
    reader.close()
    path.write_bytes(b"x" * SIZE)
    with pytest.raises(BatteryStateCorrupt, match="not a battery state file"):
        BatteryStateReader(path).read()
    path.write_bytes(b"short")
    with pytest.raises(BatteryStateCorrupt, match="bytes"):
        BatteryStateReader(path).read()


def _poke(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), SIZE) as m:
        m[offset : offset + len(data)] = data


def test_a_writer_stuck_mid_write_or_a_bad_crc_is_never_accepted(tmp_path):
    path = tmp_path / "battery.state"
    writer = BatteryStateWriter(path)
    writer.write(state(7))
    reader = BatteryStateReader(path, max_wait_s=0.05)
    assert consistent(reader.read()[1])
    _poke(path, 16, struct.pack("<Q", 3))  # sequence odd: a writer that died while writing
    with pytest.raises(BatteryStateCorrupt, match="mid-write"):
        reader.read()
    _poke(path, 16, struct.pack("<Q", 4))
    _poke(path, 24 + 8 + 8, struct.pack("<d", 0.123))  # soc changed, CRC not
    with pytest.raises(BatteryStateCorrupt, match="CRC"):
        reader.read()
    assert reader.torn_reads > 0
    writer.write(state(8))  # the next good write heals it
    assert reader.read()[1] == state(8)
    writer.close()


def test_reader_follows_a_restarted_writer(tmp_path):
    path = tmp_path / "battery.state"
    first = BatteryStateWriter(path)
    first.write(state(1))
    reader = BatteryStateReader(path)
    assert reader.read()[1] == state(1)
    first.close()
    second = BatteryStateWriter(path)  # a new file under the same name
    second.write(state(2))
    assert reader.read()[1] == state(2)
    second.close()


# --- two processes --------------------------------------------------------------------------------
HAMMER = r"""
import sys, time
from soclab.dev.sim.battery import BatteryState
from soclab.dev.sim.shared_battery import BatteryStateWriter
w = BatteryStateWriter(sys.argv[1])
n = 0
end = time.monotonic() + float(sys.argv[2])
print("ready", flush=True)
while time.monotonic() < end:
    n += 1
    w.write(BatteryState(t_s=n, soc=n * 1.0, ocv_v=n * 2.0, voltage_v=n * 3.0, current_a=-n,
                         charged_ah=n * 4.0, discharged_ah=n * 5.0, temperature_degc=n * 6.0))
print(n, flush=True)
"""


def child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the child prints it within seconds or dies (then: "")
    assert line, f"child died: {proc.stderr.read() if proc.stderr else ''}"
    return line.strip()


def test_reader_in_another_process_never_sees_a_torn_snapshot(tmp_path):
    path = tmp_path / "battery.state"
    proc = child(HAMMER, path, 1.5)
    try:
        assert wait_line(proc) == "ready"
        reader = BatteryStateReader(path, max_wait_s=1.0)
        seen: set[float] = set()
        reads = 0
        deadline = time.monotonic() + DEADLINE_S
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                (t1, s1), (t0, s0) = reader.pair()
            except BatteryStateMissing:
                continue  # before the first write
            assert consistent(s1), s1
            assert consistent(s0), s0
            assert s0.t_s in (s1.t_s - 1, s1.t_s)
            assert t0 <= t1
            seen.add(s1.t_s)
            reads += 1
        written = int(wait_line(proc))
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode in (0, -9)
    assert reads > 100
    assert written > len(seen) > 10


LAB = r"""
import sys, time
from soclab.dev.sim.battery import Battery
from soclab.dev.sim.shared_battery import BatteryStateWriter
battery = Battery(soc=0.5)
battery.set_current("load", -2.5)
writer = BatteryStateWriter(sys.argv[1])
s = battery.state()
writer.write(s)
print(s.current_a, s.voltage_v, flush=True)
while True:
    time.sleep(0.02)
    writer.write(battery.state())
"""


def test_standin_in_the_publisher_process_watches_the_lab_battery(tmp_path):
    path = tmp_path / "battery.state"
    lab = child(LAB, path)
    try:
        current_a, voltage_v = map(float, wait_line(lab).split())
        standin.configure(BatteryStateReader(path, max_age_s=0.5), seed=11)
        chans = {
            "bat_a": {"ain": "AIN1", "calibration": "lem_la55p", "resistor_ohm": 150.0},
            "bat_v": {"ain": "AIN2", "calibration": "divider", "ratio": 2.0},
        }
        options = {"mode": "stream", "scan_rate_hz": 2000.0, "scans_per_read": 200, "backend": "standin"}
        driver = LabJackDriver(kind("labjack").load_options({"channels": chans, **options}))
        with driver:
            readings: list = []
            deadline = time.monotonic() + DEADLINE_S
            while len(readings) < 1000:
                assert time.monotonic() < deadline
                readings += driver.read(timeout=0.5)
            mean = {k: sum(r.values[k] for r in readings) / len(readings) for k in ("bat_a", "bat_v")}
            assert mean["bat_a"] == pytest.approx(current_a, abs=0.005)
            assert mean["bat_v"] == pytest.approx(voltage_v, abs=0.005)

            lab.kill()  # the simulated lab stops: its battery goes stale, the LabJack looks unplugged
            lab.wait(timeout=10)
            while "no battery" not in (driver.health.last_error or ""):
                assert time.monotonic() < deadline, driver.health.last_error
                driver.read(timeout=0.5)
            assert driver.health.counters["connection_losses"] >= 1
    finally:
        lab.kill()
        lab.wait(timeout=10)
        standin.reset()


def test_state_file_layout_is_what_the_docs_say():
    fields = dataclasses.fields(BatteryState)
    record = 8 + 8 * len(fields) + 4 + 4  # t_ns, the fields, crc, padding
    assert 24 + 2 * record == SIZE
