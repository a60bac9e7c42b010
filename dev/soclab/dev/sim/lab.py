"""The simulated lab: one battery, a profile acting on it, and the instruments' simulators.

The battery's clock runs here in real time (``tick_s``). Each tick applies the profile: the
charger's current goes to the MPPT simulator (which limits it like a real charge controller),
the load's current to the electronic load's front panel, as a person in the lab would set it.
For runs (``SupplyProfile``) the profile only offers the charger a supply; what flows is what the
run commands over the wires: the load's current while its input is on in remote control, the
charger's within its current limit and charge voltage while its DC/DC is enabled. Make the
battery small (``BatteryParams.capacity_ah``, ``soclab-sim --capacity-ah``) and a whole cycle
takes seconds.
The battery's state is also written to a shared file for the LabJack stand-in, which runs inside
the LabJack publisher's process.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from soclab.dev.sim.battery import Battery
from soclab.dev.sim.profiles import Profile
from soclab.dev.sim.simulator import WireSimulator

log = logging.getLogger(__name__)


class SimulatedLab:
    def __init__(
        self,
        battery: Battery,
        profile: Profile | None,
        simulators: dict[str, WireSimulator],
        *,
        state_file: str | Path | None = None,
        tick_s: float = 0.02,
    ) -> None:
        self.battery = battery
        self.profile = profile
        self.simulators = simulators
        self.tick_s = tick_s
        self._state_writer: Any = None
        if state_file is not None:
            from soclab.dev.sim.shared_battery import BatteryStateWriter

            self._state_writer = BatteryStateWriter(state_file)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for sim in self.simulators.values():
            sim.start()
        self._thread = threading.Thread(target=self._run, name="battery-clock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sim in self.simulators.values():
            sim.stop()

    def _run(self) -> None:
        start = last = time.monotonic()
        while not self._stop.wait(self.tick_s):
            now = time.monotonic()
            self._apply_profile(now - start)
            state = self.battery.step(now - last)
            last = now
            if self._state_writer is not None:
                self._state_writer.write(state)

    def _apply_profile(self, t_s: float) -> None:
        if self.profile is None:
            return
        setpoint = self.profile.at(t_s)
        mppt = self.simulators.get("mppt")
        if mppt is not None:
            mppt.set_solar_charge(setpoint.charge_a)  # type: ignore[attr-defined]
        else:
            self.battery.set_current("charger", setpoint.charge_a)
        if setpoint.load_a is None:
            return  # the load is the run's (SupplyProfile)
        eload = self.simulators.get("eload")
        if eload is not None:
            eload.local_set(setpoint.load_a, setpoint.load_a > 0)  # type: ignore[attr-defined]
        else:
            self.battery.set_current("load", -setpoint.load_a)
