"""What the analysis needs to know about the battery and how to read the instruments.

``[battery]`` describes the battery under test: its capacity, its open-circuit voltage table (to
anchor the SoC on a rest) and what a finished charge looks like (to anchor it at 100 %).
The defaults describe a 12 V lead-acid battery like the lab's (the one in the 2021 recording):
set your own battery's figures in the ``--config`` file.

``[analysis]`` says which instrument is the reference and how samples of different instruments
are put side by side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from soclab.wire.settings import ConfigError, read_toml

# The three instruments, by the kind their measurements are stored under.
KINDS = ("labjack", "mppt", "eload")


@dataclass(frozen=True)
class BatterySettings:
    capacity_ah: float = 9.0  # nominal (or measured) capacity: SoC = charge / capacity
    # Open-circuit voltage (V) at state of charge (0..1), linearly interpolated; both increasing.
    ocv_soc: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0)
    ocv_v: tuple[float, ...] = (11.60, 11.95, 12.10, 12.32, 12.50, 12.68, 12.78, 12.90)
    # A full charge: charging at or above full_v while the current has tapered to taper_a or less.
    full_v: float = 13.7
    taper_a: float = 0.25
    # A rest: |current| at most rest_a for at least rest_min_s; its last voltage is the OCV.
    rest_a: float = 0.05
    rest_min_s: float = 600.0

    def check(self) -> BatterySettings:
        if self.capacity_ah <= 0:
            raise ConfigError(f"[battery] capacity_ah must be positive, got {self.capacity_ah}")
        if len(self.ocv_soc) != len(self.ocv_v) or len(self.ocv_soc) < 2:
            raise ConfigError("[battery] ocv_soc and ocv_v need the same length, at least 2")
        if np.any(np.diff(self.ocv_soc) <= 0) or np.any(np.diff(self.ocv_v) <= 0):
            raise ConfigError("[battery] ocv_soc and ocv_v must both increase")
        if not 0 <= min(self.ocv_soc) <= max(self.ocv_soc) <= 1:
            raise ConfigError("[battery] ocv_soc are fractions, 0..1")
        if self.rest_a <= 0 or self.taper_a <= 0 or self.rest_min_s <= 0:
            raise ConfigError("[battery] rest_a, taper_a and rest_min_s must be positive")
        return self

    def soc_from_ocv(self, volts: float) -> float:
        """The SoC (0..1) the OCV table gives for a rested voltage, clipped to the table."""
        return float(np.interp(volts, self.ocv_v, self.ocv_soc))


@dataclass(frozen=True)
class AnalysisSettings:
    reference: str = "labjack"  # the instrument whose current is counted (the precision channel)
    # Voltage for Wh and for the export: the first of these with a sample within tolerance_s.
    voltage_sources: tuple[str, ...] = ("labjack", "mppt", "eload")
    tolerance_s: float = 1.0  # as-of join: nearest sample at most this far; beyond it, no value
    max_gap_s: float = 10.0  # a longer gap in the reference current is counted across, and reported
    min_step_s: float = 60.0  # without run events: a shorter change of current joins the step before
    anchor: str = "auto"  # auto | full | ocv | <soc_pct>@<time> (see reference.py)
    writeback_every_s: float = 1.0  # reference SoC points written back: at most one per this

    def check(self) -> AnalysisSettings:
        for kind in (self.reference, *self.voltage_sources):
            if kind not in KINDS:
                raise ConfigError(f"[analysis] unknown instrument kind {kind!r}; known: {', '.join(KINDS)}")
        positive = {"tolerance_s": self.tolerance_s, "max_gap_s": self.max_gap_s}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"[analysis] {name} must be positive, got {value}")
        if self.min_step_s < 0 or self.writeback_every_s < 0:
            raise ConfigError("[analysis] min_step_s and writeback_every_s must be >= 0")
        return self


def load_settings(
    path: str | None, env: dict[str, str] | None = None
) -> tuple[BatterySettings, AnalysisSettings]:
    """``[battery]`` and ``[analysis]`` of the config file, ``SOCLAB_BATTERY_*``/``SOCLAB_ANALYSIS_*``
    over them (scalars only); ConfigError naming the setting."""
    env = dict(os.environ if env is None else env)
    raw = read_toml(path) if path else {}
    battery = _table("battery", BatterySettings, raw.get("battery", {}), env)
    analysis = _table("analysis", AnalysisSettings, raw.get("analysis", {}), env)
    return battery.check(), analysis.check()


def _table(name: str, cls: type, table: Any, env: dict[str, str]) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    defaults = cls()
    known = {f.name: getattr(defaults, f.name) for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"[{name}] has no setting {key!r}; known: {', '.join(known)}")
        values[key] = _typed(f"[{name}] {key}", value, known[key])
    for key, default in known.items():
        variable = f"SOCLAB_{name.upper()}_{key.upper()}"
        if variable in env:
            text = env[variable]
            value = [part.strip() for part in text.split(",")] if isinstance(default, tuple) else text
            values[key] = _typed(variable, value, default)
    return cls(**values)


def _typed(where: str, value: Any, default: Any) -> Any:
    """``value`` (TOML, or environment text) as the type of ``default``: float, str or a tuple of them."""
    try:
        if isinstance(default, tuple):
            if not isinstance(value, list | tuple):
                raise TypeError
            return tuple(_scalar(v, default[0]) for v in value)
        return _scalar(value, default)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be {_describe(default)}, got {value!r}") from None


def _scalar(value: Any, default: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError
    if isinstance(default, float):
        return float(value)
    if not isinstance(value, str):
        raise TypeError
    return value


def _describe(default: Any) -> str:
    if isinstance(default, tuple):
        return f"a list of {type(default[0]).__name__}" if default else "a list"
    return type(default).__name__


__all__ = ["KINDS", "AnalysisSettings", "BatterySettings", "load_settings"]
