"""Instruments side by side on one timeline: an as-of join on acquisition time.

Each row of the base timeline takes, from another instrument, the sample nearest in time if it
is at most ``tolerance_s`` away, and nothing otherwise: a value is never carried beyond the
tolerance (a stopped instrument shows as empty cells, not as its last reading repeated). The
instruments sample on their own clocks (the LabJack streams at 100 Hz, the MPPT publishes once
a second, the e-load is polled twice a second), so with a tolerance of about one sample period
of the slower instrument every row finds its neighbour while the instrument runs.
"""

from __future__ import annotations

import pandas as pd


def asof(base_ns: pd.Index, other: pd.Series | pd.DataFrame, tolerance_s: float) -> pd.DataFrame:
    """``other``'s values (index ``t_ns``) at each time of ``base_ns``, nearest within tolerance."""
    frame = other.to_frame() if isinstance(other, pd.Series) else other
    left = pd.DataFrame({"t_ns": pd.Index(base_ns).astype("int64")})
    if frame.empty:
        return pd.DataFrame(index=left["t_ns"], columns=frame.columns, dtype=float)
    right = frame.reset_index().rename(columns={frame.index.name or "index": "t_ns"})
    right["t_ns"] = right["t_ns"].astype("int64")
    joined = pd.merge_asof(
        left.sort_values("t_ns"),
        right.sort_values("t_ns"),
        on="t_ns",
        direction="nearest",
        tolerance=int(tolerance_s * 1e9),
    )
    return joined.set_index("t_ns")


def first_available(base_ns: pd.Index, sources: list[pd.Series], tolerance_s: float) -> pd.Series:
    """One value per base time: the first source that has one within tolerance."""
    result = pd.Series(float("nan"), index=pd.Index(base_ns, name="t_ns"), dtype=float)
    for source in sources:
        if source.empty:
            continue
        values = asof(base_ns, source.rename("value"), tolerance_s)["value"].to_numpy(dtype=float)
        result = result.fillna(pd.Series(values, index=result.index))
    return result
