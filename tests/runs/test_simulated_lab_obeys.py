"""The simulated lab obeys a run: the run engine commands the real drivers (through each
instrument's ``InstrumentControl``) of the wire-level simulators on pseudo-terminals; a small
battery (25 mAh) discharges through the load to its cut-off, rests, charges at constant current
through the MPPT from a bench supply to 14.4 V and tapers at 14.4 V to the end current. The
LabJack's place (the reference) is taken by the battery model itself, as its stand-in does."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from soclab.dev.sim.battery import Battery, BatteryParams
from soclab.dev.sim.instruments.ea_el3000 import EaLoadSimulator
from soclab.dev.sim.instruments.libresolar_mppt import MpptSimulator
from soclab.dev.sim.lab import SimulatedLab
from soclab.dev.sim.profiles import SupplyProfile
from soclab.edge.instruments.ea_el3000 import EaLoadOptions
from soclab.edge.instruments.ea_el3000.driver import EaLoadDriver
from soclab.edge.instruments.libresolar_mppt import MpptOptions
from soclab.edge.instruments.libresolar_mppt.driver import MpptDriver
from soclab.edge.runs.actuators import EloadActuator, MpptActuator
from soclab.edge.runs.control import InstrumentControl
from soclab.edge.runs.engine import RunEngine
from soclab.wire import CMD_SCHEMA

STEPS = [
    {"description": "Discharge at 3 A until 11.8 V", "action": "discharge", "current_a": 3.0,
     "until": [{"quantity": "voltage", "op": "<=", "value": 11.8}]},
    {"description": "Rest for 2 seconds", "action": "rest", "duration_s": 2.0},
    {"description": "Charge at 4 A until 14.4 V", "action": "charge", "current_a": 4.0,
     "until": [{"quantity": "voltage", "op": ">=", "value": 14.4}]},
    {"description": "Hold at 14.4 V until 0.5 A", "action": "hold", "voltage_v": 14.4,
     "until": [{"quantity": "current", "op": "<=", "value": 0.5}]},
]  # fmt: skip
DOCUMENT = {
    "schema": "soclab.run/1",
    "id": "r-sim",
    "name": "one cycle on the simulated lab",
    "cycles": [{"repeat": 1, "steps": STEPS}],
    "limits": {"min_v": 11.0, "max_v": 14.8, "max_a": 6.0},
    "channels": {
        "voltage": {"device": "labjack", "field": "bat_v"},
        "current": {"device": "labjack", "field": "bat_a"},
    },
    "instruments": {"load": "eload", "charger": "mppt"},
}


class LocalControls:
    """The run's commands handed to each instrument's control, as the local socket will."""

    def __init__(self, controls: Mapping[str, InstrumentControl]) -> None:
        self.controls = controls
        self._ids = itertools.count(1)

    def execute(self, device: str, command: str, args: Mapping[str, Any]) -> tuple[str, str, str, int]:
        now = time.time_ns()
        message = {
            "schema": CMD_SCHEMA, "id": f"r-sim.{next(self._ids)}", "issuer": "run/r-sim", "issued_ns": now,
            "expires_ns": now + 5_000_000_000, "target": {"site": "lab1", "node": "pi-01", "device": device},
            "command": command, "args": dict(args),
        }  # fmt: skip
        result = self.controls[device].execute(message, holder="run/r-sim")
        return result["outcome"], result["reason"], result["id"], now


@pytest.mark.slow
def test_a_whole_cycle_runs_on_the_simulated_lab(tmp_path: Path) -> None:
    battery = Battery(BatteryParams(capacity_ah=0.025), soc=0.6)
    sims = {"mppt": MpptSimulator(battery, tmp_path / "mppt", period_s=0.2),
            "eload": EaLoadSimulator(battery, tmp_path / "eload")}  # fmt: skip
    lab = SimulatedLab(battery, SupplyProfile(10.0), sims)  # type: ignore[arg-type]
    lab.start()
    mppt = MpptDriver(MpptOptions(port=str(tmp_path / "mppt")))
    eload = EaLoadDriver(EaLoadOptions(port=str(tmp_path / "eload")))
    records: list[dict[str, Any]] = []
    try:
        mppt.open()
        eload.open()
        controls = {
            "eload": InstrumentControl("eload", EloadActuator(eload), site="lab1", node="pi-01"),
            "mppt": InstrumentControl("mppt", MpptActuator(mppt), site="lab1", node="pi-01"),
        }
        deadline = time.monotonic() + 5
        while mppt.dialect is None:
            mppt.read(0.1)
            assert time.monotonic() < deadline
        for control in controls.values():
            control.opened()
            assert control.acquire("run/r-sim", ttl_s=5.0)[0]
        engine = RunEngine(DOCUMENT, LocalControls(controls), records.append, confirm_s=0.2)
        state = battery.state()
        engine.reading("labjack", {"bat_v": state.voltage_v, "bat_a": state.current_a})
        assert engine.start("test")
        lowest, highest = 99.0, 0.0
        deadline = time.monotonic() + 90
        while engine.state == "running":
            assert time.monotonic() < deadline, f"the run did not end: {engine.status()}"
            state = battery.state()
            lowest, highest = min(lowest, state.voltage_v), max(highest, state.voltage_v)
            engine.reading("labjack", {"bat_v": state.voltage_v, "bat_a": state.current_a})
            engine.tick()
            for control in controls.values():
                control.acquire("run/r-sim", ttl_s=5.0)
            time.sleep(0.02)
    finally:
        lab.stop()
        mppt.close()
        eload.close()
    events = [r["run_event"] for r in records if "run_event" in r]
    assert engine.outcome == "end", events[-3:]
    assert [e["event"] for e in events] == ["start", "step", "step", "step", "step", "end", "safe"]
    reasons = [e["reason"] for e in events[2:6]]
    assert reasons[0].startswith("voltage <= 11.8 V")
    assert reasons[1] == "duration 2 s"
    assert reasons[2].startswith("voltage >= 14.4 V")
    assert reasons[3].startswith("last step done: |current| <= 0.5 A")
    assert lowest < 11.8 < 14.4 < highest < 14.8
    assert not sims["eload"].input_on
    assert battery.current_of("mppt_charger") == 0.0
    assert all(r["command"]["outcome"] == "done" for r in records if "command" in r)
