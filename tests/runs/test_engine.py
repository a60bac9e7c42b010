"""The run engine on its own: an injected clock, the simulated battery's model driven by fake
controls that obey the commands, and the journal it records. Hours of a run take milliseconds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from soclab.dev.sim.battery import Battery, BatteryParams
from soclab.edge.runs.engine import RunEngine, plan, positions

LIMITS = {"min_v": 11.5, "max_v": 14.7, "max_a": 6.0}
CHANNELS = {
    "voltage": {"device": "labjack", "field": "bat_v", "fallback": [{"device": "eload", "field": "bat_v"}]},
    "current": {"device": "labjack", "field": "bat_a", "fallback": [{"device": "mppt", "field": "bat_a"}]},
}
CYCLE = [
    {"description": "Discharge at 3 A until 11.8 V", "action": "discharge", "current_a": 3.0,
     "until": [{"quantity": "voltage", "op": "<=", "value": 11.8}]},
    {"description": "Rest for 30 minutes", "action": "rest", "duration_s": 1800},
    {"description": "Charge at 4 A until 14.4 V", "action": "charge", "current_a": 4.0,
     "until": [{"quantity": "voltage", "op": ">=", "value": 14.4}]},
    {"description": "Hold at 14.4 V until 0.5 A", "action": "hold", "voltage_v": 14.4,
     "until": [{"quantity": "current", "op": "<=", "value": 0.5}]},
]  # fmt: skip


def document(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": "soclab.run/1",
        "id": "r-test",
        "name": "test",
        "cycles": [{"repeat": 2, "steps": CYCLE}],
        "limits": dict(LIMITS),
        "channels": CHANNELS,
        "instruments": {"load": "eload", "charger": "mppt"},
    }
    doc.update(changes)
    return doc


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wall_ns(self) -> int:
        return int(self.t * 1e9)


class Bench:
    """A load and a charger acting on the model battery as the run commands them."""

    def __init__(self, clock: Clock, soc: float = 0.7) -> None:
        self.clock = clock
        self.battery = Battery(BatteryParams(capacity_ah=1.0), soc=soc)
        self.load = {"remote": False, "input": False, "a": 0.0}
        self.charger = {"on": False, "a": 0.0, "v": 14.4}
        self.commands: list[tuple[str, str, dict[str, Any]]] = []
        self.refuse: dict[tuple[str, str], str] = {}

    def execute(self, device: str, command: str, args: Mapping[str, Any]) -> tuple[str, str, str, int]:
        self.commands.append((device, command, dict(args)))
        cid = f"c{len(self.commands)}"
        if (device, command) in self.refuse:
            return "failed", self.refuse[(device, command)], cid, self.clock.wall_ns()
        if device == "eload":
            if command == "safe":
                self.load["input"] = False
            elif command == "set_current":
                self.load["a"] = args["a"]
            else:
                self.load[command] = args["on"]
        else:
            if command == "safe":
                self.charger["on"] = False
            elif command == "charge_limits":
                self.charger["a"] = args["current_max_a"]
                self.charger["v"] = args["voltage_v"]
            else:
                self.charger["on"] = args["on"]
        return "done", "", cid, self.clock.wall_ns()

    def step(self, dt: float) -> dict[str, float]:
        """Advance the model; a CC/CV charger, a CC load; return what the LabJack reads."""
        load = self.load["a"] if self.load["input"] and self.load["remote"] else 0.0
        charge = 0.0
        if self.charger["on"]:
            state = self.battery.state()
            r = self.battery.params.charge_ohm(state.soc)
            headroom = (self.charger["v"] - (state.voltage_v - state.current_a * r)) / r
            charge = max(0.0, min(self.charger["a"], headroom))
        self.battery.set_current("load", -load)
        self.battery.set_current("charger", charge)
        state = self.battery.step(dt)
        self.clock.t += dt
        return {"bat_v": state.voltage_v, "bat_a": state.current_a}


def run_to_end(engine: RunEngine, bench: Bench, *, dt: float = 1.0, limit_s: float = 200_000) -> None:
    engine.reading("labjack", bench.step(0.0))
    assert engine.start("test")
    t = 0.0
    while engine.state == "running":
        engine.reading("labjack", bench.step(dt))
        engine.tick()
        t += dt
        assert t < limit_s, f"run did not end: {engine.status()}"


def events(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["run_event"] for r in records if "run_event" in r]


def test_two_cycles_run_to_the_end_each_step_at_its_condition() -> None:
    clock, records = Clock(), []
    bench = Bench(clock)
    engine = RunEngine(document(), bench, records.append, clock=clock, wall_ns=clock.wall_ns)
    run_to_end(engine, bench)
    assert engine.outcome == "end"
    kinds = [e["event"] for e in events(records)]
    assert kinds == ["start"] + ["step"] * 8 + ["end", "safe"]
    steps = [e for e in events(records) if e["event"] == "step"]
    assert [(e["cycle"], e["step"], e["step_index"]) for e in steps] == [
        (c, (c - 1) * 4 + i, i) for c in (1, 2) for i in (1, 2, 3, 4)
    ]
    # Each change of step happened at its end condition, judged on the reference channel.
    for before, after in zip(steps, [*steps[1:], events(records)[-2]], strict=True):
        spec = CYCLE[before["step_index"] - 1]
        if "until" in spec:
            assert after["channel"].startswith("labjack.")
            limit = spec["until"][0]["value"]
            value = abs(after["value"])
            assert value <= limit if spec["until"][0]["op"] == "<=" else value >= limit
        else:
            assert after["reason"] == "duration 1800 s"
    assert events(records)[-1]["reason"] == "eload safe; mppt safe"
    assert bench.load["input"] is False
    assert bench.charger["on"] is False
    commands = [r["command"] for r in records if "command" in r]
    assert all(c["outcome"] == "done" and c["issuer"] == "run/r-test" for c in commands)


def test_switching_off_comes_before_switching_on() -> None:
    doc = document()
    for position in positions(doc):
        actions = plan(position.spec, doc, 4.0)
        ons = [i for i, a in enumerate(actions) if a.args.get("on") is True]
        offs = [i for i, a in enumerate(actions) if a.args.get("on") is False]
        assert not ons or not offs or max(offs) < min(ons), position.spec["description"]


def test_the_charge_voltage_stays_below_max_v() -> None:
    doc = document()
    for position in positions(doc):
        for action in plan(position.spec, doc, 4.0):
            if action.command == "charge_limits":
                assert action.args["voltage_v"] < LIMITS["max_v"]


def test_a_limit_crossed_stops_the_run_and_makes_everything_safe() -> None:
    clock, records = Clock(), []
    bench = Bench(clock)
    steps = [{"description": "Discharge at 3 A for 10 hours", "action": "discharge", "current_a": 3.0,
              "duration_s": 36000}]  # fmt: skip
    engine = RunEngine(document(cycles=[{"repeat": 1, "steps": steps}]), bench, records.append,
                       clock=clock, wall_ns=clock.wall_ns)  # fmt: skip
    run_to_end(engine, bench)
    assert engine.outcome == "limit"
    limit = events(records)[-2]
    assert limit["event"] == "limit"
    assert limit["reason"] == "voltage below min_v 11.5 V"
    assert limit["value"] < 11.5
    assert limit["channel"] == "labjack.bat_v"
    assert events(records)[-1]["event"] == "safe"
    assert bench.load["input"] is False


def test_the_fallback_stands_in_for_a_missing_reference_and_says_so() -> None:
    clock, records = Clock(), []
    bench = Bench(clock)
    engine = RunEngine(document(), bench, records.append, clock=clock, wall_ns=clock.wall_ns)
    engine.reading("labjack", bench.step(0.0))
    assert engine.start("test")
    for _ in range(5):  # the LabJack goes silent; the load's and the charger's readings stand in
        values = bench.step(1.0)
        engine.reading("eload", {"bat_v": values["bat_v"], "bat_a": -3.0})
        engine.reading("mppt", {"bat_a": values["bat_a"]})
        engine.tick()
    assert engine.state == "running"
    watching = engine.status()["watching"]
    assert watching["channel"] == "eload.bat_v"
    assert watching["fallback"] is True


def test_without_any_voltage_reading_the_run_stops() -> None:
    clock, records = Clock(), []
    bench = Bench(clock)
    engine = RunEngine(document(), bench, records.append, clock=clock, wall_ns=clock.wall_ns)
    engine.reading("labjack", bench.step(0.0))
    assert engine.start("test")
    bench.step(2.5)
    engine.tick()
    assert engine.outcome == "stop"
    assert events(records)[-2]["reason"] == "no voltage reading on any channel: limits cannot be judged"
    assert bench.load["input"] is False


def test_a_failed_command_stops_the_run_safe() -> None:
    clock, records = Clock(), []
    bench = Bench(clock)
    bench.refuse[("eload", "input")] = "AccessDenied: device error 0x09"
    engine = RunEngine(document(), bench, records.append, clock=clock, wall_ns=clock.wall_ns)
    engine.reading("labjack", bench.step(0.0))
    engine.start("test")
    assert engine.outcome == "stop"
    assert "input on eload failed: AccessDenied" in events(records)[-2]["reason"]
    assert ("eload", "safe", {"reason": "run r-test stop"}) in bench.commands


@pytest.mark.parametrize(("soc", "why"), [(0.0, "outside the limits"), (None, "no voltage or current")])
def test_a_run_does_not_start_blind_or_outside_its_limits(soc: float | None, why: str) -> None:
    clock, records = Clock(), []
    bench = Bench(clock, soc=soc or 0.5)
    engine = RunEngine(document(), bench, records.append, clock=clock, wall_ns=clock.wall_ns)
    if soc is not None:
        engine.reading("labjack", {"bat_v": 10.9, "bat_a": 0.0})
    assert not engine.start("test")
    assert why in events(records)[-1]["reason"]
    assert bench.commands == []


def test_one_noisy_sample_does_not_end_a_step() -> None:
    clock, records = Clock(), []
    bench = Bench(clock)
    engine = RunEngine(document(), bench, records.append, clock=clock, wall_ns=clock.wall_ns, confirm_s=0.5)
    engine.reading("labjack", {"bat_v": 12.5, "bat_a": -3.0})
    engine.start("test")
    clock.t += 0.1
    engine.reading("labjack", {"bat_v": 11.7, "bat_a": -3.0})  # a spike below 11.8 V
    engine.tick()
    clock.t += 0.1
    engine.reading("labjack", {"bat_v": 12.4, "bat_a": -3.0})
    engine.tick()
    clock.t += 1.0
    engine.reading("labjack", {"bat_v": 12.4, "bat_a": -3.0})
    engine.tick()
    assert engine.status()["step"] == 1
    for _ in range(7):  # held for 0.6 s: now it ends
        clock.t += 0.1
        engine.reading("labjack", {"bat_v": 11.79, "bat_a": -3.0})
        engine.tick()
    assert engine.status()["step"] == 2


def test_the_status_shows_the_step_its_end_condition_and_the_live_value() -> None:
    clock, records = Clock(), []
    bench = Bench(clock)
    engine = RunEngine(document(), bench, records.append, clock=clock, wall_ns=clock.wall_ns)
    engine.reading("labjack", {"bat_v": 12.61, "bat_a": 0.0})
    engine.start("test")
    clock.t += 42
    engine.reading("labjack", {"bat_v": 12.2, "bat_a": -3.0})
    status = engine.status()
    assert status["description"] == "Discharge at 3 A until 11.8 V"
    assert (status["cycle"], status["cycles"], status["step"], status["steps"]) == (1, 2, 1, 8)
    assert status["until"] == "voltage <= 11.8 V"
    assert status["step_elapsed_s"] == 42
    assert status["watching"] == {"quantity": "voltage", "channel": "labjack.bat_v", "value": 12.2,
                                  "fallback": False}  # fmt: skip
