"""Helpers of the analysis tests: the recording's place in the database."""

from __future__ import annotations

from dataclasses import dataclass

from soclab.dev.localservices import InfluxDB1
from soclab.tools import replay
from soclab.tools.influx import InfluxSettings

SITE, NODE = "lab-rec", "pi-rec"


@dataclass(frozen=True)
class Recorded:
    server: InfluxDB1
    influx: InfluxSettings
    recording: replay.Recording
    start_ns: int
    end_ns: int

    def count(self, q: str) -> int:
        return sum(int(v[1] or 0) for s in self.server.query(q, db=self.influx.bucket) for v in s["values"])
