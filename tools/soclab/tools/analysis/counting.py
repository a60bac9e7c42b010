"""Coulomb and energy counting on sampled current (and power), split by direction.

Between two samples the quantity is taken as linear (trapezoid rule). Where it changes sign
inside an interval, the interval is split at the interpolated zero crossing, so charge put in
and charge taken out are each counted exactly for a piecewise-linear signal: nothing cancels
inside an interval. Sign convention: positive current charges the battery (BDF's and soclab's).

The results are cumulative from the first sample, like BDF's ``Charging Capacity / Ah`` and
``Discharging Capacity / Ah`` (they never reset between steps or cycles).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Counted:
    """Cumulative positive and negative integrals at each sample (units of the input x hours)."""

    positive: Array
    negative: Array  # a magnitude: >= 0, non-decreasing

    @property
    def net(self) -> Array:
        return self.positive - self.negative


def count(t_ns: npt.NDArray[np.int64], values: Array) -> Counted:
    """Integrate ``values`` over time in hours (A -> Ah, W -> Wh), split by sign.

    An interval with a missing value (NaN) at either end adds nothing; the caller reports how
    much of the time that was (``coverage``).
    """
    t_h = (np.asarray(t_ns, dtype=np.int64) - int(t_ns[0])) / 3.6e12 if len(t_ns) else np.zeros(0)
    y = np.asarray(values, dtype=float)
    if len(y) < 2:
        zeros = np.zeros(len(y))
        return Counted(zeros, zeros.copy())
    dt = np.diff(t_h)
    a, b = y[:-1], y[1:]
    valid = np.isfinite(a) & np.isfinite(b)
    a = np.where(valid, a, 0.0)
    b = np.where(valid, b, 0.0)
    same_sign = (a >= 0) == (b >= 0)
    # Same sign (or a zero end): the trapezoid goes wholly to one side.
    trapezoid = (a + b) / 2 * dt
    pos = np.where(same_sign & (a + b > 0), trapezoid, 0.0)
    neg = np.where(same_sign & (a + b < 0), -trapezoid, 0.0)
    # Opposite signs: a triangle on each side of the zero crossing.
    crossing = ~same_sign
    span = np.where(crossing, np.abs(a) + np.abs(b), 1.0)
    high = np.maximum(a, b)
    low = np.minimum(a, b)
    pos = np.where(crossing, high * high / span / 2 * dt, pos)
    neg = np.where(crossing, low * low / span / 2 * dt, neg)
    return Counted(_cumulative(pos), _cumulative(neg))


def coverage(t_ns: npt.NDArray[np.int64], values: Array) -> float:
    """The fraction of the time between the first and last sample with a value at both ends."""
    if len(t_ns) < 2:
        return 1.0
    dt = np.diff(np.asarray(t_ns, dtype=np.int64)).astype(float)
    y = np.asarray(values, dtype=float)
    valid = np.isfinite(y[:-1]) & np.isfinite(y[1:])
    total = dt.sum()
    return float(dt[valid].sum() / total) if total > 0 else 1.0


def gaps(t_ns: npt.NDArray[np.int64], longer_than_s: float) -> list[tuple[int, float]]:
    """(start t_ns, length s) of each interval between samples longer than ``longer_than_s``."""
    if len(t_ns) < 2:
        return []
    dt_s = np.diff(np.asarray(t_ns, dtype=np.int64)).astype(float) / 1e9
    where = np.nonzero(dt_s > longer_than_s)[0]
    return [(int(t_ns[i]), float(dt_s[i])) for i in where]


def _cumulative(parts: Array) -> Array:
    return np.concatenate(([0.0], np.cumsum(parts)))
