"""The reference SoC written back to InfluxDB, so Grafana plots it beside the MPPT's ``soc_pct``.

Measurement ``soc_reference``, tags ``site``, ``node``, ``device`` (the reference instrument) and,
for a run, ``run``; fields ``soc_pct`` and the charge throughput counted from the start of the
analysed run or range (``charged_ah``, ``discharged_ah``, ``charged_wh``, ``discharged_wh``); time
= the reference sample's acquisition time. At most one point per ``[analysis] writeback_every_s``
(0: every sample). Analysing the same span again overwrites the same points (same measurement,
tags and times), so a corrected battery setting simply replaces the old curve.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from soclab.tools.analysis import Analysis
from soclab.tools.analysis.source import AnalysisError
from soclab.tools.influx import InfluxClient

MEASUREMENT = "soc_reference"
FIELDS = ("soc_pct", "charged_ah", "discharged_ah", "charged_wh", "discharged_wh")


def points(result: Analysis) -> pd.DataFrame:
    """The points to write: index = time (UTC), the fields, the tags as columns."""
    if result.reference.anchor is None:
        raise AnalysisError("no reference SoC to write: no anchor (see the problems above)")
    trace = result.reference.trace
    t = trace.index.to_numpy(dtype=np.int64)
    every_ns = int(result.options.writeback_every_s * 1e9)
    if every_ns > 0:
        bucket = t // every_ns
        keep = np.concatenate(([True], bucket[1:] != bucket[:-1]))
        trace = trace[keep]
    frame = trace[list(FIELDS)].astype(float).copy()
    frame.index = pd.to_datetime(trace.index.to_numpy(dtype=np.int64), unit="ns", utc=True)
    span = result.data.span
    frame["site"], frame["node"], frame["device"] = span.site, span.node, result.reference.device
    if span.run:
        frame["run"] = span.run
    return frame.dropna(subset=["soc_pct"])


def write_reference(client: InfluxClient, result: Analysis) -> int:
    """Write the reference SoC; the number of points written. InfluxError if the server refuses."""
    frame = points(result)
    tags = [c for c in ("site", "node", "device", "run") if c in frame]
    return client.write_frame(frame, MEASUREMENT, tags)
