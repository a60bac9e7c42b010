"""``soclab analyse``: the reference SoC, per-step and per-cycle figures and the instruments'
agreement of a run or a time range, printed; ``--write`` stores the reference SoC (measurement
``soc_reference``) for Grafana; ``--json`` saves the tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from soclab.tools.analysis import Analysis
from soclab.tools.analysis.cli import parser, run
from soclab.tools.analysis.writeback import MEASUREMENT, write_reference
from soclab.tools.influx import InfluxClient


def main(argv: list[str] | None = None) -> int:
    p = parser("soclab analyse", __doc__)
    p.add_argument("--write", action="store_true", help=f"write the reference SoC back ({MEASUREMENT})")
    p.add_argument("--json", type=Path, help="save steps, cycles, agreement and checks as JSON here")
    args = p.parse_args(argv)

    def body(result: Analysis, client: InfluxClient) -> int:
        print(result.summary())
        if args.json:
            args.json.write_text(json.dumps(as_json(result), indent=1, default=str), encoding="utf-8")
        if args.write:
            count = write_reference(client, result)
            print(f"wrote {count} {MEASUREMENT} points")
        if not result.complete:
            print("soclab analyse: no reference SoC (no anchor): see above", file=sys.stderr)
            return 1
        return 0

    return run("soclab analyse", args, body)


def as_json(result: Analysis) -> dict:
    def table(frame: pd.DataFrame) -> list[dict]:
        records: list[dict] = json.loads(frame.to_json(orient="records", date_format="iso"))
        return records

    ref = result.reference
    return {
        "span": result.data.span.describe(),
        "devices": result.data.devices,
        "anchor": ref.anchor.describe() if ref.anchor else None,
        "checks": [
            {
                "anchor": c.anchor.describe(),
                "counted_soc_pct": 100 * c.counted_soc,
                "capacity_ah": c.implied_capacity_ah,
            }
            for c in ref.checks
        ],
        "steps": table(result.steps),
        "cycles": table(result.cycles),
        "agreement": table(result.agreement),
        "calibration": [fit.suggestion(result.options.reference) for fit in result.fits],
        "eload_ah": [
            {
                "step": c.step,
                "eload_ah": c.eload_ah,
                "reference_ah": c.reference_ah,
                "difference_pct": c.difference_pct,
            }
            for c in result.eload
        ],
        "problems": result.problems,
    }


if __name__ == "__main__":
    sys.exit(main())
