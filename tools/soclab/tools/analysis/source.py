"""Stored data of one node over a run or a time range, read from InfluxDB into pandas.

Each instrument kind is one measurement (``labjack``, ``mppt``, ``eload``; tags ``site``,
``node``, ``device``), each sample one point at its acquisition time. A run is found by its
``run_events`` (measurement fixed in the project's plan: tags ``site``, ``node``, ``run``; fields
``event``, ``cycle``, ``step``, ``step_index``, ``description``, ``reason``, ``value``,
``channel``): it lasts from its first event to its last ``end``/``stop``/``safe`` event, or until
now while it is still going.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from soclab.tools.analysis.settings import KINDS
from soclab.tools.influx import InfluxClient, quote_ident, quote_string

RUN_EVENTS = "run_events"
TERMINAL_EVENTS = ("end", "stop", "safe")


class AnalysisError(RuntimeError):
    """The data asked for cannot be analysed as asked; the message says why."""


@dataclass(frozen=True)
class Span:
    """What to analyse: one node, from ``start_ns`` to ``end_ns`` (inclusive), maybe one run."""

    site: str
    node: str
    start_ns: int
    end_ns: int
    run: str | None = None

    def describe(self) -> str:
        what = f"run {self.run}" if self.run else "time range"
        return f"{self.site}/{self.node} {what} {iso(self.start_ns)} .. {iso(self.end_ns)}"


@dataclass
class Dataset:
    """Each instrument's samples (index ``t_ns``, sorted), their device names, the run's events."""

    span: Span
    frames: dict[str, pd.DataFrame]
    devices: dict[str, str]
    events: pd.DataFrame = field(default_factory=lambda: pd.DataFrame())

    def values(self, kind: str, column: str) -> pd.Series:
        """One field of one instrument without missing values, indexed by ``t_ns``; empty if absent."""
        frame = self.frames.get(kind)
        if frame is None or column not in frame:
            return pd.Series(dtype=float, name=column)
        return pd.to_numeric(frame[column], errors="coerce").dropna()


def iso(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")


def parse_time(text: str) -> int:
    """An ISO 8601 time (UTC unless it says otherwise) or epoch seconds, as epoch nanoseconds."""
    try:
        return round(float(text) * 1e9)
    except ValueError:
        pass
    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        raise AnalysisError(f"{text!r} is neither an ISO 8601 time nor epoch seconds") from None
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.value)


def load(
    client: InfluxClient,
    site: str,
    node: str,
    *,
    run: str | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
    devices: Mapping[str, str] | None = None,
) -> Dataset:
    """Read a run (its events give the range; ``start_ns``/``end_ns`` may narrow it) or a range."""
    events = pd.DataFrame()
    if run is not None:
        events = run_events(client, site, node, run)
        if events.empty:
            raise AnalysisError(f"no {RUN_EVENTS} for run {run!r} of {site}/{node}")
        first = int(events.index[0])
        terminal = events[events["event"].isin(TERMINAL_EVENTS)]
        last = int(terminal.index[-1]) if not terminal.empty else time.time_ns()
        start_ns = first if start_ns is None else max(start_ns, first)
        end_ns = last if end_ns is None else min(end_ns, last)
    if start_ns is None or end_ns is None:
        raise AnalysisError("give a run (--run) or a time range (--from and --to)")
    if end_ns <= start_ns:
        raise AnalysisError(f"the range ends ({iso(end_ns)}) before it starts ({iso(start_ns)})")
    span = Span(site, node, start_ns, end_ns, run)
    frames: dict[str, pd.DataFrame] = {}
    chosen: dict[str, str] = {}
    for kind in KINDS:
        by_device = _samples(client, kind, span)
        if not by_device:
            continue
        wanted = (devices or {}).get(kind)
        if wanted is not None:
            if wanted not in by_device:
                raise AnalysisError(
                    f"no {kind} device {wanted!r} in {span.describe()}; found {sorted(by_device)}"
                )
            device = wanted
        elif len(by_device) > 1:
            raise AnalysisError(
                f"{len(by_device)} {kind} devices in {span.describe()} ({', '.join(sorted(by_device))}):"
                f" choose one with --device {kind}=<name>"
            )
        else:
            (device,) = by_device
        frames[kind] = by_device[device]
        chosen[kind] = device
    if not frames:
        raise AnalysisError(f"no samples of {', '.join(KINDS)} in {span.describe()}")
    return Dataset(span, frames, chosen, events)


def run_events(client: InfluxClient, site: str, node: str, run: str) -> pd.DataFrame:
    q = (
        f"SELECT * FROM {quote_ident(RUN_EVENTS)} WHERE {quote_ident('site')} = {quote_string(site)}"
        f" AND {quote_ident('node')} = {quote_string(node)} AND {quote_ident('run')} = {quote_string(run)}"
    )
    frame = _frame(client.query(q))
    if frame.empty:
        return frame
    if "event" not in frame:
        raise AnalysisError(f"{RUN_EVENTS} of run {run!r} have no 'event' field")
    return frame


def _samples(client: InfluxClient, kind: str, span: Span) -> dict[str, pd.DataFrame]:
    """device -> its samples in the span, read window by window."""
    pieces: dict[str, list[pd.DataFrame]] = {}
    window = int(client.settings.window_s * 1e9)
    start = span.start_ns
    while start <= span.end_ns:
        end = min(start + window - 1, span.end_ns)
        q = (
            f"SELECT * FROM {quote_ident(kind)} WHERE {quote_ident('site')} = {quote_string(span.site)}"
            f" AND {quote_ident('node')} = {quote_string(span.node)} AND time >= {start} AND time <= {end}"
            f" GROUP BY {quote_ident('device')}"
        )
        for series in client.query(q):
            device = series.get("tags", {}).get("device", "")
            pieces.setdefault(device, []).append(_series_frame([series]))
        start = end + 1
    return {device: _sorted(pd.concat(frames)) for device, frames in pieces.items()}


def _frame(series: Iterable[dict]) -> pd.DataFrame:
    return _sorted(_series_frame(series))


def _series_frame(series: Iterable[dict]) -> pd.DataFrame:
    frames = [pd.DataFrame(s["values"], columns=s["columns"]) for s in series if s.get("values")]
    if not frames:
        return pd.DataFrame(index=pd.Index([], dtype="int64", name="t_ns"))
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.rename(columns={"time": "t_ns"}).astype({"t_ns": "int64"})
    return frame.set_index("t_ns")


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.drop(columns=[c for c in ("site", "node", "device") if c in frame])
    return frame[~frame.index.duplicated(keep="last")].sort_index()
