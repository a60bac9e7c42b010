"""From stored data to results: reference SoC, per-step figures, instrument agreement.

From Python (a notebook)::

    from soclab.tools.influx import InfluxClient, InfluxSettings
    from soclab.tools import analysis

    client = InfluxClient(InfluxSettings(url=..., bucket=..., token=...))
    data = analysis.load(client, "lab1", "pi-01", run="2026-05-01-a")      # or start_ns=, end_ns=
    result = analysis.analyse(data)                                         # default battery
    result.steps, result.cycles, result.reference.trace, result.agreement   # pandas DataFrames
    print(result.summary())

The same from the shell: ``soclab analyse``, ``soclab export`` (BDF CSV and Parquet) and
``soclab report`` (a self-contained HTML page per run).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from soclab.tools.analysis.agreement import EloadCheck, Fit, eload_checks, fits, per_step
from soclab.tools.analysis.reference import Anchor, Reference, reference
from soclab.tools.analysis.settings import AnalysisSettings, BatterySettings, load_settings
from soclab.tools.analysis.source import AnalysisError, Dataset, Span, iso, load, parse_time
from soclab.tools.analysis.steps import Segment, cycle_table, segments, step_table


@dataclass
class Analysis:
    data: Dataset
    battery: BatterySettings
    options: AnalysisSettings
    reference: Reference
    segments: list[Segment]
    steps: pd.DataFrame
    cycles: pd.DataFrame
    agreement: pd.DataFrame
    fits: list[Fit]
    eload: list[EloadCheck]
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when everything asked for could be computed (a SoC anchor was found)."""
        return self.reference.anchor is not None

    def summary(self) -> str:
        ref = self.reference
        lines = [f"{self.data.span.describe()}"]
        lines.append(
            "instruments: "
            + ", ".join(f"{k}={d} ({len(self.data.frames[k])} samples)" for k, d in self.data.devices.items())
        )
        lines.append(
            f"reference: {self.options.reference} {ref.device}, capacity {self.battery.capacity_ah:g} Ah"
        )
        lines.append(f"anchor: {ref.anchor.describe() if ref.anchor else 'none'}")
        for check in ref.checks:
            capacity = f", implies {check.implied_capacity_ah:.2f} Ah" if check.implied_capacity_ah else ""
            lines.append(
                f"  check {check.anchor.describe()}; counted {100 * check.counted_soc:.1f} %{capacity}"
            )
        with pd.option_context(
            "display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format
        ):
            lines += ["", "steps:", self.steps.drop(columns=["description"]).to_string(index=False)]
            lines += ["", "cycles:", self.cycles.to_string(index=False)]
            if not self.agreement.empty:
                lines += ["", "instrument agreement per step:", self.agreement.to_string(index=False)]
        for fit in self.fits:
            lines.append(f"calibration: {fit.suggestion(self.options.reference)}")
        for counter in self.eload:
            reset = " (counter reset)" if counter.counter_reset else ""
            lines.append(
                f"e-load Ah counter, step {counter.step}: e-load {counter.eload_ah:.4f} Ah{reset}, reference"
                f" {counter.reference_ah:.4f} Ah ({counter.difference_pct:+.2f} %)"
            )
        lines += [f"! {p}" for p in self.problems]
        return "\n".join(lines)


def analyse(
    data: Dataset, battery: BatterySettings | None = None, options: AnalysisSettings | None = None
) -> Analysis:
    battery = (battery or BatterySettings()).check()
    options = (options or AnalysisSettings()).check()
    ref = reference(data, battery, options)
    segs = segments(data, ref, battery, options)
    steps = step_table(segs, ref, battery.rest_a)
    return Analysis(
        data=data,
        battery=battery,
        options=options,
        reference=ref,
        segments=segs,
        steps=steps,
        cycles=cycle_table(steps),
        agreement=per_step(data, ref, segs, options),
        fits=fits(data, ref, segs, options),
        eload=eload_checks(data, ref, segs, steps["kind"].tolist()),
        problems=list(ref.problems),
    )


__all__ = [
    "Analysis",
    "AnalysisError",
    "AnalysisSettings",
    "Anchor",
    "BatterySettings",
    "Dataset",
    "Span",
    "analyse",
    "iso",
    "load",
    "load_settings",
    "parse_time",
]
