"""The LabJack driver against the LJM stand-in: command mode, stream mode, faults, the clock, backends.

Every wait is bounded by a deadline; nothing asserts on how long something took.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time

import pytest

from soclab.dev.sim.battery import Battery
from soclab.dev.sim.instruments import labjack_t7 as standin
from soclab.edge.instruments import kind
from soclab.edge.instruments.base import Reading
from soclab.edge.instruments.labjack_t7.backend import LabJackError, LJMBackend, LJMUnavailable
from soclab.edge.instruments.labjack_t7.driver import LabJackDriver

DEADLINE_S = 20.0


@pytest.fixture
def battery():
    b = Battery(soc=0.6)
    b.set_current("load", -3.0)
    return b


@pytest.fixture
def wired(battery):
    """The stand-in wired like the lab: LEM (R_M 150 ohm) on AIN1, a divider of 2 on AIN2."""
    standin.configure(battery, resistor_ohm=150.0, divider_ratio=2.0, seed=42)
    yield standin
    standin.reset()


def channels(r_m: float = 150.0, ratio: float = 2.0, **lem: float) -> dict[str, dict]:
    return {
        "bat_a": {"ain": "AIN1", "calibration": "lem_la55p", "resistor_ohm": r_m, **lem},
        "bat_v": {"ain": "AIN2", "calibration": "divider", "ratio": ratio},
    }


def labjack(chans: dict[str, dict], *, module: LJMBackend | None = None, **options) -> LabJackDriver:
    """The driver as the publisher builds it: options from a table, then the driver."""
    return LabJackDriver(kind("labjack").load_options({"channels": chans, **options}), backend=module)


def stream_driver(**kwargs) -> LabJackDriver:
    options = {"mode": "stream", "scan_rate_hz": 1000.0, "scans_per_read": 100, "backend": "standin"}
    return labjack(channels(), **{**options, **kwargs})


def read_until(driver: LabJackDriver, enough, deadline_s: float = DEADLINE_S) -> list[Reading]:
    """Read until ``enough(readings)`` or the deadline (then fail)."""
    readings: list[Reading] = []
    deadline = time.monotonic() + deadline_s
    while not enough(readings):
        assert time.monotonic() < deadline, f"gave up after {deadline_s} s with {len(readings)} readings"
        readings += driver.read(timeout=0.5)
    return readings


def strictly_increasing(stamps: list[int]) -> bool:
    return all(b > a for a, b in itertools.pairwise(stamps))


# --- command mode ---------------------------------------------------------------------------------
def test_command_mode_reads_the_battery(wired, battery):
    driver = labjack(channels(), rate_hz=50.0, backend="standin")
    with driver:
        readings = read_until(driver, lambda r: len(r) >= 5)
        ident = driver.identity()
    state = battery.state()
    noise_a = 5 * 200e-6 * 1000 / 150  # 5 sigma of 200 uV through the LEM's scale
    for r in readings:
        assert set(r.values) == {"bat_a", "bat_v"}
        assert r.flags == ()
        assert r.values["bat_a"] == pytest.approx(state.current_a, abs=noise_a)
        assert r.values["bat_v"] == pytest.approx(state.voltage_v, abs=5 * 200e-6 * 2)
    assert strictly_increasing([r.t_ns for r in readings])
    assert (ident["model"], ident["serial_number"], ident["firmware"]) == ("T7", 470023670, 1.0299)
    assert (ident["backend"], ident["mode"]) == ("standin", "command")


def test_command_mode_calibration_undoes_the_sensor_errors(battery):
    standin.configure(battery, resistor_ohm=140.0, sensor_gain=1.02, sensor_offset_a=0.1, noise_v=0.0)
    try:
        driver = labjack(channels(r_m=140.0, gain=1 / 1.02, offset_a=-0.1 / 1.02), backend="standin")
        with driver:
            (reading,) = read_until(driver, lambda r: len(r) >= 1)
        assert reading.values["bat_a"] == pytest.approx(-3.0, abs=1e-9)
    finally:
        standin.reset()


def test_command_mode_unplug_and_replug(wired):
    driver = labjack(channels(), rate_hz=50.0, backend="standin")
    with driver:
        read_until(driver, lambda r: len(r) >= 1)
        standin.unplug()
        assert driver.read(timeout=0.5) == []  # the read fails: ConnectionLost, handled by the base
        assert driver.health.counters["connection_losses"] == 1
        assert "RECONNECT_FAILED" in (driver.health.last_error or "")
        driver.read(timeout=0.5)  # the reopen fails while unplugged
        assert "DEVICE_NOT_FOUND" in (driver.health.last_error or "")
        standin.replug()
        read_until(driver, lambda r: len(r) >= 1)
    assert driver.health.counters["port_reopens"] == 1


def test_configuration_refused_by_the_device_is_loud(wired):
    driver = labjack({"ain99_v": {"ain": "AIN99"}}, backend="standin")
    with pytest.raises(LabJackError) as info:
        driver.open()
    assert (info.value.code, info.value.name) == (1294, "INVALID_NAME")
    assert standin.stats()["opens"] == standin.stats()["closes"] == 1  # the handle was released


def test_unconfigured_standin_is_loud():
    standin.reset()
    driver = labjack(channels(), backend="standin")
    with pytest.raises(LabJackError, match="configure"):
        driver.open()


# --- stream mode ----------------------------------------------------------------------------------
def test_stream_counts_and_stamps(wired, battery):
    driver = stream_driver(scan_rate_hz=1234.5, scans_per_read=100)
    with driver:
        per_read = []

        def enough(readings: list[Reading]) -> bool:
            per_read.append(len(readings))
            return len(readings) >= 1500

        readings = read_until(driver, enough)
        after_ns = time.time_ns()
        gauges, counters = dict(driver.health.gauges), dict(driver.health.counters)

    rate = gauges["scan_rate_hz"]
    assert rate == 80e6 / round(80e6 / 1234.5)  # quantised like a T7
    assert rate != 1234.5
    assert all(b - a == 100 for a, b in itertools.pairwise(per_read))  # one read = 100 scans
    assert counters["scans_read"] == len(readings)
    # Scans received plus the backlog = what the device acquired since the start, within one read.
    t0 = readings[0].t_ns
    expected = rate * (after_ns - t0) / 1e9
    assert abs(counters["scans_read"] + gauges["ljm_backlog"] - expected) <= 100
    assert gauges["device_backlog"] == 0
    assert gauges["ljm_backlog"] >= 0
    assert gauges["ljm_backlog_max"] >= 0

    stamps = [r.t_ns for r in readings]
    assert strictly_increasing(stamps)
    period = 1e9 / rate
    odd = [b - a for a, b in itertools.pairwise(stamps) if not int(period) <= b - a <= int(period) + 1]
    assert len(odd) <= counters.get("clock_reanchors", 0)
    state = battery.state()
    mean_a = sum(r.values["bat_a"] for r in readings) / len(readings)
    assert mean_a == pytest.approx(state.current_a, abs=0.005)


def test_skipped_samples_are_flagged_and_left_out(battery):
    standin.configure(battery, skip_probability=0.05, seed=7)
    try:
        driver = stream_driver(scans_per_read=200)
        with driver:
            readings = read_until(driver, lambda r: len(r) >= 1000)
            counters = driver.health.counters
        flagged = 0
        for r in readings:
            skipped = {f.removeprefix("skipped:") for f in r.flags}
            assert all(f.startswith("skipped:") for f in r.flags)
            assert skipped.isdisjoint(r.values)  # never stored as a value
            assert skipped | set(r.values) == {"bat_a", "bat_v"}
            assert -9999.0 not in r.values.values()
            flagged += len(skipped)
        assert flagged > 0
        assert flagged == counters["skipped_samples"] == standin.stats()["skipped"]
        assert len(readings) == counters["scans_read"]
    finally:
        standin.reset()


def test_a_scan_with_every_channel_skipped_keeps_its_place(battery):
    standin.configure(battery, skip_probability=0.5, seed=3)
    try:
        driver = labjack(
            {"bat_v": {"ain": "AIN2", "calibration": "divider", "ratio": 2.0}},
            mode="stream",
            scan_rate_hz=2000.0,
            scans_per_read=200,
            backend="standin",
        )
        with driver:
            readings = read_until(driver, lambda r: len(r) >= 200)
            counters = driver.health.counters
        assert counters["skipped_scans"] > 0
        assert len(readings) == counters["scans_read"]  # every scan keeps its seq and time
        empty = [r for r in readings if not r.values]
        assert len(empty) == counters["skipped_scans"]
        assert all(r.flags == ("skipped:bat_v",) for r in empty)
        assert all(r.flags == () for r in readings if r.values)
    finally:
        standin.reset()


def test_unplug_reopens_and_restarts_the_stream(wired):
    driver = stream_driver()
    with driver:
        before = read_until(driver, lambda r: len(r) >= 200)
        standin.unplug(for_s=0.3)
        after = read_until(driver, lambda r: len(r) >= 200)
        counters = dict(driver.health.counters)
    assert counters["connection_losses"] == 1
    assert counters["port_reopens"] == 1
    assert counters["stream_starts"] == 2
    assert standin.stats()["stream_starts"] == 2
    assert after[0].t_ns > before[-1].t_ns
    assert strictly_increasing([r.t_ns for r in before + after])


def test_unplug_during_a_blocking_read(wired):
    driver = stream_driver(scans_per_read=500)  # one read blocks for 0.5 s
    with driver:
        timer = threading.Timer(0.1, standin.unplug, kwargs={"for_s": 0.2})
        timer.start()
        try:
            assert driver.read(timeout=0.5) == []
        finally:
            timer.join()
        assert driver.health.counters["connection_losses"] == 1
        read_until(driver, lambda r: len(r) >= 1)
    assert driver.health.counters["stream_starts"] == 2


def test_lagging_reader_overflows_the_buffer_and_the_stream_restarts(wired, monkeypatch):
    monkeypatch.setattr(standin, "BUFFER_S", 0.05)  # LJM's buffer: 50 scans at 1 kHz
    driver = stream_driver(scans_per_read=10)
    with driver:
        read_until(driver, lambda r: len(r) >= 10)
        time.sleep(0.3)  # the application falls behind (not a timing assertion)
        assert driver.read(timeout=0.5) == []
        assert "LJM_BUFFER_FULL" in (driver.health.last_error or "")
        read_until(driver, lambda r: len(r) >= 10)
    assert driver.health.counters["stream_starts"] == 2


# --- the stream's clock -----------------------------------------------------------------------------
@pytest.mark.parametrize("drift_ppm", [3000.0, -3000.0])
def test_clock_drift_is_measured_and_reanchored(battery, drift_ppm):
    # An exaggerated crystal error so that 2.5 s show what months would on a real T7.
    standin.configure(battery, drift_ppm=drift_ppm, seed=5)
    try:
        driver = stream_driver(scans_per_read=50, max_clock_offset_ms=0.5)
        with driver:
            readings = read_until(driver, lambda r: len(r) >= 2500)
            gauges, counters = dict(driver.health.gauges), dict(driver.health.counters)
    finally:
        standin.reset()
    assert counters["clock_reanchors"] >= 1
    assert gauges["clock_drift_ppm"] == pytest.approx(drift_ppm, abs=1000)
    assert abs(gauges["clock_offset_ms"]) < 3.0
    stamps = [r.t_ns for r in readings]
    assert strictly_increasing(stamps)
    gaps = {b - a for a, b in itertools.pairwise(stamps)}
    assert min(gaps) >= 500_000  # a backward step never squeezes scans closer than half a period


def test_stamp_stays_after_the_stream_stamps(battery):
    standin.configure(battery, drift_ppm=20_000.0, seed=5)  # the T7 runs 2 % fast: stamps run ahead
    try:
        driver = stream_driver(scans_per_read=100, max_clock_offset_ms=10_000)
        with driver:
            first = read_until(driver, lambda r: len(r) >= 1000)
            assert driver.stamp().t_ns > first[-1].t_ns
            driver.close()
            driver.open()  # a new stream run starts after everything stamped so far
            second = read_until(driver, lambda r: len(r) >= 100)
        assert second[0].t_ns > first[-1].t_ns
    finally:
        standin.reset()


# --- backends -------------------------------------------------------------------------------------
def test_real_backend_without_the_native_library_is_a_typed_error():
    wrapper = sys.modules.get("labjack.ljm.ljm")
    if wrapper is not None and getattr(wrapper, "_staticLib", None) is not None:
        pytest.skip("the native LJM library is installed here")
    with pytest.raises(LJMUnavailable, match=r"libLabJackM|labjack-ljm"):
        labjack(channels(), backend="ljm")


def test_real_backend_without_the_package_is_a_typed_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "labjack.ljm", None)
    with pytest.raises(LJMUnavailable, match="labjack-ljm"):
        labjack(channels(), backend="ljm")


def test_real_module_failing_on_its_first_call_is_a_typed_error():
    ljm = pytest.importorskip("labjack.ljm")
    if getattr(sys.modules["labjack.ljm.ljm"], "_staticLib", None) is not None:
        pytest.skip("the native LJM library is installed here")
    driver = labjack(channels(), module=ljm)  # bypasses the check at load time
    with pytest.raises(LJMUnavailable, match="libLabJackM"):
        driver.open()
