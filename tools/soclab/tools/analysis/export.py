"""``soclab export``: a run or a time range as files battery software reads.

- ``<stem>.bdf.csv``: the Battery Data Format (Battery Data Alliance) time series, one row per
  sample of the reference current, with the columns' preferred labels and fixed units
  (``BDF_COLUMNS``). Sign convention as BDF's: positive current charges. Voltage is the first of
  ``[analysis] voltage_sources`` with a sample within the tolerance (empty where none has);
  capacities and energies are cumulative from the first row and never reset (BDF's ``Charging
  Capacity / Ah`` etc.), step capacity and energy reset at each step; cycle and step counts come
  from the run events, or from the steps found in the current (see ``steps``).
- ``<stem>.bdf.metadata.json``: where the columns came from (instruments, tolerance, anchor).
- ``<stem>.aligned.parquet``: every instrument's ``bat_v``, ``bat_a`` (and the MPPT's ``soc_pct``,
  the reference SoC) side by side on the reference's timeline, as-of within the tolerance.
- ``<stem>.<kind>.parquet``: each instrument's full-resolution data as stored (every field).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from soclab.tools.analysis import Analysis, iso
from soclab.tools.analysis.align import asof
from soclab.tools.analysis.cli import parser, run
from soclab.tools.analysis.steps import label_samples
from soclab.tools.influx import InfluxClient

# BDF machine-readable name -> preferred label (the CSV header), in the order written.
BDF_COLUMNS = {
    "test_time_second": "Test Time / s",
    "voltage_volt": "Voltage / V",
    "current_ampere": "Current / A",
    "unix_time_second": "Unix Time / s",
    "cycle_count": "Cycle Count / 1",
    "step_count": "Step Count / 1",
    "step_index": "Step Index / 1",
    "charging_capacity_ah": "Charging Capacity / Ah",
    "discharging_capacity_ah": "Discharging Capacity / Ah",
    "step_capacity_ah": "Step Capacity / Ah",
    "net_capacity_ah": "Net Capacity / Ah",
    "cumulative_capacity_ah": "Cumulative Capacity / Ah",
    "charging_energy_wh": "Charging Energy / Wh",
    "discharging_energy_wh": "Discharging Energy / Wh",
    "step_energy_wh": "Step Energy / Wh",
    "net_energy_wh": "Net Energy / Wh",
    "cumulative_energy_wh": "Cumulative Energy / Wh",
    "power_watt": "Power / W",
}


def stem(result: Analysis) -> str:
    span = result.data.span
    when = pd.Timestamp(span.start_ns, unit="ns", tz="UTC").strftime("%Y%m%dT%H%M%SZ")
    return f"{span.site}__{span.node}__{span.run or when}"


def bdf_frame(result: Analysis) -> pd.DataFrame:
    """The BDF table: columns are BDF's preferred labels."""
    trace = result.reference.trace
    t = trace.index.to_numpy(dtype=np.int64)
    span = result.data.span
    zero = span.start_ns if span.run else int(t[0])
    labels = label_samples(t, result.segments)
    cumulative_ah = trace["charged_ah"] + trace["discharged_ah"]
    cumulative_wh = trace["charged_wh"] + trace["discharged_wh"]
    at_step_start = labels.groupby("step").cumcount() == 0
    step_ah = cumulative_ah - cumulative_ah.where(at_step_start.to_numpy()).ffill()
    step_wh = cumulative_wh - cumulative_wh.where(at_step_start.to_numpy()).ffill()
    values = {
        "test_time_second": (t - zero) / 1e9,
        "voltage_volt": trace["voltage_v"],
        "current_ampere": trace["current_a"],
        "unix_time_second": t / 1e9,
        "cycle_count": labels["cycle"],
        "step_count": labels["step"],
        "step_index": labels["step_index"],
        "charging_capacity_ah": trace["charged_ah"],
        "discharging_capacity_ah": trace["discharged_ah"],
        "step_capacity_ah": step_ah,
        "net_capacity_ah": trace["charged_ah"] - trace["discharged_ah"],
        "cumulative_capacity_ah": cumulative_ah,
        "charging_energy_wh": trace["charged_wh"],
        "discharging_energy_wh": trace["discharged_wh"],
        "step_energy_wh": step_wh,
        "net_energy_wh": trace["charged_wh"] - trace["discharged_wh"],
        "cumulative_energy_wh": cumulative_wh,
        "power_watt": trace["current_a"] * trace["voltage_v"],
    }
    frame = pd.DataFrame({BDF_COLUMNS[k]: np.asarray(v) for k, v in values.items()})
    return frame


def aligned_frame(result: Analysis) -> pd.DataFrame:
    """Every instrument's battery readings on the reference's timeline."""
    trace = result.reference.trace
    frame = pd.DataFrame(index=trace.index)
    frame["time"] = pd.to_datetime(trace.index.to_numpy(dtype=np.int64), unit="ns", utc=True)
    tolerance = result.options.tolerance_s
    for kind in result.data.frames:
        for field in ("bat_v", "bat_a", "soc_pct"):
            values = result.data.values(kind, field)
            if not values.empty:
                frame[f"{kind}_{field}"] = asof(trace.index, values.rename("v"), tolerance)["v"].to_numpy()
    frame["reference_soc_pct"] = trace["soc_pct"]
    return frame.reset_index()


def metadata(result: Analysis) -> dict:
    span, ref, options = result.data.span, result.reference, result.options
    return {
        "format": "Battery Data Format (Battery Data Alliance), CSV with preferred labels",
        "sign_convention": "positive current charges the battery",
        "site": span.site,
        "node": span.node,
        "run": span.run,
        "start": iso(span.start_ns),
        "end": iso(span.end_ns),
        "rows": "one per sample of the reference current",
        "current": f"{options.reference} {ref.device} bat_a",
        "voltage": f"first of {list(options.voltage_sources)} within {options.tolerance_s:g} s (nearest)",
        "devices": result.data.devices,
        "capacity_ah": result.battery.capacity_ah,
        "soc_anchor": ref.anchor.describe() if ref.anchor else None,
        "steps": "run_events" if not result.data.events.empty else "found in the reference current",
        "problems": result.problems,
    }


def export(result: Analysis, folder: Path) -> list[Path]:
    """Write every file into ``folder`` (made if missing); the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    name = stem(result)
    written = []
    path = folder / f"{name}.bdf.csv"
    bdf_frame(result).to_csv(path, index=False, float_format="%.15g")  # Unix time: 1 us
    written.append(path)
    path = folder / f"{name}.bdf.metadata.json"
    path.write_text(json.dumps(metadata(result), indent=1), encoding="utf-8")
    written.append(path)
    path = folder / f"{name}.aligned.parquet"
    aligned_frame(result).to_parquet(path, index=False)
    written.append(path)
    for kind, frame in result.data.frames.items():
        path = folder / f"{name}.{kind}.parquet"
        full = frame.reset_index()
        full.insert(1, "time", pd.to_datetime(full["t_ns"], unit="ns", utc=True))
        full.insert(2, "device", result.data.devices[kind])
        full.to_parquet(path, index=False)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = parser("soclab export", __doc__)
    p.add_argument("--out", type=Path, required=True, help="folder for the files")
    args = p.parse_args(argv)

    def body(result: Analysis, client: InfluxClient) -> int:
        for path in export(result, args.out):
            print(path)
        for problem in result.problems:
            print(f"! {problem}", file=sys.stderr)
        return 0

    return run("soclab export", args, body)


if __name__ == "__main__":
    sys.exit(main())
