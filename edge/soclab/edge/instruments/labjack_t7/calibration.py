"""Per-channel calibration: the volts an AIN reads -> the quantity on the bench.

Every calibration is the sensor's nominal physics first, then a linear correction in the unit of
the result::

    value = gain * nominal(volts) + offset

so ``gain`` (dimensionless) and ``offset_a``/``offset_v`` (A, V) can be fitted directly against a
reference instrument, and gain = 1, offset = 0 means "trust the parts list".

LEM LA 55-P (closed-loop hall, conversion ratio 1:1000): the secondary current is
``I_S = I_P * N / 1000`` for N primary turns through the sensor, and it flows through the
measuring resistor R_M, so ``V = I_S * R_M`` and ``I_P = (1000 / N) * V / R_M``.

Voltage divider (e.g. an LJTick-Divider or two resistors): ``ratio`` is V_in / V_out (>= 1), so
the battery voltage is ``ratio * V_measured``.

The lab's old scripts stored the raw volts; ``Raw`` does that on purpose, under a ``_v`` name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

LEM_CONVERSION_RATIO = 1000  # LA 55-P: 1000 secondary turns


def _finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _fmt(x: float) -> str:
    return f"{x:.6g}"


@dataclass(frozen=True, slots=True)
class Raw:
    """No scaling: the field holds the AIN's volts."""

    kind: ClassVar[str] = "raw"
    unit: ClassVar[str] = "v"

    def apply(self, volts: float) -> float:
        return volts

    def volts_for(self, value: float) -> float:
        return value

    def describe(self) -> str:
        return "raw volts"


@dataclass(frozen=True, slots=True)
class LemCurrent:
    """LEM LA 55-P current transducer with measuring resistor ``resistor_ohm``; result in A."""

    kind: ClassVar[str] = "lem_la55p"
    unit: ClassVar[str] = "a"

    resistor_ohm: float
    _: KW_ONLY
    turns: int = 1
    gain: float = 1.0
    offset_a: float = 0.0

    def __post_init__(self) -> None:
        _finite("resistor_ohm", self.resistor_ohm)
        if self.resistor_ohm <= 0:
            raise ValueError(f"resistor_ohm must be > 0, got {self.resistor_ohm}")
        if isinstance(self.turns, bool) or not isinstance(self.turns, int) or self.turns < 1:
            raise ValueError(
                f"turns (primary turns through the sensor) must be an integer >= 1, got {self.turns!r}"
            )
        _finite("gain", self.gain)
        if self.gain == 0:
            raise ValueError("gain must not be 0")
        _finite("offset_a", self.offset_a)

    def primary_a(self, volts: float) -> float:
        """Nominal primary current: I_P = (1000 / N) * V / R_M."""
        return LEM_CONVERSION_RATIO / self.turns * volts / self.resistor_ohm

    def apply(self, volts: float) -> float:
        return self.gain * self.primary_a(volts) + self.offset_a

    def volts_for(self, amps: float) -> float:
        """The inverse of ``apply``: what the AIN reads for ``amps``."""
        return (amps - self.offset_a) / self.gain * self.turns * self.resistor_ohm / LEM_CONVERSION_RATIO

    def describe(self) -> str:
        return (
            f"lem_la55p r_m={_fmt(self.resistor_ohm)} ohm turns={self.turns}"
            f" gain={_fmt(self.gain)} offset_a={_fmt(self.offset_a)}"
        )


@dataclass(frozen=True, slots=True)
class Divider:
    """A voltage divider of ``ratio`` = V_in / V_out in front of the AIN; result in V."""

    kind: ClassVar[str] = "divider"
    unit: ClassVar[str] = "v"

    ratio: float
    _: KW_ONLY
    gain: float = 1.0
    offset_v: float = 0.0

    def __post_init__(self) -> None:
        _finite("ratio", self.ratio)
        if self.ratio < 1:
            raise ValueError(f"ratio is V_in / V_out of the divider and must be >= 1, got {self.ratio}")
        _finite("gain", self.gain)
        if self.gain == 0:
            raise ValueError("gain must not be 0")
        _finite("offset_v", self.offset_v)

    def apply(self, volts: float) -> float:
        return self.gain * self.ratio * volts + self.offset_v

    def volts_for(self, value: float) -> float:
        return (value - self.offset_v) / self.gain / self.ratio

    def describe(self) -> str:
        return f"divider ratio={_fmt(self.ratio)} gain={_fmt(self.gain)} offset_v={_fmt(self.offset_v)}"


Calibration = Raw | LemCurrent | Divider

_KINDS: dict[str, type[Raw] | type[LemCurrent] | type[Divider]] = {
    "raw": Raw,
    "lem_la55p": LemCurrent,
    "divider": Divider,
}


def calibration_from_config(kind: str, params: Mapping[str, Any]) -> Calibration:
    """Build a calibration from its config: ``kind`` (raw, lem_la55p, divider) and its parameters."""
    cls = _KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown calibration {kind!r}; known: {', '.join(_KINDS)}")
    fields = dataclasses.fields(cls)
    unknown = sorted(set(params) - {f.name for f in fields})
    if unknown:
        known = ", ".join(f.name for f in fields) or "none"
        raise ValueError(f"calibration {kind!r} has no setting {unknown[0]!r}; its settings: {known}")
    missing = [f.name for f in fields if f.name not in params and f.default is dataclasses.MISSING]
    if missing:
        raise ValueError(f"calibration {kind!r} needs {', '.join(missing)}")
    return cls(**params)
