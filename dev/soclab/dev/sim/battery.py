"""An equivalent-circuit model of the lab's 12 V battery, shared by all instrument simulators.

Thevenin model with two RC pairs: ``v = ocv(soc) + i*r0 + v1 + v2`` with
``dv_k/dt = -v_k/(r_k*c_k) + i/c_k`` and coulomb counting ``dsoc/dt = i/(3600*capacity_ah)``.
Current is positive when charging. Several sources drive it at once (the MPPT's charger, the
electronic load, the MPPT's load output); the net current is their sum. The defaults resemble the
lab's 12 V lead-acid battery in soclab.dev.data.RECORDING (rest 12.8 V full, about 12.2 V under 3 A near
empty, 14.4 V at the end of a 4 A charge).
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BatteryParams:
    capacity_ah: float = 9.0
    # Open-circuit voltage (V) at state of charge (0..1), linearly interpolated.
    ocv_soc: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0)
    ocv_v: tuple[float, ...] = (11.60, 11.95, 12.10, 12.32, 12.50, 12.68, 12.78, 12.90)
    r0_ohm: float = 0.045
    rc_pairs: tuple[tuple[float, float], ...] = ((0.020, 1500.0), (0.030, 60000.0))  # (R ohm, C F)
    # Near full, a lead-acid battery takes charge against a steeply rising resistance (gassing):
    # while charging above knee_soc, r0 grows by knee_ohm * x**2 / (1.02 - x), x = (soc - knee_soc)
    # / (1 - knee_soc). So a constant-current charge reaches 14.4 V at about 93 % (4 A), and at a
    # held 14.4 V the current tapers (0.5 A near 98 %), as the lab's CC-CV charges do.
    charge_knee_soc: float = 0.8
    charge_knee_ohm: float = 0.25
    temperature_degc: float = 25.0

    def __post_init__(self) -> None:
        if len(self.ocv_soc) != len(self.ocv_v) or len(self.ocv_soc) < 2:
            raise ValueError("ocv_soc and ocv_v need the same length, at least 2")
        if list(self.ocv_soc) != sorted(self.ocv_soc):
            raise ValueError("ocv_soc must increase")
        if self.capacity_ah <= 0:
            raise ValueError("capacity_ah must be positive")

    def charge_ohm(self, soc: float) -> float:
        """The series resistance a charging current meets at ``soc`` (r0 plus the gassing knee)."""
        if soc <= self.charge_knee_soc:
            return self.r0_ohm
        x = min(1.0, (soc - self.charge_knee_soc) / (1.0 - self.charge_knee_soc))
        return self.r0_ohm + self.charge_knee_ohm * x * x / (1.02 - x)


@dataclass(frozen=True, slots=True)
class BatteryState:
    """A snapshot: what an ideal instrument would read at ``t_s`` (model time, seconds)."""

    t_s: float
    soc: float
    ocv_v: float
    voltage_v: float
    current_a: float
    charged_ah: float
    discharged_ah: float
    temperature_degc: float


@dataclass
class Battery:
    """The simulated battery; thread-safe. Advance it with ``step`` (or ``advance_to``)."""

    params: BatteryParams = field(default_factory=BatteryParams)
    soc: float = 0.6
    t_s: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, float] = {}
        self._v_rc = [0.0 for _ in self.params.rc_pairs]
        self._charged_ah = 0.0
        self._discharged_ah = 0.0

    def set_current(self, source: str, amps: float) -> None:
        """Set what one source drives into the battery (positive charges, negative discharges)."""
        if not math.isfinite(amps):
            raise ValueError(f"current of {source!r} must be finite, got {amps}")
        with self._lock:
            self._sources[source] = amps

    def current_of(self, source: str) -> float:
        with self._lock:
            return self._sources.get(source, 0.0)

    def step(self, dt_s: float) -> BatteryState:
        """Advance the model by ``dt_s`` seconds (sub-stepped for stability) and return the state."""
        if dt_s < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            remaining = dt_s
            while remaining > 0:
                h = min(remaining, 1.0)
                self._integrate(h)
                remaining -= h
            return self._state()

    def advance_to(self, t_s: float) -> BatteryState:
        return self.step(max(0.0, t_s - self.t_s))

    def state(self) -> BatteryState:
        with self._lock:
            return self._state()

    # --- model ----------------------------------------------------------------------------------
    def _net_current(self) -> float:
        i = sum(self._sources.values())
        if self.soc >= 1.0 and i > 0:
            return 0.0  # a full battery takes no more charge: the charger goes to float
        if self.soc <= 0.0 and i < 0:
            return 0.0  # an empty battery delivers nothing more (the load's undervoltage cut-off)
        return i

    def _integrate(self, h: float) -> None:
        i = self._net_current()
        for k, (r, c) in enumerate(self.params.rc_pairs):
            tau = r * c
            # exact solution of the linear ODE over h with constant i
            v_inf = i * r
            self._v_rc[k] = v_inf + (self._v_rc[k] - v_inf) * math.exp(-h / tau)
        ah = i * h / 3600.0
        if ah > 0:
            self._charged_ah += ah
        else:
            self._discharged_ah -= ah
        self.soc = min(1.0, max(0.0, self.soc + ah / self.params.capacity_ah))
        self.t_s += h

    def _ocv(self) -> float:
        xs, ys = self.params.ocv_soc, self.params.ocv_v
        soc = min(max(self.soc, xs[0]), xs[-1])
        j = max(1, min(bisect.bisect_left(xs, soc), len(xs) - 1))
        x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
        return y0 + (y1 - y0) * (soc - x0) / (x1 - x0)

    def _state(self) -> BatteryState:
        i = self._net_current()
        ocv = self._ocv()
        r0 = self.params.charge_ohm(self.soc) if i > 0 else self.params.r0_ohm
        v = ocv + i * r0 + sum(self._v_rc)
        return BatteryState(
            t_s=self.t_s,
            soc=self.soc,
            ocv_v=ocv,
            voltage_v=v,
            current_a=i,
            charged_ah=self._charged_ah,
            discharged_ah=self._discharged_ah,
            temperature_degc=self.params.temperature_degc,
        )
