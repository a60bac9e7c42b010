"""What an instrument's publisher enforces for itself (``InstrumentControl``): safe at (re)open,
the lease and its expiry, the guard limits, commands with an expiry and exactly one result.

Unit tests use a recording actuator and an injected clock; the last tests drive the real
drivers against the wire-level simulators on pseudo-terminals, where the simulated load and
charger really switch."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from soclab.dev.sim.battery import Battery, BatteryParams
from soclab.dev.sim.instruments.ea_el3000 import EaLoadSimulator
from soclab.dev.sim.instruments.libresolar_mppt import CHARGER, MpptSimulator
from soclab.edge.instruments.ea_el3000 import EaLoadOptions
from soclab.edge.instruments.ea_el3000.driver import EaLoadDriver
from soclab.edge.instruments.libresolar_mppt import MpptOptions
from soclab.edge.instruments.libresolar_mppt.driver import MpptDriver
from soclab.edge.runs.actuators import EloadActuator, MpptActuator
from soclab.edge.runs.control import InstrumentControl
from soclab.wire import CMD_RESULT_SCHEMA, CMD_SCHEMA, validate

T0_NS = 1_717_200_000_000_000_000


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def wall_ns(self) -> int:
        return T0_NS + int(self.t * 1e9)


class Recorder:
    commands: ClassVar[frozenset[str]] = frozenset({"input", "set_current", "remote"})

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: Exception | None = None

    def apply(self, command: str, args: Mapping[str, Any]) -> None:
        if self.fail is not None:
            raise self.fail
        self.calls.append((command, dict(args)))

    def safe(self) -> None:
        self.calls.append(("SAFE", {}))

    def towards_safe(self, command: str, args: Mapping[str, Any]) -> bool:
        return command == "input" and args.get("on") is False


def command(
    name: str,
    args: dict[str, Any] | None = None,
    *,
    clock: Clock,
    issuer: str = "operator/alice",
    device: str = "eload",
    expires_in_s: float = 30.0,
    number: int = 1,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "schema": CMD_SCHEMA,
        "id": f"c-{number}",
        "issuer": issuer,
        "issued_ns": clock.wall_ns(),
        "expires_ns": clock.wall_ns() + int(expires_in_s * 1e9),
        "target": {"site": "lab1", "node": "pi-01", "device": device},
        "command": name,
    }
    if args is not None:
        message["args"] = args
    return validate(message, CMD_SCHEMA)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def actuator() -> Recorder:
    return Recorder()


@pytest.fixture
def control(clock: Clock, actuator: Recorder) -> InstrumentControl:
    return InstrumentControl("eload", actuator, site="lab1", node="pi-01", clock=clock, wall_ns=clock.wall_ns)


def test_every_command_gets_one_valid_result(
    control: InstrumentControl, clock: Clock, actuator: Recorder
) -> None:
    result = control.execute(command("input", {"on": True}, clock=clock))
    assert validate(result, CMD_RESULT_SCHEMA) is result
    assert (result["outcome"], result["reason"], result["id"]) == ("done", "", "c-1")
    assert actuator.calls == [("input", {"on": True})]


def test_a_command_that_arrives_after_its_expiry_is_refused_and_nothing_switches(
    control: InstrumentControl, clock: Clock, actuator: Recorder
) -> None:
    late = command("input", {"on": True}, clock=clock, expires_in_s=30)
    clock.t += 3600  # it waited in a queue through an hour's outage
    result = control.execute(late)
    assert result["outcome"] == "refused"
    assert result["reason"].startswith("expired 3570.0 s before it arrived")
    assert actuator.calls == []


def test_the_instruments_error_is_the_result(
    control: InstrumentControl, clock: Clock, actuator: Recorder
) -> None:
    from soclab.edge.instruments.ea_el3000.telegram import AccessDenied

    actuator.fail = AccessDenied(9, "object 54")
    result = control.execute(command("input", {"on": True}, clock=clock))
    assert result["outcome"] == "failed"
    assert result["reason"] == "AccessDenied: device error 0x09: no read/write access (object 54)"


@pytest.mark.parametrize(
    ("name", "args", "device", "why"),
    [
        ("charging", {"on": True}, "eload", "eload has no command 'charging'"),
        ("input", {"on": True}, "mppt", "addressed to lab1/pi-01/mppt"),
    ],
)
def test_commands_for_another_device_or_unknown_here_are_refused(
    control: InstrumentControl, clock: Clock, name: str, args: dict[str, Any], device: str, why: str
) -> None:
    result = control.execute(command(name, args, clock=clock, device=device))
    assert result["outcome"] == "refused"
    assert why in result["reason"]


def test_every_reopen_switches_the_instrument_off(control: InstrumentControl, actuator: Recorder) -> None:
    control.opened()
    control.opened()
    assert actuator.calls == [("SAFE", {}), ("SAFE", {})]


def test_while_a_run_holds_control_others_may_only_switch_off(
    control: InstrumentControl, clock: Clock, actuator: Recorder
) -> None:
    assert control.acquire("run/r-1", ttl_s=2.0) == (True, "")
    assert control.acquire("run/r-2", ttl_s=2.0) == (False, "run/r-1 holds control of eload")
    on = control.execute(command("input", {"on": True}, clock=clock))
    assert on["outcome"] == "refused"
    assert "run/r-1 holds control of eload" in on["reason"]
    assert control.execute(command("input", {"on": False}, clock=clock, number=2))["outcome"] == "done"
    assert control.lease is None, "switched off by someone else: the run's lease ends"
    assert control.execute(command("safe", clock=clock, number=3))["outcome"] == "done"
    mine = control.execute(command("set_current", {"a": 3.0}, clock=clock, issuer="run/r-1", number=4),
                           holder="run/r-1")  # fmt: skip
    assert mine["outcome"] == "done"
    assert actuator.calls == [("input", {"on": False}), ("SAFE", {}), ("set_current", {"a": 3.0})]


def test_a_lease_not_renewed_makes_the_instrument_safe(
    control: InstrumentControl, clock: Clock, actuator: Recorder
) -> None:
    control.acquire("run/r-1", ttl_s=2.0)
    for _ in range(10):  # renewed every 0.6 s: nothing happens
        clock.t += 0.6
        control.acquire("run/r-1", ttl_s=2.0)
        control.tick()
    assert actuator.calls == []
    clock.t += 2.01
    control.tick()
    assert actuator.calls == [("SAFE", {})]
    assert control.lease is None
    assert "lease of run/r-1 expired" in control.safe_events[-1][1]


def test_a_holder_that_disconnects_makes_the_instrument_safe_at_once(
    control: InstrumentControl, actuator: Recorder
) -> None:
    control.acquire("run/r-1", ttl_s=2.0)
    control.holder_gone("run/r-2")  # someone else's connection: nothing
    assert actuator.calls == []
    control.holder_gone("run/r-1")
    assert actuator.calls == [("SAFE", {})]


def test_the_guard_judges_the_instruments_own_readings(
    control: InstrumentControl, actuator: Recorder
) -> None:
    control.acquire("run/r-1", ttl_s=2.0, guard={"min_v": 11.4, "max_v": 14.8, "max_a": 6.5})
    control.reading({"bat_v": 12.0, "bat_a": -3.0})
    assert actuator.calls == []
    control.reading({"bat_v": 11.39, "bat_a": -3.0})
    assert actuator.calls == [("SAFE", {})]
    assert control.lease is None
    assert control.safe_events[-1][1] == "guard of run/r-1: bat_v 11.39 V below 11.4 V"


def test_a_lease_with_unknown_guard_limits_is_refused(control: InstrumentControl) -> None:
    assert control.acquire("run/r-1", ttl_s=2.0, guard={"max_degc": 40})[0] is False


# --- the real drivers against the simulators ---------------------------------------------------


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def eload(tmp_path: Path) -> Iterator[tuple[EaLoadSimulator, EaLoadDriver, Battery]]:
    battery = Battery(BatteryParams(ocv_soc=(0.0, 1.0), ocv_v=(12.5, 12.5), r0_ohm=0.05, rc_pairs=()))
    sim = EaLoadSimulator(battery, tmp_path / "eload")
    sim.start()
    driver = EaLoadDriver(EaLoadOptions(port=str(sim.port.link), answer_timeout_s=0.25))
    yield sim, driver, battery
    driver.close()
    sim.stop()


def test_a_load_left_on_is_switched_off_when_its_port_opens(
    eload: tuple[EaLoadSimulator, EaLoadDriver, Battery],
) -> None:
    sim, driver, battery = eload
    assert sim.local_set(3.0, True)  # on at the front panel, as a crashed process might leave it
    assert battery.current_of("eload") == -3.0
    control = InstrumentControl("eload", EloadActuator(driver))
    driver.open()
    control.opened()
    assert not sim.input_on
    assert battery.current_of("eload") == 0.0


def test_expired_and_refused_commands_leave_the_load_off(
    eload: tuple[EaLoadSimulator, EaLoadDriver, Battery],
) -> None:
    sim, driver, _ = eload
    driver.open()
    clock = Clock()
    control = InstrumentControl(
        "eload", EloadActuator(driver), site="lab1", node="pi-01", wall_ns=clock.wall_ns
    )
    late = command("input", {"on": True}, clock=clock, expires_in_s=5)
    clock.t += 60
    assert control.execute(late)["outcome"] == "refused"
    assert not sim.input_on
    # Without remote control the load refuses its input with error 9: a failed result, not a crash.
    failed = control.execute(command("input", {"on": True}, clock=clock, number=2))
    assert failed["outcome"] == "failed"
    assert "AccessDenied" in failed["reason"]
    assert not sim.input_on
    for number, (name, args) in enumerate(
        [("remote", {"on": True}), ("set_current", {"a": 2.0}), ("input", {"on": True})], start=3
    ):
        assert control.execute(command(name, args, clock=clock, number=number))["outcome"] == "done"
    wait_until(lambda: abs(sim.sink_a - 2.0) < 0.01)  # 25600 * 2 / 60 rounds to 853: 1.999 A
    assert control.execute(command("safe", clock=clock, number=9))["outcome"] == "done"
    assert not sim.input_on


@pytest.mark.parametrize("dialect", ["v21", "v0.5"])
def test_the_charger_obeys_charging_and_its_limits(tmp_path: Path, dialect: str) -> None:
    battery = Battery(soc=0.5)
    with MpptSimulator(battery, tmp_path / "mppt", dialect=dialect, period_s=0.1) as sim:
        sim.set_solar_charge(8.0)
        driver = MpptDriver(MpptOptions(port=str(sim.port.link)))
        driver.open()
        try:
            wait_until(lambda: driver.dialect == dialect)
            clock = Clock()
            control = InstrumentControl("mppt", MpptActuator(driver), site="lab1", node="pi-01",
                                        wall_ns=clock.wall_ns)  # fmt: skip
            control.opened()
            wait_until(lambda: battery.current_of(CHARGER) == 0.0)
            limits = {"current_max_a": 3.0, "voltage_v": 14.2}
            done = control.execute(command("charge_limits", limits, clock=clock, device="mppt"))
            assert done["outcome"] == "done"
            on = control.execute(command("charging", {"on": True}, clock=clock, device="mppt", number=2))
            assert on["outcome"] == "done"
            wait_until(lambda: abs(battery.current_of(CHARGER) - 3.0) < 1e-6)  # the limit, not the sun's 8 A
            name = "NoSuch_V" if dialect == "v21" else "Charger/sNoSuch_V"  # the firmware's own names
            unknown = control.execute(command("conf", {"values": {name: 1.0}}, clock=clock, device="mppt",
                                              number=3))  # fmt: skip
            assert unknown["outcome"] == "failed"
            assert "NotFound" in unknown["reason"]
            control.make_safe("test")
            wait_until(lambda: battery.current_of(CHARGER) == 0.0)
        finally:
            driver.close()
