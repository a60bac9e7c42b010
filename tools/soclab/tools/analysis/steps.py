"""Steps and cycles of a run, and their figures.

**With run events** (a run of the experiments' controller): a step begins at each event that
names a new ``step`` (``start``, ``step``, ``resume``); it ends where the next one begins or at a
``stop``/``end``/``safe`` event. Its end reason is that event's ``reason`` (or, after a
``limit`` event, the limit's), else the event's name. Cycle, step count, index in the cycle and
the step as written come from the events.

**Without them** (a time range), steps are where the reference current changes direction: each
sample is charge (``I > rest_a``), discharge (``I < -rest_a``) or rest, and a change lasting less
than ``[analysis] min_step_s`` joins the step before it (noise around zero, a short spike). A new
cycle begins with each discharge that follows a charge.

Per step: its kind (charge, discharge or rest, by its median current: a step is what it mostly
is, whatever the instants around its edges say), duration, end reason, Ah and Wh charged and
discharged (from the reference trace), voltage at start and end, mean current, SoC at start and
end. Per cycle: the same sums, and
coulombic (Ah out / Ah in) and energy (Wh out / Wh in) efficiency, with the cycle's SoC at
start and end beside them: an efficiency over a cycle that does not return to its SoC says as
much about the SoC change as about the battery.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from soclab.tools.analysis.reference import Reference
from soclab.tools.analysis.settings import AnalysisSettings, BatterySettings
from soclab.tools.analysis.source import TERMINAL_EVENTS, Dataset

STEP_COLUMNS = [
    "cycle", "step", "step_index", "kind", "description", "start", "end", "duration_s", "end_reason",
    "charged_ah", "discharged_ah", "charged_wh", "discharged_wh", "v_start", "v_end", "i_mean_a",
    "soc_start_pct", "soc_end_pct",
]  # fmt: skip
CYCLE_COLUMNS = [
    "cycle", "start", "end", "duration_s", "charged_ah", "discharged_ah", "charged_wh", "discharged_wh",
    "coulombic_efficiency", "energy_efficiency", "soc_start_pct", "soc_end_pct",
]  # fmt: skip


@dataclass(frozen=True)
class Segment:
    start_ns: int
    end_ns: int
    cycle: int
    step: int
    step_index: int
    description: str
    end_reason: str


def segments(
    data: Dataset, ref: Reference, battery: BatterySettings, options: AnalysisSettings
) -> list[Segment]:
    if not data.events.empty:
        return from_events(data.events, int(ref.trace.index[-1]))
    t = ref.trace.index.to_numpy(dtype=np.int64)
    return from_current(t, ref.trace["current_a"].to_numpy(dtype=float), battery.rest_a, options.min_step_s)


def from_events(events: pd.DataFrame, last_sample_ns: int) -> list[Segment]:
    found: list[Segment] = []
    current: dict | None = None
    pending_reason = ""

    def close(at_ns: int, reason: str) -> None:
        nonlocal current, pending_reason
        if current is not None and at_ns >= current["start_ns"]:
            found.append(Segment(end_ns=at_ns, end_reason=pending_reason or reason, **current))
        current, pending_reason = None, ""

    for t_ns, row in events.iterrows():
        event = str(row.get("event", ""))
        reason = _text(row.get("reason")) or event
        step = _int(row.get("step"))
        if event == "limit":
            value, channel = row.get("value"), _text(row.get("channel"))
            detail = f" ({channel} = {value:g})" if channel and _is_number(value) else ""
            pending_reason = f"limit: {reason}{detail}"
        if event in TERMINAL_EVENTS:
            close(int(t_ns), reason if event == "end" else f"{event}: {reason}" if reason != event else event)
            continue
        if step is not None and (current is None or step != current["step"]):
            close(int(t_ns), reason)
            current = {
                "start_ns": int(t_ns),
                "cycle": _int(row.get("cycle")) or 1,
                "step": step,
                "step_index": _int(row.get("step_index")) or 1,
                "description": _text(row.get("description")),
            }
    if current is not None:
        close(max(last_sample_ns, current["start_ns"]), "still running (no end event yet)")
    return found


def from_current(t: np.ndarray, amps: np.ndarray, rest_a: float, min_step_s: float) -> list[Segment]:
    kinds = np.where(amps > rest_a, "charge", np.where(amps < -rest_a, "discharge", "rest"))
    change = np.nonzero(kinds[1:] != kinds[:-1])[0] + 1
    starts = np.concatenate(([0], change))
    runs: list[list] = []  # [kind, first index]
    for i, first in enumerate(starts):
        end_index = starts[i + 1] if i + 1 < len(starts) else len(t) - 1
        length_s = (t[end_index] - t[first]) / 1e9
        kind = str(kinds[first])
        if runs and (kind == runs[-1][0] or length_s < min_step_s):
            continue  # a short change joins the step before it
        runs.append([kind, int(first)])
    # A short first run joins the one after it.
    if len(runs) > 1 and (t[runs[1][1]] - t[runs[0][1]]) / 1e9 < min_step_s:
        runs[1][1] = 0
        runs.pop(0)
    merged: list[list] = []
    for run in runs:
        if merged and merged[-1][0] == run[0]:
            continue
        merged.append(run)
    found: list[Segment] = []
    cycle, index, charged_since = 1, 0, False
    for i, (kind, first) in enumerate(merged):
        if kind == "discharge" and charged_since:
            cycle, index, charged_since = cycle + 1, 0, False
        charged_since = charged_since or kind == "charge"
        index += 1
        last = i + 1 == len(merged)
        end_ns = int(t[-1]) if last else int(t[merged[i + 1][1]])
        reason = "end of the data" if last else f"current became {merged[i + 1][0]}"
        found.append(Segment(int(t[first]), end_ns, cycle, i + 1, index, kind, reason))
    return found


def step_table(segs: list[Segment], ref: Reference, rest_a: float) -> pd.DataFrame:
    rows = []
    t = ref.trace.index.to_numpy(dtype=np.int64)
    volts = ref.trace["voltage_v"].to_numpy(dtype=float)
    amps = ref.trace["current_a"].to_numpy(dtype=float)
    for n, seg in enumerate(segs):
        start, end = np.array([seg.start_ns, seg.end_ns], dtype=float)
        delta = {c: float(np.diff(ref.at(c, [start, end]))[0]) for c in _SUMS}
        duration_s = (seg.end_ns - seg.start_ns) / 1e9
        before_end = (
            (t <= seg.end_ns) if n + 1 == len(segs) else (t < seg.end_ns)
        )  # the end is the next start
        inside = (t >= seg.start_ns) & before_end
        v = volts[inside & np.isfinite(volts)]
        i_mean = (
            (delta["charged_ah"] - delta["discharged_ah"]) * 3600 / duration_s if duration_s > 0 else np.nan
        )
        soc = ref.at("soc_pct", [start, end]) if ref.anchor is not None else [np.nan, np.nan]
        rows.append(
            {
                "cycle": seg.cycle,
                "step": seg.step,
                "step_index": seg.step_index,
                "kind": _kind(float(np.median(amps[inside])) if inside.any() else i_mean, rest_a),
                "description": seg.description,
                "start": _time(seg.start_ns),
                "end": _time(seg.end_ns),
                "duration_s": duration_s,
                "end_reason": seg.end_reason,
                **delta,
                "v_start": v[0] if len(v) else np.nan,
                "v_end": v[-1] if len(v) else np.nan,
                "i_mean_a": i_mean,
                "soc_start_pct": soc[0],
                "soc_end_pct": soc[1],
            }
        )
    return pd.DataFrame(rows, columns=STEP_COLUMNS)


def cycle_table(steps: pd.DataFrame) -> pd.DataFrame:
    if steps.empty:
        return pd.DataFrame(columns=CYCLE_COLUMNS)
    grouped = steps.groupby("cycle", sort=True)
    cycles = grouped.agg(
        start=("start", "min"),
        end=("end", "max"),
        duration_s=("duration_s", "sum"),
        charged_ah=("charged_ah", "sum"),
        discharged_ah=("discharged_ah", "sum"),
        charged_wh=("charged_wh", "sum"),
        discharged_wh=("discharged_wh", "sum"),
        soc_start_pct=("soc_start_pct", "first"),
        soc_end_pct=("soc_end_pct", "last"),
    ).reset_index()
    cycles["coulombic_efficiency"] = _ratio(cycles["discharged_ah"], cycles["charged_ah"])
    cycles["energy_efficiency"] = _ratio(cycles["discharged_wh"], cycles["charged_wh"])
    return cycles[CYCLE_COLUMNS]


def label_samples(t_ns: np.ndarray, segs: list[Segment]) -> pd.DataFrame:
    """Cycle, step count and index within the step (from 1) of each sample; 0 outside every step."""
    cycle = np.zeros(len(t_ns), dtype=np.int64)
    step = np.zeros(len(t_ns), dtype=np.int64)
    index = np.zeros(len(t_ns), dtype=np.int64)
    for n, seg in enumerate(segs):
        last = n + 1 == len(segs)
        inside = (t_ns >= seg.start_ns) & ((t_ns <= seg.end_ns) if last else (t_ns < seg.end_ns))
        cycle[inside] = seg.cycle
        step[inside] = seg.step
        index[inside] = np.arange(1, int(inside.sum()) + 1)
    return pd.DataFrame(
        {"cycle": cycle, "step": step, "step_index": index}, index=pd.Index(t_ns, name="t_ns")
    )


_SUMS = ("charged_ah", "discharged_ah", "charged_wh", "discharged_wh")


def _kind(i_mean: float, rest_a: float) -> str:
    if not np.isfinite(i_mean):
        return ""
    return "charge" if i_mean > rest_a else "discharge" if i_mean < -rest_a else "rest"


def _ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    return (numerator / denominator.where(denominator > 0)).astype(float)


def _time(t_ns: int) -> pd.Timestamp:
    return pd.Timestamp(t_ns, unit="ns", tz="UTC")


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _int(value: object) -> int | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    try:
        return int(str(value).split(".")[0]) if not isinstance(value, int | float) else int(value)
    except (TypeError, ValueError):
        return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
