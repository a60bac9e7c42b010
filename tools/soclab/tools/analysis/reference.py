"""The reference state of charge: coulomb counting on the precision channel, anchored.

The reference current is the LabJack's calibrated ``bat_a`` (``[analysis] reference``), counted
separately for charge and discharge (``counting``); Wh come from that current times the battery
voltage (``[analysis] voltage_sources``: the first instrument with a sample within the
tolerance). Counting gives charge *differences*; an **anchor** fixes where the scale sits:

- ``full``: the end of a finished charge: charging at or above ``[battery] full_v`` while the
  current has tapered to ``taper_a`` or less (the CV phase running out) is 100 %;
- ``ocv``: the end of a rest (``|I| <= rest_a`` for at least ``rest_min_s``): its voltage is the
  open-circuit voltage, which the battery's OCV table turns into a SoC. A rest shorter than the
  battery's relaxation reads low after a discharge and high after a charge: lengthen it rather
  than trust it;
- ``auto`` (default): the first full charge if there is one, else the longest rest;
- ``<soc_pct>@<time>``: the SoC at a time the experimenter knows.

``SoC(t) = SoC_anchor + (Q_net(t) - Q_net(t_anchor)) / capacity``, forwards and backwards from
the anchor, not clipped (a value beyond 0..100 % says the capacity or the anchor is wrong). Every
other anchor candidate is kept as a check: what counting says there against what the candidate
says, and, where two candidates are far enough apart in SoC, the capacity they imply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from soclab.tools.analysis import counting
from soclab.tools.analysis.align import first_available
from soclab.tools.analysis.settings import AnalysisSettings, BatterySettings
from soclab.tools.analysis.source import AnalysisError, Dataset, iso, parse_time

MEASURED_CAPACITY_MIN_DSOC = 0.2  # two anchors closer than this in SoC say little about capacity
TAPER_JOIN_S = 300.0  # tapered samples this close together are one finished charge (noise splits it)


@dataclass(frozen=True)
class Anchor:
    kind: str  # full | ocv | given
    t_ns: int
    soc: float  # 0..1
    detail: str
    rest_s: float = 0.0  # for an OCV anchor: how long the battery had rested

    def describe(self) -> str:
        return f"{self.kind} at {iso(self.t_ns)}: {100 * self.soc:.1f} % ({self.detail})"


@dataclass(frozen=True)
class AnchorCheck:
    """Another anchor candidate against the counted SoC at its time."""

    anchor: Anchor
    counted_soc: float
    implied_capacity_ah: float | None  # from the chosen anchor to this one, if far enough apart


@dataclass
class Reference:
    """The reference trace (index ``t_ns``): ``current_a``, ``voltage_v``, ``charged_ah``,
    ``discharged_ah``, ``charged_wh``, ``discharged_wh`` (cumulative from the first sample) and
    ``soc_pct`` (NaN without an anchor)."""

    device: str
    trace: pd.DataFrame
    anchor: Anchor | None
    checks: list[AnchorCheck] = field(default_factory=list)
    gaps: list[tuple[int, float]] = field(default_factory=list)
    voltage_coverage: float = 1.0
    problems: list[str] = field(default_factory=list)

    def at(self, column: str, t_ns: int | float | list[int] | list[float] | np.ndarray) -> np.ndarray:
        """A cumulative column interpolated at times (held at the ends)."""
        t = self.trace.index.to_numpy(dtype=np.int64)
        return np.interp(  # type: ignore[no-any-return]
            np.asarray(t_ns, dtype=float), t.astype(float), self.trace[column].to_numpy(dtype=float)
        )


def reference(data: Dataset, battery: BatterySettings, options: AnalysisSettings) -> Reference:
    kind = options.reference
    current = data.values(kind, "bat_a")
    if len(current) < 2:
        raise AnalysisError(f"no reference current ({kind} bat_a) in {data.span.describe()}")
    t = current.index.to_numpy(dtype=np.int64)
    amps = current.to_numpy(dtype=float)
    sources = [data.values(k, "bat_v") for k in options.voltage_sources]
    volts = first_available(current.index, sources, options.tolerance_s).to_numpy(dtype=float)
    charge = counting.count(t, amps)
    energy = counting.count(t, amps * volts)
    trace = pd.DataFrame(
        {
            "current_a": amps,
            "voltage_v": volts,
            "charged_ah": charge.positive,
            "discharged_ah": charge.negative,
            "charged_wh": energy.positive,
            "discharged_wh": energy.negative,
        },
        index=pd.Index(t, name="t_ns"),
    )
    result = Reference(
        device=data.devices[kind],
        trace=trace,
        anchor=None,
        gaps=counting.gaps(t, options.max_gap_s),
        voltage_coverage=counting.coverage(t, volts),
    )
    if result.gaps:
        longest = max(length for _, length in result.gaps)
        result.problems.append(
            f"{len(result.gaps)} gap(s) longer than {options.max_gap_s:g} s in the reference current"
            f" (longest {longest:.0f} s), counted across as straight lines"
        )
    if result.voltage_coverage < 0.999:
        result.problems.append(
            f"battery voltage within {options.tolerance_s:g} s for {100 * result.voltage_coverage:.1f} %"
            " of the time only: Wh cover that part"
        )
    candidates = find_anchors(trace, battery)
    try:
        result.anchor = choose_anchor(options.anchor, candidates, trace)
    except AnalysisError as exc:
        result.problems.append(str(exc))
        trace["soc_pct"] = np.nan
        return result
    net = trace["charged_ah"] - trace["discharged_ah"]
    net_at_anchor = float(np.interp(result.anchor.t_ns, t.astype(float), net.to_numpy()))
    trace["soc_pct"] = 100 * (result.anchor.soc + (net - net_at_anchor) / battery.capacity_ah)
    for candidate in candidates:
        if candidate == result.anchor:
            continue
        net_there = float(np.interp(candidate.t_ns, t.astype(float), net.to_numpy()))
        counted = result.anchor.soc + (net_there - net_at_anchor) / battery.capacity_ah
        d_soc = candidate.soc - result.anchor.soc
        capacity = (
            abs((net_there - net_at_anchor) / d_soc) if abs(d_soc) >= MEASURED_CAPACITY_MIN_DSOC else None
        )
        result.checks.append(AnchorCheck(candidate, counted, capacity))
    return result


def find_anchors(trace: pd.DataFrame, battery: BatterySettings) -> list[Anchor]:
    """Every full-charge and rest anchor in the trace, in time order."""
    t = trace.index.to_numpy(dtype=np.int64)
    amps = trace["current_a"].to_numpy(dtype=float)
    volts = trace["voltage_v"].to_numpy(dtype=float)
    found: list[Anchor] = []
    tapered = np.nonzero((amps > 0) & (amps <= battery.taper_a) & (volts >= battery.full_v))[0]
    if len(tapered):
        apart = np.nonzero(np.diff(t[tapered]) > TAPER_JOIN_S * 1e9)[0]
        ends = np.concatenate((tapered[apart], [tapered[-1]]))
    else:
        ends = np.zeros(0, dtype=int)
    for last in ends:
        found.append(
            Anchor(
                "full",
                int(t[last]),
                1.0,
                f"charging at {volts[last]:.2f} V >= {battery.full_v:g} V, current tapered to"
                f" {amps[last]:.3f} A <= {battery.taper_a:g} A",
            )
        )
    resting = np.abs(amps) <= battery.rest_a
    for first, last in _runs(resting):
        length_s = (t[last] - t[first]) / 1e9
        if length_s < battery.rest_min_s:
            continue
        tail = (t >= t[last] - min(30e9, 0.1 * (t[last] - t[first]))) & (t <= t[last])
        ocv = float(np.nanmedian(volts[tail])) if np.isfinite(volts[tail]).any() else float("nan")
        if not np.isfinite(ocv):
            continue  # a rest without a voltage reading anchors nothing
        found.append(
            Anchor(
                "ocv",
                int(t[last]),
                battery.soc_from_ocv(ocv),
                f"rest of {length_s:.0f} s, OCV {ocv:.3f} V",
                length_s,
            )
        )
    return sorted(found, key=lambda a: a.t_ns)


def choose_anchor(how: str, candidates: list[Anchor], trace: pd.DataFrame) -> Anchor:
    full = [a for a in candidates if a.kind == "full"]
    rests = [a for a in candidates if a.kind == "ocv"]
    longest_rest = max(rests, key=lambda a: a.rest_s) if rests else None
    if how == "full" or (how == "auto" and full):
        if not full:
            raise AnalysisError(
                "no full charge (CV taper) to anchor the SoC on: anchor = 'ocv' or a known SoC"
            )
        return full[0]
    if how in ("ocv", "auto"):
        if longest_rest is None:
            raise AnalysisError(
                "no anchor for the SoC: neither a full charge (CV taper) nor a rest long enough"
                " ([battery] rest_min_s); give one as <soc_pct>@<time>"
            )
        return longest_rest
    pct, sep, when = how.partition("@")
    try:
        soc = float(pct) / 100
    except ValueError:
        soc = float("nan")
    if not sep or not np.isfinite(soc):
        raise AnalysisError(f"anchor {how!r}: use auto, full, ocv or <soc_pct>@<time>")
    t_ns = parse_time(when)
    first, last = int(trace.index[0]), int(trace.index[-1])
    if not first <= t_ns <= last:
        raise AnalysisError(f"anchor time {iso(t_ns)} is outside the data ({iso(first)} .. {iso(last)})")
    return Anchor("given", t_ns, soc, "given by the experimenter")


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) indices of each run of True."""
    if not mask.any():
        return []
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.nonzero(edges == 1)[0]
    ends = np.nonzero(edges == -1)[0] - 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))
