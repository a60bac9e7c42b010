"""Read a recording: a Grafana CSV export ("series to columns"), each device's samples in time order.

The file, as ``soclab.dev``'s ``data/lab-2021-05-28`` is: a ``Time`` column in epoch milliseconds
(export with "Formatted data" off) and one column per series (``columns`` says which device and
field each becomes); an empty cell means no sample at that time; rows need not be sorted. Series
of one device at the same time become one sample. The recording's time is when the old server
received a sample (whole seconds), the best acquisition time it has.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from soclab.tools.replay.columns import Column, ColumnError, Mapping, Plan, Selector, Target, plan

Value = float | bool


class RecordingError(ValueError):
    """A recording this tool cannot read; the message says where."""


@dataclass(frozen=True, slots=True)
class Sample:
    t_ns: int
    values: dict[str, Value]


@dataclass(frozen=True, slots=True)
class Recording:
    """Each device's samples in time order, its kind, and the columns left out (and why)."""

    samples: dict[str, list[Sample]]
    kinds: dict[str, str]
    plan: Plan

    @property
    def total(self) -> int:
        return sum(len(s) for s in self.samples.values())


def read_grafana_csv(
    path: Path | str,
    *,
    maps: Sequence[Mapping] = (),
    skips: Sequence[Selector] = (),
    skip_unknown: bool = False,
) -> Recording:
    """Read the export (UTF-8, with or without BOM); RecordingError says what and where."""
    with open(path, encoding="utf-8-sig", newline="") as file:
        rows = csv.reader(file)
        try:
            return _read(path, rows, maps, skips, skip_unknown)
        except csv.Error as exc:  # e.g. a cell larger than the csv module's limit
            raise RecordingError(f"{path}:{rows.line_num}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise RecordingError(f"{path}: not UTF-8 near line {rows.line_num + 1} ({exc.reason})") from None


def _read(
    path: Path | str,
    rows: Iterator[list[str]],
    maps: Sequence[Mapping],
    skips: Sequence[Selector],
    skip_unknown: bool,
) -> Recording:
    try:
        header = next(rows)
    except StopIteration:
        raise RecordingError(f"{path}: empty file") from None
    if not header or header[0] != "Time":
        raise RecordingError(f"{path}: the first column must be 'Time', not {header[:1]}")
    try:
        columns = plan(
            [Column.parse(h) for h in header[1:]], maps=maps, skips=skips, skip_unknown=skip_unknown
        )
    except ColumnError as exc:
        raise RecordingError(f"{path}: {exc}") from None
    used = [(i, t) for i, t in enumerate(columns.targets, start=1) if t is not None]
    if not used:
        raise RecordingError(f"{path}: no column left to replay")
    by_device: dict[str, dict[int, dict[str, Value]]] = {}
    for line, row in enumerate(rows, start=2):
        if not row:
            continue  # a blank line (the export ends with one)
        if len(row) != len(header):
            raise RecordingError(f"{path}:{line}: {len(row)} cells, the header has {len(header)}")
        try:
            t_ns = int(row[0]) * 1_000_000
        except ValueError:
            raise RecordingError(
                f"{path}:{line}: time {row[0][:40]!r} is not epoch milliseconds "
                "(export from Grafana with 'Formatted data' off)"
            ) from None
        for index, target in used:
            cell = row[index]
            if cell.strip():
                _add(by_device, target, t_ns, _number(cell, path, line), path, line)
    kinds = {t.device: t.kind for _, t in used}
    samples = {
        device: [Sample(t, values) for t, values in sorted(times.items())]
        for device, times in by_device.items()
    }
    return Recording(samples, {d: kinds[d] for d in samples}, columns)


def _number(cell: str, path: Path | str, line: int) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise RecordingError(f"{path}:{line}: {cell[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise RecordingError(f"{path}:{line}: {cell!r} is not a finite number")
    return value


def _add(
    by_device: dict[str, dict[int, dict[str, Value]]],
    target: Target,
    t_ns: int,
    value: float,
    path: Path | str,
    line: int,
) -> None:
    values = by_device.setdefault(target.device, {}).setdefault(t_ns, {})
    if values.get(target.field, value) != value:
        raise RecordingError(f"{path}:{line}: {target.device} {target.field} recorded twice at {t_ns} ns")
    values[target.field] = value
