"""The MPPT driver and its simulator together over a real pseudo-terminal: the integration cases.

The driver's logic is tested byte for byte against the real library's transcripts
(test_mppt_transcripts.py); here the simulator is held to the same transcripts, and the two
meet on a pty: publications while requests run from several threads, control that moves the
simulated battery, the cable pulled out and put back.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import serial
from transcript import THINGSET, Exchange, thingset_steps

from soclab.dev.sim.battery import Battery
from soclab.dev.sim.instruments.libresolar_mppt import MpptSimulator
from soclab.edge.instruments.base import ConnectionLost, Reading
from soclab.edge.instruments.libresolar_mppt import codec
from soclab.edge.instruments.libresolar_mppt.codec import Response
from soclab.edge.instruments.libresolar_mppt.driver import ChargeLimits, Inputs, MpptDriver, NotFound
from soclab.edge.instruments.libresolar_mppt.fields import DIALECTS
from soclab.edge.instruments.libresolar_mppt.options import MpptOptions

PERIOD_S = 0.2
WAIT_S = 15.0  # generous: a busy 2-core machine

DIALECT_NAMES = ["v21", "v0.4", "v0.5"]
GROUP = {"v21": "output", "v0.4": "meas", "v0.5": "Battery"}
VI_NAMES = {"v21": ["Bat_V", "Bat_A"], "v0.4": ["Bat_V", "Bat_A"], "v0.5": ["rVoltage_V", "rCurrent_A"]}


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Poll until ``condition()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Rig:
    battery: Battery
    sim: MpptSimulator
    driver: MpptDriver
    link: Path


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """Build battery + simulator + driver on a pty below tmp_path; everything is torn down."""
    made: list[Rig] = []

    def make(
        dialect: str = "v21", *, driver_options: dict[str, Any] | None = None, **sim_options: Any
    ) -> Rig:
        battery = Battery()
        link = tmp_path / f"dev-mppt-{len(made)}"
        sim_options.setdefault("period_s", PERIOD_S)
        sim = MpptSimulator(battery, link, dialect=dialect, **sim_options)
        driver = MpptDriver(MpptOptions(port=str(link), **(driver_options or {})))
        rig = Rig(battery, sim, driver, link)
        made.append(rig)
        sim.start()
        driver.open()
        return rig

    yield make
    for rig in made:
        rig.driver.close()
        rig.sim.stop()


@dataclass
class Collector:
    """A thread calling ``driver.read()`` the way a publisher does, keeping every Reading."""

    driver: MpptDriver
    readings: list[Reading] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                got = self.driver.read(0.2)
            except BaseException as exc:  # the test fails on any
                self.errors.append(exc)
                return
            with self._lock:
                self.readings.extend(got)

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()

    def snapshot(self) -> list[Reading]:
        with self._lock:
            return list(self.readings)

    def wait_for(self, predicate: Callable[[Reading], bool], what: str, after: int = 0) -> Reading:
        def found() -> Reading | None:
            assert not self.errors, self.errors
            return next((r for r in self.snapshot()[after:] if predicate(r)), None)

        result: Reading = wait_until(found, what)
        return result


def assert_strictly_increasing(readings: list[Reading]) -> None:
    stamps = [r.t_ns for r in readings]
    assert all(a < b for a, b in itertools.pairwise(stamps)), "stamps must strictly increase"


# --- the simulator holds to the real library's transcripts -------------------------------------------
@pytest.mark.parametrize(
    ("dialect", "transcript"),
    [("v21", "v21.0-transcript.txt"), ("v0.4", "v21.0-57-g46807de-transcript.txt")],
)
def test_the_simulator_answers_the_real_librarys_requests_alike(
    tmp_path: Path, dialect: str, transcript: str
) -> None:
    """Every request of the transcript, sent to the simulator: the same status; for a whole group,
    no item the firmware lacks (Mosfet_degC) and every item soclab maps; for a fetch, as many
    values; settings, switches and name lists equal (the values measured are the battery's)."""
    sim = MpptSimulator(
        Battery(), tmp_path / "mppt", dialect=dialect, banner=False, publish=False, load_enabled=True
    )
    mapped = set(DIALECTS[dialect].keys)
    steps = [s for s in thingset_steps(THINGSET / transcript) if isinstance(s, Exchange)]
    with serial.Serial(str(tmp_path / "mppt"), 115200, timeout=WAIT_S) as port, sim:
        for step in steps:
            port.write(step.write)
            if not step.answer:  # the reset: the device reboots without answering
                port.timeout = 0.3
                assert port.readline() == b"", step.write
                port.timeout = WAIT_S
                continue
            real, simulated = codec.parse_line(step.answer), codec.parse_line(port.readline())
            assert isinstance(real, Response), step.write
            assert isinstance(simulated, Response), step.write
            assert simulated.status == real.status, (step.write, simulated, real)
            assert simulated.description == real.description
            got, want = simulated.payload, real.payload
            if isinstance(want, dict):
                assert set(got) <= set(want), (step.write, set(got) - set(want))  # nothing invented
                assert {k for k in want if k in mapped} <= set(got), (
                    step.write
                )  # nothing soclab reads missing
                if all(isinstance(v, bool) for v in want.values()) or step.write.startswith(b"?conf"):
                    assert set(got) == set(want), step.write
            elif isinstance(want, list) and all(isinstance(v, str) for v in want):
                assert got == want, step.write  # names
            elif isinstance(want, list):
                assert isinstance(got, list), step.write
                assert len(got) == len(want), step.write
            else:
                assert got == want, step.write


def test_the_simulator_ignores_what_is_not_a_request(tmp_path: Path) -> None:
    sim = MpptSimulator(Battery(), tmp_path / "mppt", dialect="v0.5", banner=False, publish=False)
    with serial.Serial(str(tmp_path / "mppt"), 115200, timeout=WAIT_S) as port, sim:
        port.write(b"hello\n")
        assert port.readline() == b"\n"  # not a request: an empty line
        port.write(b"?\n")  # one character: the firmware ignores it
        port.write(b'? ["cNodeID"]\n')
        assert port.readline() == b':85 Content. ["4W7Q2M8K"]\n'
        port.write(b'=Load {"wEnable":true}\n')
        assert port.readline() == b":84 Changed.\n"
        port.write(b'?Load ["wEnable","rCurrent_A"]\n')
        assert port.readline() == b":85 Content. [true,0.5]\n"


def test_the_simulator_publishes_each_dialect(tmp_path: Path) -> None:
    expected_start = {
        "v21": b'# {"Uptime_s":',
        "v0.4": b'#serial {"Uptime_s":',
        "v0.5": b'#mSerial {"Device":{',
    }
    for dialect, start in expected_start.items():
        sim = MpptSimulator(Battery(), tmp_path / dialect, dialect=dialect, banner=False, period_s=0.1)
        with serial.Serial(str(tmp_path / dialect), 115200, timeout=WAIT_S) as port, sim:
            assert port.readline().startswith(start), dialect


def test_the_simulator_reset_does_not_answer_and_reboots(tmp_path: Path) -> None:
    sim = MpptSimulator(Battery(), tmp_path / "mppt", dialect="v21", publish=False, load_enabled=False)
    # open before the simulator starts: pyserial's open flushes what is already waiting
    with serial.Serial(str(tmp_path / "mppt"), 115200, timeout=WAIT_S) as port, sim:
        for boot in range(2):  # the banner at power-up, then the one after the reset
            assert port.readline().startswith(b"*** Booting Zephyr OS")
            assert port.readline() == b"Hardware: Libre Solar MPPT 1210 HUS (v0.7.1)\n"
            assert port.readline() == b"Firmware: v21.0\n"
            if boot == 0:
                port.write(b'=input {"LoadEn":true}\n')
                assert port.readline() == b":84 Changed.\n"
                port.write(b"!exec/reset\n")  # no response: the banner is the next line
        port.write(b"?input\n")  # the switches are back at their defaults
        assert port.readline() == b':85 Content. {"LoadEn":false,"UsbEn":true,"DcdcEn":true}\n'


def test_the_simulator_stops_and_resumes_its_publication(tmp_path: Path) -> None:
    sim = MpptSimulator(Battery(), tmp_path / "mppt", dialect="v21", banner=False, period_s=0.05)
    with serial.Serial(str(tmp_path / "mppt"), 115200, timeout=WAIT_S) as port, sim:
        assert port.readline().startswith(b"# {")
        port.write(b'=pub/serial {"Enable":false}\n')
        while (line := port.readline()) != b":84 Changed.\n":
            assert line.startswith(b"# {")  # sent before the request arrived
        port.timeout = 0.3
        assert port.readline() == b""  # six periods: nothing
        port.timeout = WAIT_S
        port.write(b'=pub/serial {"Enable":true}\n')
        assert port.readline() == b":84 Changed.\n"
        assert port.readline().startswith(b"# {")


def test_request_echo_and_crc(lab: Callable[..., Rig]) -> None:
    """The firmware's debug echo of each request is ignored; v0.6 CRCs are checked on every line."""
    rig = lab("v21", echo_requests=True, crc=True)
    driver = rig.driver
    assert driver.identity()["model"] == "MPPT 1210 HUS"  # responses carry a CRC
    assert driver.read_items("output", ["SOC_pct"]) == {"SOC_pct": 60}
    readings = wait_until(lambda: driver.read(0.5), "a sample with a CRC")
    assert readings[0].values["soc_pct"] == 60
    assert driver.health.counters["lines_ignored"] >= 2  # "Received Request (...)" echoes
    assert driver.health.counters.get("parse_errors", 0) == 0


# --- driver and simulator on a pty ---------------------------------------------------------------------
@pytest.mark.parametrize("dialect", DIALECT_NAMES)
def test_samples_carry_the_batterys_values(lab: Callable[..., Rig], dialect: str) -> None:
    t0 = time.time_ns()
    rig = lab(dialect, driver_options={"extra_fields": ("int_degc", "bat_degc", "mosfet_degc")})
    rig.sim.set_solar_charge(2.0)
    readings: list[Reading] = []

    def charging_sample() -> Reading | None:
        readings.extend(rig.driver.read(0.5))
        return next((r for r in readings if r.values.get("bat_a") == 2.0), None)

    reading = wait_until(charging_sample, "a sample while charging at 2 A")
    readings.extend(rig.driver.read(0.5))
    t1 = time.time_ns()
    state = rig.battery.state()  # nobody advances the battery here: this is what was measured

    assert set(reading.values) >= {item.field for item in DIALECTS[dialect].published} - {
        "mosfet_degc",
        "bat_degc",
    }
    assert reading.values["bat_v"] == round(state.voltage_v, 2)
    assert reading.values["soc_pct"] == round(state.soc * 100)
    assert reading.values["dis_ah"] == round(state.discharged_ah)
    assert (reading.values["solar_v"], reading.values["chg_state"], reading.values["load_a"]) == (
        18.0,
        1,
        0.0,
    )
    assert reading.values["bat_usable_ah"] == rig.battery.params.capacity_ah
    first = readings[0]
    assert first.values["int_degc"] == pytest.approx(29.0, abs=1.5)  # the extras, on the first sample
    assert "mosfet_degc" not in first.values  # the board has no such sensor
    assert ("bat_degc" in first.values) == (dialect != "v0.4")  # nor the later firmware a battery one
    assert_strictly_increasing(readings)
    assert all(t0 <= r.t_ns <= t1 for r in readings)

    ident = rig.driver.identity()
    assert (ident["dialect"], ident["manufacturer"]) == (dialect, "Libre Solar")
    assert (ident["firmware_version"], ident["serial_number"]) == (
        rig.sim.firmware_version,
        rig.sim.device_id,
    )
    counters = rig.driver.health.counters
    assert counters.get("parse_errors", 0) == counters.get("request_errors", 0) == 0
    assert counters["publications"] >= len(readings)


@pytest.mark.parametrize("dialect", ["v21", "v0.5"])
def test_control_while_publishing_moves_the_battery(lab: Callable[..., Rig], dialect: str) -> None:
    """Requests from this thread while another reads: every publication is one sample, the
    switches and limits take effect in the simulated charger and battery."""
    rig = lab(dialect)
    driver = rig.driver
    rig.sim.set_solar_charge(5.0)
    with Collector(driver) as collector:
        collector.wait_for(lambda r: r.values.get("bat_a") == 5.0, "charging at 5 A")
        driver.set_charge_limits(current_max_a=2.0)
        collector.wait_for(lambda r: r.values.get("bat_a") == 2.0, "the charge current limited to 2 A")
        driver.set_load_output(True)
        collector.wait_for(
            lambda r: r.values.get("load_info") == 1 and r.values["bat_a"] == 1.5, "the load on"
        )
        driver.set_charging(False)
        seen = len(collector.snapshot())
        collector.wait_for(lambda r: r.values.get("bat_a") == -0.5, "charging off, the load on", after=seen)
        assert driver.read_inputs() == Inputs(load=True, usb=True, charging=False)
        assert rig.battery.current_of("mppt_charger") == 0.0
        if dialect == "v21":
            assert driver.read_charge_limits() == ChargeLimits(2.0, 14.4, 1.0)
        names = VI_NAMES[dialect]
        assert list(driver.read_items(GROUP[dialect], names)) == names
        with pytest.raises(NotFound):
            driver.request("?nonexistent")
        driver.set_load_output(False)
        collector.wait_for(lambda r: r.values.get("load_info") == 0, "the load off", after=seen)
        collector.wait_for(lambda r: True, "samples after the requests", after=len(collector.snapshot()) + 2)
    readings = collector.readings + driver.read(0)
    counters = driver.health.counters
    assert collector.errors == []
    assert len(readings) == counters["publications"], "every publication became exactly one sample"
    assert_strictly_increasing(readings)
    assert (counters.get("unexpected_responses", 0), counters.get("parse_errors", 0)) == (0, 0)
    assert counters["request_errors"] == 1  # the one provoked above


def test_requests_from_several_threads(lab: Callable[..., Rig]) -> None:
    rig = lab("v21")
    failures: list[BaseException] = []

    def ask() -> None:
        try:
            for _ in range(5):
                assert set(rig.driver.read_items("output", ["Bat_V", "SOC_pct"])) == {"Bat_V", "SOC_pct"}
                assert rig.driver.request("?pub/serial/IDs").payload[0] == "Uptime_s"
        except BaseException as exc:
            failures.append(exc)

    with Collector(rig.driver) as collector:
        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        collector.wait_for(lambda r: True, "samples")
    assert failures == []
    assert collector.errors == []
    assert rig.driver.health.counters.get("unexpected_responses", 0) == 0


def test_requests_from_the_reading_thread_lose_no_sample(lab: Callable[..., Rig]) -> None:
    rig = lab("v0.5")
    readings: list[Reading] = []
    for _ in range(5):
        readings += rig.driver.read(0.3)
        assert rig.driver.read_items("Device", ["rUptime_s"])["rUptime_s"] >= 0
        time.sleep(PERIOD_S / 2)  # publications arrive while nobody reads: they wait in the pty
    readings += rig.driver.read(0)
    assert len(readings) == rig.driver.health.counters["publications"]
    assert len(readings) >= 3
    assert_strictly_increasing(readings)


def test_charger_holds_the_charge_voltage(lab: Callable[..., Rig]) -> None:
    rig = lab("v21")
    rig.driver.set_charge_limits(voltage_v=12.7)
    rig.sim.set_solar_charge(5.0)
    with Collector(rig.driver) as collector:
        reading = collector.wait_for(
            lambda r: r.values["chg_state"] == 2 and abs(r.values["bat_v"] - 12.7) <= 0.02,
            "the charger in CV (topping) at 12.7 V",
        )
    assert 0 < reading.values["bat_a"] < 5.0


def test_device_vanishes_and_comes_back(lab: Callable[..., Rig]) -> None:
    rig = lab("v21")
    driver = rig.driver
    with Collector(driver) as collector:
        collector.wait_for(lambda r: True, "a first sample")
        rig.sim.unplug()
        wait_until(lambda: driver.health.counters["connection_losses"] >= 1, "the loss noticed")
        assert not rig.link.exists()
        with pytest.raises(ConnectionLost):
            driver.request("?output", timeout=1.0)
        seen = len(collector.snapshot())
        rig.sim.replug()
        wait_until(lambda: driver.health.counters["port_reopens"] >= 1, "the port reopened")
        collector.wait_for(lambda r: True, "samples after the reopen", after=seen + 2)
        assert driver.read_items("output", ["Bat_V"])
    counters = driver.health.counters
    assert collector.errors == []
    assert (counters["connection_losses"], counters["port_reopens"]) == (1, 1)
    assert driver.health.last_error is None
    assert_strictly_increasing(collector.readings)


def test_missing_port(tmp_path: Path) -> None:
    driver = MpptDriver(MpptOptions(port=str(tmp_path / "nothing-here")))
    with pytest.raises(ConnectionLost):
        driver.open()
    assert driver.read(0.2) == []  # never raises on a wire fault
    assert "cannot open" in (driver.health.last_error or "")
    with pytest.raises(ConnectionLost):
        driver.request("?output")
