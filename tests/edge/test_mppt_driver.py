"""The MPPT driver against the simulated controller over a real pseudo-terminal, in each dialect."""

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

from soclab.dev.sim.battery import Battery
from soclab.dev.sim.instruments.libresolar_mppt import MpptSimulator
from soclab.edge.instruments import DRIVERS, UnknownKind, driver_class, kinds
from soclab.edge.instruments.base import ConnectionLost, Reading
from soclab.edge.instruments.libresolar_mppt import (
    BadRequest,
    Forbidden,
    MpptDriver,
    NotFound,
    ThingSetError,
)
from soclab.edge.instruments.libresolar_mppt.fields import DIALECTS

PERIOD_S = 0.2
WAIT_S = 15.0  # generous: a busy 2-core machine

DIALECT_NAMES = ["v21", "v0.4", "v0.5"]
# per dialect: a readable group, its battery voltage/current names, a settings write
GROUP = {"v21": "output", "v0.4": "meas", "v0.5": "Battery"}
VI_NAMES = {"v21": ["Bat_V", "Bat_A"], "v0.4": ["Bat_V", "Bat_A"], "v0.5": ["rVoltage_V", "rCurrent_A"]}
CONF = {
    "v21": ({"BatNom_Ah": 12.0}, "conf", "BatNom_Ah"),
    "v0.4": ({"BatNom_Ah": 12.0}, "conf", "BatNom_Ah"),
    "v0.5": ({"Battery/sNominalCapacity_Ah": 12.0}, "Battery", "sNominalCapacity_Ah"),
}


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

    def make(dialect: str = "v21", *, open_driver: bool = True, **sim_options: Any) -> Rig:
        battery = Battery()
        link = tmp_path / f"dev-mppt-{len(made)}"
        sim_options.setdefault("period_s", PERIOD_S)
        sim = MpptSimulator(battery, link, dialect=dialect, **sim_options)
        driver = MpptDriver(str(link))
        rig = Rig(battery, sim, driver, link)
        made.append(rig)
        sim.start()
        if open_driver:
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

        return wait_until(found, what)


def assert_strictly_increasing(readings: list[Reading]) -> None:
    stamps = [r.t_ns for r in readings]
    assert all(a < b for a, b in itertools.pairwise(stamps)), "stamps must strictly increase"


# --- samples ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect", DIALECT_NAMES)
def test_samples_carry_the_batterys_values(lab: Callable[..., Rig], dialect: str) -> None:
    t0 = time.time_ns()
    rig = lab(dialect)
    rig.sim.set_solar_charge(2.0)
    readings: list[Reading] = []

    def charging_sample() -> Reading | None:
        readings.extend(rig.driver.read(0.5))
        return next((r for r in readings if r.values.get("bat_a") == 2.0), None)

    reading = wait_until(charging_sample, "a sample while charging at 2 A")
    readings.extend(rig.driver.read(0.5))
    t1 = time.time_ns()
    state = rig.battery.state()  # nobody advances the battery here: this is what was measured

    assert set(reading.values) == {item.field for item in DIALECTS[dialect].published}
    assert reading.values["bat_v"] == round(state.voltage_v, 2)
    assert reading.values["bat_a"] == 2.0
    assert reading.values["soc_pct"] == round(state.soc * 100)
    assert reading.values["dis_ah"] == round(state.discharged_ah)
    assert reading.values["solar_v"] == 18.0
    assert reading.values["chg_state"] == 1  # bulk
    assert reading.values["load_a"] == 0.0
    assert reading.values["bat_usable_ah"] == rig.battery.params.capacity_ah
    assert all(isinstance(v, int | float) for v in reading.values.values())
    assert_strictly_increasing(readings)
    assert all(t0 <= r.t_ns <= t1 for r in readings)

    ident = rig.driver.identity()
    assert ident["dialect"] == dialect
    assert ident["manufacturer"] == "Libre Solar"
    assert ident["firmware_version"] == rig.sim.firmware_version
    assert ident["serial_number"] == rig.sim.device_id
    counters = rig.driver.health.counters
    assert counters["parse_errors"] == 0
    assert counters["publications"] >= len(readings)


@pytest.mark.parametrize("dialect", DIALECT_NAMES)
def test_read_fields_includes_unpublished_items(lab: Callable[..., Rig], dialect: str) -> None:
    rig = lab(dialect)
    rig.sim.set_solar_charge(1.0)
    values = rig.driver.read_fields()
    state = rig.battery.state()
    assert values["bat_v"] == round(state.voltage_v, 2)
    assert values["bat_w"] == pytest.approx(state.voltage_v * 1.0, abs=0.02)
    assert values["bat_degc"] == state.temperature_degc
    assert {"int_degc", "mosfet_degc", "solar_w", "load_w"} <= set(values)


# --- requests while the controller publishes ------------------------------------------------------
@pytest.mark.parametrize("dialect", DIALECT_NAMES)
def test_requests_while_publishing(lab: Callable[..., Rig], dialect: str) -> None:
    rig = lab(dialect)
    driver = rig.driver
    with Collector(driver) as collector:
        collector.wait_for(lambda r: True, "a first sample")

        driver.set_input(LoadEn=True)
        assert rig.sim.load_enabled
        collector.wait_for(
            lambda r: (
                r.values.get("load_info") == 1 and r.values["load_a"] == 0.5 and r.values["bat_a"] == -0.5
            ),
            "the load output on in the samples",
        )

        names = VI_NAMES[dialect]
        values = driver.read_items(GROUP[dialect], names)
        assert list(values) == names
        assert values[names[1]] == -0.5
        assert driver.read_items(GROUP[dialect])[names[0]] == round(rig.battery.state().voltage_v, 2)

        with pytest.raises(NotFound) as not_found:
            driver.request("?nonexistent")
        assert not_found.value.status == 0xA4
        assert isinstance(not_found.value, ThingSetError)
        with pytest.raises(BadRequest) as bad:
            driver.request(f'={GROUP[dialect]} {{"x":')
        assert bad.value.status == 0xA0
        with pytest.raises(Forbidden) as forbidden:
            driver.request(f'={GROUP[dialect]} {{"{names[0]}":1.0}}')
        assert forbidden.value.status == 0xA3

        conf, conf_group, conf_name = CONF[dialect]
        driver.write_conf(conf)
        assert driver.read_items(conf_group, [conf_name]) == {conf_name: 12.0}

        seen = len(collector.snapshot())
        driver.set_input(LoadEn=False)
        collector.wait_for(lambda r: r.values.get("load_info") == 0, "the load output off", after=seen)
        collector.wait_for(lambda r: True, "samples after the requests", after=seen + 2)

    rest = driver.read(0)  # what arrived after the collector's last read
    readings = collector.readings + rest
    counters = driver.health.counters
    assert collector.errors == []
    assert len(readings) == counters["publications"], "every publication became exactly one sample"
    assert_strictly_increasing(readings)
    assert counters["unexpected_responses"] == 0
    assert counters["parse_errors"] == 0
    assert counters["request_errors"] == 3  # the three provoked above


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
    assert rig.driver.health.counters["unexpected_responses"] == 0


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


def test_publication_off_and_on(lab: Callable[..., Rig]) -> None:
    rig = lab("v21")
    driver = rig.driver
    names = driver.request("?pub/serial/IDs").payload
    assert names == [item.name for item in DIALECTS["v21"].published]
    with Collector(driver) as collector:
        collector.wait_for(lambda r: True, "a first sample")
        driver.set_publication(False)
        off_ns = time.time_ns()  # a publication sent before the response was stamped before it
        assert not rig.sim.publishing
        time.sleep(8 * PERIOD_S)
        assert not [r for r in collector.snapshot() if r.t_ns > off_ns], "no samples while publication is off"
        quiet = len(collector.snapshot())
        driver.set_publication(True)
        collector.wait_for(lambda r: True, "samples again", after=quiet)


def test_charger_holds_the_charge_voltage(lab: Callable[..., Rig]) -> None:
    rig = lab("v21")
    rig.driver.write_conf({"Topping_V": 12.7})
    rig.sim.set_solar_charge(5.0)
    with Collector(rig.driver) as collector:
        reading = collector.wait_for(
            lambda r: r.values["chg_state"] == 2 and abs(r.values["bat_v"] - 12.7) <= 0.02,
            "the charger in CV (topping) at 12.7 V",
        )
    assert 0 < reading.values["bat_a"] < 5.0


def test_reset_reboots_with_a_banner(lab: Callable[..., Rig]) -> None:
    rig = lab("v21", load_enabled=False)
    driver = rig.driver
    with Collector(driver) as collector:
        driver.set_input(LoadEn=True)
        collector.wait_for(lambda r: r.values["load_info"] == 1, "the load on")
        ignored = driver.health.counters["lines_ignored"]
        seen = len(collector.snapshot())
        driver.reset()  # no response: the firmware reboots at once
        wait_until(lambda: driver.health.counters["lines_ignored"] >= ignored + 3, "the boot banner")
        collector.wait_for(lambda r: r.values["load_info"] == 0, "the load off after reboot", after=seen)
    assert driver.health.counters["parse_errors"] == 0
    assert collector.errors == []


def test_request_echo_and_crc(lab: Callable[..., Rig]) -> None:
    rig = lab("v21", echo_requests=True, crc=True)
    driver = rig.driver
    assert driver.identity()["model"] == "MPPT 1210 HUS"  # responses carry a CRC
    assert driver.read_items("output", ["SOC_pct"]) == {"SOC_pct": 60}
    readings = wait_until(lambda: driver.read(0.5), "a sample with a CRC")
    assert readings[0].values["soc_pct"] == 60
    assert driver.health.counters["lines_ignored"] >= 2  # "Received Request (...)" echoes
    assert driver.health.counters["parse_errors"] == 0


# --- faults -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect", ["v21", "v0.5"])
def test_device_vanishes_and_comes_back(lab: Callable[..., Rig], dialect: str) -> None:
    rig = lab(dialect)
    driver = rig.driver
    counters = driver.health.counters
    with Collector(driver) as collector:
        collector.wait_for(lambda r: True, "a first sample")
        rig.sim.unplug()
        wait_until(lambda: counters["connection_losses"] >= 1, "the loss noticed")
        assert not rig.link.exists()
        with pytest.raises(ConnectionLost):
            driver.request("?output", timeout=1.0)
        seen = len(collector.snapshot())
        rig.sim.replug()
        wait_until(lambda: counters["port_reopens"] >= 1, "the port reopened")
        collector.wait_for(lambda r: True, "samples after the reopen", after=seen + 2)
        assert driver.read_items(GROUP[dialect], VI_NAMES[dialect][:1])
    assert collector.errors == []
    assert counters["connection_losses"] == 1
    assert counters["port_reopens"] == 1
    assert_strictly_increasing(collector.readings)
    assert driver.identity()["dialect"] == dialect


def test_garbage_is_counted_and_never_crashes(lab: Callable[..., Rig]) -> None:
    rig = lab("v21")
    driver = rig.driver
    counters = driver.health.counters
    with Collector(driver) as collector:
        collector.wait_for(lambda r: True, "a first sample")
        ignored, errors = counters["lines_ignored"], counters["parse_errors"]
        for raw in (
            b"\xff\xfe\x00garbage\n",  # noise
            b'"Bat_V":12.8,"Bat_A":1.00}\n',  # the tail of a line, as after a reconnect
            b"\n",  # blank
            b'# {"Uptime_s":3600,"Bat_V":12.\n',  # truncated JSON
            b'# {"Bat_V":12.80} 00000000#\n',  # wrong CRC
            b"x" * 10_000 + b"\n",  # longer than any line
            b"half a line without its end",  # spoils the next publication
        ):
            rig.sim.inject(raw)
        wait_until(lambda: counters["parse_errors"] >= errors + 3, "the malformed lines counted")
        wait_until(lambda: counters["lines_ignored"] >= ignored + 7, "the noise counted")
        rig.sim.inject(b":85 Content. [1]\n")  # a response nobody asked for
        wait_until(lambda: counters["unexpected_responses"] == 1, "the stray response counted")
        seen = len(collector.snapshot())
        collector.wait_for(lambda r: True, "samples after the garbage", after=seen + 1)
        assert driver.read_items("output", ["Bat_V"])  # requests still work
    assert collector.errors == []
    assert all(set(r.values) == {i.field for i in DIALECTS["v21"].published} for r in collector.readings)


def test_unknown_and_non_numeric_items(lab: Callable[..., Rig]) -> None:
    rig = lab("v21", publish=False)  # only what is injected
    driver = rig.driver
    counters = driver.health.counters
    rig.sim.inject(b'# {"Bat_V":12.34,"Foo_X":1,"Bar_Y":"str"}\n')
    rig.sim.inject(b'# {"Bat_V":12.35,"Foo_X":2}\n')
    rig.sim.inject(b'# {"Bat_V":"n/a","Bat_A":1.5,"ChgState":null}\n')
    readings: list[Reading] = []
    wait_until(lambda: len(readings) >= 3 or readings.extend(driver.read(0.5)), "three samples")
    assert [r.values for r in readings] == [{"bat_v": 12.34}, {"bat_v": 12.35}, {"bat_a": 1.5}]
    assert counters["unknown_items"] == 2  # distinct names, logged once each
    assert counters["values_skipped"] == 2
    rig.sim.inject(b'# {"Foo_X":3}\n')
    wait_until(lambda: counters["empty_publications"] == 1 or driver.read(0.2), "the empty publication")
    assert counters["unknown_items"] == 2


def test_missing_port(tmp_path: Path) -> None:
    driver = MpptDriver(str(tmp_path / "nothing-here"))
    with pytest.raises(ConnectionLost):
        driver.open()
    assert driver.read(0.2) == []  # never raises on a wire fault
    assert "cannot open" in (driver.health.last_error or "")
    with pytest.raises(ConnectionLost):
        driver.request("?output")


# --- the simulator at the wire -------------------------------------------------------------------------
def _ask(port: serial.Serial, line: bytes) -> bytes:
    port.write(line + b"\n")
    return port.readline()


@pytest.mark.parametrize(
    ("dialect", "exchanges"),
    [
        (
            "v21",
            [
                (b"hello", b"\n"),  # not a request: an empty line
                (b"?nope", b":A4 Not Found.\n"),
                (b'=conf {"BatNom_Ah":', b":A0 Bad Request.\n"),
                (b'=conf {"BatNom_Ah":12.0}', b":84 Changed.\n"),
                (b'?conf ["BatNom_Ah"]', b":85 Content. [12.0]\n"),
                (b'=conf {"BatNom_Ah":true}', b":AF Unsupported Content-Format.\n"),
                (b'=input {"LoadEn":true}', b":84 Changed.\n"),
                (b"?input", b':85 Content. {"LoadEn":true,"UsbEn":true,"DcdcEn":true}\n'),
                (b"?info/", b':85 Content. ["DeviceID","Manufacturer","DeviceType","HardwareVersion",'
                 b'"FirmwareVersion"]\n'),
                (b"?info/DeviceType", b':85 Content. "MPPT 1210 HUS"\n'),
                (b"?pub/serial", b':85 Content. {"Enable":false}\n'),
            ],
        ),
        (
            "v0.5",
            [
                (b'? ["cNodeID"]', b':85 Content. ["4W7Q2M8K"]\n'),
                (b'=Load {"wEnable":true}', b":84 Changed.\n"),
                (b'?Load ["wEnable","rCurrent_A"]', b":85 Content. [true,0.5]\n"),
                (b"?info", b":A4 Not Found.\n"),
                (b'=_Pub/mSerial {"wEnable":false}', b":84 Changed.\n"),
            ],
        ),
    ],
)  # fmt: skip
def test_simulator_answers_like_the_firmware(
    tmp_path: Path, dialect: str, exchanges: list[tuple[bytes, bytes]]
) -> None:
    sim = MpptSimulator(Battery(), tmp_path / "mppt", dialect=dialect, banner=False, publish=False)
    with serial.Serial(str(tmp_path / "mppt"), 115200, timeout=WAIT_S) as port, sim:
        for request, expected in exchanges:
            assert _ask(port, request) == expected, request
        port.write(b"?\n")  # one character: the firmware ignores it
        assert _ask(port, b"!exec/nothing") == b":A4 Not Found.\n"


def test_simulator_reset_does_not_answer_and_reboots(tmp_path: Path) -> None:
    sim = MpptSimulator(Battery(), tmp_path / "mppt", dialect="v21", publish=False)
    # open before the simulator starts: pyserial's open flushes what is already waiting
    with serial.Serial(str(tmp_path / "mppt"), 115200, timeout=WAIT_S) as port, sim:
        for boot in range(2):  # the banner at power-up, then the one after the reset
            assert port.readline().startswith(b"*** Booting Zephyr OS")
            assert port.readline() == b"Hardware: Libre Solar MPPT 1210 HUS (v0.7.1)\n"
            assert port.readline() == b"Firmware: v21.0\n"
            if boot == 0:
                port.write(b"!exec/reset\n")  # no response: the banner is the next line
        assert _ask(port, b"?info/FirmwareVersion") == b':85 Content. "v21.0"\n'


def test_simulator_publishes_each_dialect(tmp_path: Path) -> None:
    expected_start = {
        "v21": b'# {"Uptime_s":',
        "v0.4": b'#serial {"Uptime_s":',
        "v0.5": b'#mSerial {"Device":{',
    }
    for dialect, start in expected_start.items():
        sim = MpptSimulator(Battery(), tmp_path / dialect, dialect=dialect, banner=False, period_s=0.1)
        with serial.Serial(str(tmp_path / dialect), 115200, timeout=WAIT_S) as port, sim:
            assert port.readline().startswith(start), dialect


# --- the registry --------------------------------------------------------------------------------------
def test_registry_imports_the_driver_on_demand() -> None:
    assert driver_class("mppt") is MpptDriver
    assert {"mppt", "eload", "labjack"} <= set(kinds())
    assert DRIVERS["mppt"].endswith(":MpptDriver")
    with pytest.raises(UnknownKind, match="no driver for instrument kind 'toaster'"):
        driver_class("toaster")


def test_from_config_converts_environment_strings() -> None:
    driver = MpptDriver.from_config({"port": "/dev/ttyACM0", "baudrate": "115200", "request_timeout_s": "3"})
    assert driver_class("mppt").from_config({"port": "x"}).port == "x"
    assert (driver.port, driver.baudrate, driver.request_timeout_s) == ("/dev/ttyACM0", 115200, 3.0)
    with pytest.raises(ValueError, match="port is required"):
        MpptDriver.from_config({})
    with pytest.raises(ValueError, match="unknown"):
        MpptDriver.from_config({"port": "x", "speed": 1})
    with pytest.raises(ValueError, match="unknown dialect"):
        MpptDriver.from_config({"port": "x", "dialect": "v99"})
