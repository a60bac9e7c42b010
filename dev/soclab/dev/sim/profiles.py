"""What the simulated lab does to the battery over time: a script of phases, or a real recording.

A profile answers, for a time since the start, the charger's current (through the MPPT) and the
electronic load's current, both in amperes and both >= 0. It repeats when it ends. A load current
of None leaves the electronic load alone: a run controls it over its wire (``SupplyProfile``).
"""

from __future__ import annotations

import bisect
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Setpoint:
    charge_a: float = 0.0
    load_a: float | None = 0.0  # None: the profile does not touch the load


class Profile(Protocol):
    @property
    def duration_s(self) -> float: ...

    def at(self, t_s: float) -> Setpoint: ...


@dataclass(frozen=True, slots=True)
class Phase:
    duration_s: float
    charge_a: float = 0.0
    load_a: float = 0.0


@dataclass(frozen=True)
class ScriptedProfile:
    """Phases one after another, e.g. the lab's evening: discharge, charge, rest."""

    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        if not self.phases or any(p.duration_s <= 0 for p in self.phases):
            raise ValueError("a profile needs phases of positive duration")
        if any(p.charge_a < 0 or p.load_a < 0 for p in self.phases):
            raise ValueError("charge_a and load_a are magnitudes (>= 0)")

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)

    def at(self, t_s: float) -> Setpoint:
        t = t_s % self.duration_s
        for phase in self.phases:
            if t < phase.duration_s:
                return Setpoint(phase.charge_a, phase.load_a)
            t -= phase.duration_s
        return Setpoint()


@dataclass(frozen=True)
class SupplyProfile:
    """A bench supply behind the charge controller offering ``charge_a`` all the time, and hands
    off the electronic load: the lab for runs, where the run controller switches both
    (charging through the MPPT's DcdcEn and its limits, the load through remote control)."""

    charge_a: float = 10.0
    duration_s: float = 3600.0

    def __post_init__(self) -> None:
        if not self.charge_a >= 0:
            raise ValueError("charge_a is a magnitude (>= 0)")

    def at(self, t_s: float) -> Setpoint:
        return Setpoint(charge_a=self.charge_a, load_a=None)


# The shape of the lab's recording of 2021-05-28, shortened: a cycle of about 20 minutes.
LAB_EVENING = ScriptedProfile(
    (
        Phase(120, load_a=1.0),
        Phase(300, charge_a=3.9),
        Phase(60),
        Phase(480, load_a=3.0),
        Phase(120),
        Phase(120, charge_a=3.9),
    )
)


@dataclass(frozen=True)
class ReplayProfile:
    """The MPPT's battery current of a Grafana export, sorted by time, replayed as set points.

    Positive current becomes the charger's, negative the load's; a gap holds the last value.
    ``speed`` > 1 replays faster than real time.
    """

    times_s: tuple[float, ...]
    currents_a: tuple[float, ...]
    speed: float = 1.0

    @classmethod
    def from_csv(
        cls, path: str | Path, column_prefix: str = 'Bat_A {device="mppt', speed: float = 1.0
    ) -> ReplayProfile:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            try:
                col = next(i for i, name in enumerate(header) if name.startswith(column_prefix))
            except StopIteration:
                raise ValueError(f"{path}: no column starting with {column_prefix!r}") from None
            points = sorted((int(row[0]), float(row[col])) for row in reader if len(row) > col and row[col])
        if len(points) < 2:
            raise ValueError(f"{path}: fewer than two samples in {header[col]!r}")
        t0 = points[0][0]
        return cls(tuple((t - t0) / 1000.0 for t, _ in points), tuple(a for _, a in points), speed=speed)

    @property
    def duration_s(self) -> float:
        return self.times_s[-1] / self.speed

    def at(self, t_s: float) -> Setpoint:
        t = (t_s % self.duration_s) * self.speed
        i = max(0, bisect.bisect_right(self.times_s, t) - 1)
        a = self.currents_a[i]
        return Setpoint(charge_a=max(a, 0.0), load_a=max(-a, 0.0))
