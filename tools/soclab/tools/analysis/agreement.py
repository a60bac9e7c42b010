"""How the three instruments agree, per step, and what LabJack calibration would remove the offset.

Each other instrument's samples are put beside the reference (as-of join within the tolerance);
samples within two tolerances of a step change are left out, because there the instruments'
different sampling instants disagree about *when* the current changed, not about how much it is.

Per step and quantity (``bat_a``, ``bat_v``): mean of each, mean difference (other - reference)
and, where the reference is clearly non-zero, their ratio. Over the whole span a straight line
``other = gain * reference + offset`` (least squares) says what the reference would need to read
like the other instrument: with the LabJack as reference, its calibration's new ``gain`` is the
old one times ``gain`` and its new ``offset`` is ``gain * old offset + offset`` (``[instrument
.channels.bat_a] gain, offset_a`` and ``bat_v``'s ``gain, offset_v``). Which instrument is right
is the experimenter's call; this only measures.

The e-load's Ah counter is a second cross-check of the reference Ah over each discharge: the
counter's readings just before and just after the step bracket it, and the reference's
discharged Ah over the same bracket should match.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from soclab.tools.analysis.align import asof
from soclab.tools.analysis.reference import Reference
from soclab.tools.analysis.settings import KINDS, AnalysisSettings
from soclab.tools.analysis.source import Dataset
from soclab.tools.analysis.steps import Segment

QUANTITIES = {"bat_a": "A", "bat_v": "V"}
# The e-load sees only the current it sinks, not the charger's: compared while the battery discharges.
SINKS_ONLY = {("eload", "bat_a")}
RATIO_MIN = {"bat_a": 0.2, "bat_v": 1.0}  # below this reference magnitude a ratio means nothing
FIT_MIN_SAMPLES = 10
SLOPE_MIN_SPAN = 0.2  # A or V: a line through samples closer together than this is undetermined
OUTLIER_MADS = 6.0


@dataclass(frozen=True)
class Fit:
    """``other = gain * reference + offset`` over the span."""

    other: str
    quantity: str
    gain: float
    offset: float
    samples: int
    residual_rms: float
    reference_range: tuple[float, float]
    outliers: int  # samples left out as far off the line
    gain_stderr: float  # the gain's standard error: a narrow range of the reference fixes it poorly

    def suggestion(self, reference: str) -> str:
        unit = QUANTITIES[self.quantity]
        key = "offset_a" if self.quantity == "bat_a" else "offset_v"
        return (
            f"{reference} {self.quantity} reads like {self.other} with gain x {self.gain:.4f}"
            f" (+- {self.gain_stderr:.4f}) and"
            f" {key} {self.offset:+.4f} {unit} (new gain = old gain x {self.gain:.4f}; new {key} ="
            f" {self.gain:.4f} x old {key} {self.offset:+.4f}); residual {self.residual_rms:.4f} {unit}"
            f" RMS over {self.samples} samples ({self.outliers} far off the line left out)"
        )


@dataclass(frozen=True)
class EloadCheck:
    """The e-load's Ah counter against the reference over one discharge step."""

    step: int
    start: pd.Timestamp
    end: pd.Timestamp
    eload_ah: float
    reference_ah: float
    counter_reset: bool

    @property
    def difference_pct(self) -> float:
        return 100 * (self.reference_ah - self.eload_ah) / self.eload_ah if self.eload_ah else float("nan")


def per_step(data: Dataset, ref: Reference, segs: list[Segment], options: AnalysisSettings) -> pd.DataFrame:
    """One row per (step, other instrument, quantity) with enough samples side by side."""
    rows = []
    for other, quantity, joined in _pairs(data, ref, options):
        for seg in segs:
            inside = _steady(joined.index, seg, segs, options.tolerance_s)
            part = joined[inside].dropna()
            if part.empty:
                continue
            mean_ref, mean_other = float(part["reference"].mean()), float(part["other"].mean())
            ratio = mean_other / mean_ref if abs(mean_ref) >= RATIO_MIN[quantity] else np.nan
            rows.append(
                {
                    "step": seg.step,
                    "instrument": other,
                    "quantity": quantity,
                    "samples": len(part),
                    "reference_mean": mean_ref,
                    "other_mean": mean_other,
                    "difference": mean_other - mean_ref,
                    "ratio": ratio,
                }
            )
    columns = [
        "step",
        "instrument",
        "quantity",
        "samples",
        "reference_mean",
        "other_mean",
        "difference",
        "ratio",
    ]
    return pd.DataFrame(rows, columns=columns)


def fits(data: Dataset, ref: Reference, segs: list[Segment], options: AnalysisSettings) -> list[Fit]:
    found = []
    for other, quantity, joined in _pairs(data, ref, options):
        steady = np.zeros(len(joined), dtype=bool)
        for seg in segs:
            steady |= _steady(joined.index, seg, segs, options.tolerance_s)
        part = joined[steady].dropna()
        if len(part) < FIT_MIN_SAMPLES:
            continue
        x, y = part["reference"].to_numpy(), part["other"].to_numpy()
        line = _robust_line(x, y)
        if line is None:
            continue
        gain, offset, kept = line
        residual = y[kept] - (gain * x[kept] + offset)
        spread = float(np.std(x[kept]) * np.sqrt(max(1, int(kept.sum()) - 2)))
        found.append(
            Fit(other, quantity, gain, offset, int(kept.sum()), float(np.sqrt(np.mean(residual**2))),
                (float(x[kept].min()), float(x[kept].max())), int((~kept).sum()),
                float(np.sqrt(np.mean(residual**2))) / spread if spread > 0 else float("inf"))
        )  # fmt: skip
    return found


def _robust_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray] | None:
    """Least squares, then again without the samples more than OUTLIER_MADS robust deviations off
    the line (an instrument that lost its supply reads 0 V, a step edge seen at different instants);
    None when the samples span too little of the reference's range to fix a slope."""
    kept = np.ones(len(x), dtype=bool)
    for _ in range(3):
        if kept.sum() < FIT_MIN_SAMPLES or np.ptp(x[kept]) < SLOPE_MIN_SPAN:
            return None
        gain, offset = np.polyfit(x[kept], y[kept], 1)
        residual = y - (gain * x + offset)
        spread = 1.4826 * np.median(np.abs(residual[kept] - np.median(residual[kept])))
        now = np.abs(residual) <= max(OUTLIER_MADS * spread, 1e-9)
        if (now == kept).all():
            break
        kept = now
    return float(gain), float(offset), kept


def eload_checks(data: Dataset, ref: Reference, segs: list[Segment], kinds: list[str]) -> list[EloadCheck]:
    """Each discharge step (``kinds``: the step table's) bracketed by the e-load's counter."""
    counter = data.values("eload", "ah")
    if counter.empty:
        return []
    t = counter.index.to_numpy(dtype=np.int64)
    found = []
    for seg, kind in zip(segs, kinds, strict=True):
        if kind != "discharge":
            continue
        before = np.searchsorted(t, seg.start_ns, side="right") - 1
        after = np.searchsorted(t, seg.end_ns, side="left")
        if before < 0 or after >= len(t):
            continue  # the counter was not read on both sides of the step
        first, last = float(counter.iloc[before]), float(counter.iloc[after])
        reset = last < first
        eload_ah = last if reset else last - first
        reference_ah = float(np.diff(ref.at("discharged_ah", [t[before], t[after]]))[0])
        found.append(
            EloadCheck(
                seg.step,
                pd.Timestamp(int(t[before]), unit="ns", tz="UTC"),
                pd.Timestamp(int(t[after]), unit="ns", tz="UTC"),
                eload_ah,
                reference_ah,
                reset,
            )
        )
    return found


def _pairs(
    data: Dataset, ref: Reference, options: AnalysisSettings
) -> Iterator[tuple[str, str, pd.DataFrame]]:
    for quantity in QUANTITIES:
        reference = data.values(options.reference, quantity)
        if reference.empty:
            continue
        for other in KINDS:
            if other == options.reference:
                continue
            values = data.values(other, quantity)
            if values.empty:
                continue
            # On the sparser instrument's timeline: each of its samples finds its reference neighbour.
            base, joined_to = (values, reference) if len(values) <= len(reference) else (reference, values)
            near = asof(base.index, joined_to.rename("near"), options.tolerance_s)["near"].to_numpy()
            if base is values:
                frame = pd.DataFrame({"reference": near, "other": values.to_numpy()}, index=values.index)
            else:
                frame = pd.DataFrame(
                    {"reference": reference.to_numpy(), "other": near}, index=reference.index
                )
            if (other, quantity) in SINKS_ONLY:
                frame = frame[frame["reference"] < -RATIO_MIN[quantity]]
            yield other, quantity, frame


def _steady(index: pd.Index, seg: Segment, segs: list[Segment], tolerance_s: float) -> np.ndarray:
    t = index.to_numpy(dtype=np.int64)
    margin = int(2 * tolerance_s * 1e9)
    last = seg is segs[-1]
    upper = (t <= seg.end_ns - margin) if not last else (t <= seg.end_ns)
    steady: np.ndarray = (t >= seg.start_ns + margin) & upper
    return steady
