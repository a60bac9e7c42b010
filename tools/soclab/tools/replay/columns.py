"""Which soclab device and field each column of a recording becomes.

A Grafana "series to columns" export names each column after its series and labels, e.g.
``Bat_V {device="mppt-1210-hus", name="V"}``. The ``device`` label says which instrument
measured (``DEVICE_LABELS``, the labels of the lab's 2021 database), the series name what:
``SERIES`` per kind, with every item the MPPT's firmware publishes under its ThingSet name (read
from the MPPT driver's own table, so an MPPT export maps whole) and the old lab's names for the
LabJack and the load. The user maps or skips any other column (``--map``, ``--skip``); a column
that nothing maps stops the replay before anything is sent, naming every such column, unless the
user asked to skip unknown columns.

Selectors (``--skip``, the left side of ``--map``) are ``SERIES`` (any device label) or
``SERIES@LABEL``; targets are ``DEVICE.FIELD``, or ``KIND:DEVICE.FIELD`` for a device whose name
is not an instrument kind.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from soclab.edge.instruments.libresolar_mppt.fields import DIALECTS
from soclab.wire import DATA_SCHEMA
from soclab.wire.messages import schema_document
from soclab.wire.topics import Topic, TopicError

# The lab's 2021 database: its device labels -> (soclab device, kind).
DEVICE_LABELS: dict[str, tuple[str, str]] = {
    "mppt-1210-hus": ("mppt", "mppt"),
    "470023670": ("labjack", "labjack"),  # the LabJack T7's serial number
    "EA-EL-3060": ("eload", "eload"),
}
_FIELD = re.compile(r"[a-z][a-z0-9_]{0,63}")
_RESERVED = frozenset({"seq", "flags"})  # the bridge's own fields
_HEADER = re.compile(r"^(?P<series>[^{]+?)\s*\{(?P<labels>.*)\}$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


class ColumnError(ValueError):
    """A column that cannot be replayed as asked, or a selector or target that is malformed."""


@cache
def kinds() -> tuple[str, ...]:
    """The instrument kinds of the wire contract (the data schema's enum)."""
    source = schema_document(DATA_SCHEMA)["$defs"]["source"]
    return tuple(source["properties"]["kind"]["enum"])


@cache
def series_fields(kind: str) -> dict[str, str]:
    """Series name -> soclab field for one kind's exports."""
    if kind == "mppt":
        return dict(DIALECTS["v21"].keys)  # Bat_V, Bat_A, SOC_pct, ... as the firmware names them
    if kind == "labjack":
        return {"Bat_voltage": "bat_v", "Bat_current": "bat_a"}
    if kind == "eload":
        return {"Bat_V": "bat_v", "Bat_A": "bat_a"}
    return {}


@dataclass(frozen=True, slots=True)
class Target:
    """Where one column goes: a device (topic level), its kind, a field name."""

    device: str
    kind: str
    field: str

    def __str__(self) -> str:
        return f"{self.device}.{self.field}"

    @classmethod
    def parse(cls, text: str) -> Target:
        """``DEVICE.FIELD`` (the device's name is its kind) or ``KIND:DEVICE.FIELD``."""
        kind, _, rest = text.rpartition(":")
        device, dot, field = rest.partition(".")
        if not dot:
            raise ColumnError(f"target {text!r}: expected DEVICE.FIELD or KIND:DEVICE.FIELD")
        kind = kind or device
        if kind not in kinds():
            raise ColumnError(
                f"target {text!r}: kind {kind!r} is not one of {', '.join(kinds())} "
                "(name it: KIND:DEVICE.FIELD)"
            )
        try:
            Topic("site", "node", device)
        except TopicError as exc:
            raise ColumnError(f"target {text!r}: {exc}") from None
        if not _FIELD.fullmatch(field) or field in _RESERVED:
            raise ColumnError(
                f"target {text!r}: field {field!r} must match [a-z][a-z0-9_]* and not be seq or flags"
            )
        return cls(device, kind, field)


@dataclass(frozen=True, slots=True)
class Column:
    """A column of the export: its series and its device label ("" without one)."""

    series: str
    label: str
    header: str  # as the file writes it

    @classmethod
    def parse(cls, header: str) -> Column:
        match = _HEADER.match(header)
        if not match:
            return cls(header.strip(), "", header)
        labels = dict(_LABEL.findall(match["labels"]))
        return cls(match["series"].strip(), labels.get("device", ""), header)

    def __str__(self) -> str:
        return f"{self.series}@{self.label}" if self.label else self.series


@dataclass(frozen=True, slots=True)
class Selector:
    """``SERIES`` (any device label) or ``SERIES@LABEL``."""

    series: str
    label: str | None

    @classmethod
    def parse(cls, text: str) -> Selector:
        series, at, label = text.partition("@")
        if not series.strip():
            raise ColumnError(f"column {text!r}: expected SERIES or SERIES@LABEL")
        return cls(series.strip(), label if at else None)

    def matches(self, column: Column) -> bool:
        return column.series == self.series and self.label in (None, column.label)

    def __str__(self) -> str:
        return self.series if self.label is None else f"{self.series}@{self.label}"


@dataclass(frozen=True, slots=True)
class Mapping:
    """``SERIES[@LABEL]=[KIND:]DEVICE.FIELD``: the user's target for matching columns."""

    selector: Selector
    target: Target

    @classmethod
    def parse(cls, text: str) -> Mapping:
        left, equals, right = text.rpartition("=")
        if not equals:
            raise ColumnError(f"mapping {text!r}: expected SERIES[@LABEL]=[KIND:]DEVICE.FIELD")
        return cls(Selector.parse(left), Target.parse(right))


@dataclass(frozen=True, slots=True)
class Plan:
    """Each column's target (None: skipped) and why the skipped ones are."""

    targets: tuple[Target | None, ...]
    skipped: tuple[tuple[Column, str], ...]


def plan(
    columns: Sequence[Column],
    *,
    maps: Sequence[Mapping] = (),
    skips: Sequence[Selector] = (),
    skip_unknown: bool = False,
) -> Plan:
    """Resolve every column: the user's skips, then their mappings, then the known exports.

    Raises ColumnError naming every column nothing maps (unless ``skip_unknown``), and a
    ``--map`` or ``--skip`` that matches no column (a typo must not pass unnoticed).
    """
    targets: list[Target | None] = []
    skipped: list[tuple[Column, str]] = []
    unknown: list[Column] = []
    for column in columns:
        if any(s.matches(column) for s in skips):
            targets.append(None)
            skipped.append((column, "--skip"))
            continue
        mapped = next((m.target for m in maps if m.selector.matches(column)), None)
        target = mapped or _known(column)
        if target is None:
            unknown.append(column)
            targets.append(None)
            skipped.append((column, "unknown"))
        else:
            targets.append(target)
    unused = [
        repr(str(s)) for s in (*skips, *(m.selector for m in maps)) if not any(s.matches(c) for c in columns)
    ]
    if unused:
        raise ColumnError(f"no column matches {', '.join(unused)}; the columns: {_listing(columns)}")
    if unknown and not skip_unknown:
        raise ColumnError(
            f"{len(unknown)} column(s) nothing maps: {_listing(unknown)}. Map each "
            "(--map 'SERIES@LABEL=DEVICE.FIELD') or skip it (--skip 'SERIES@LABEL', or --skip-unknown)"
        )
    return Plan(tuple(targets), tuple(skipped))


def _known(column: Column) -> Target | None:
    device_kind = DEVICE_LABELS.get(column.label)
    if device_kind is None:
        return None
    device, kind = device_kind
    field = series_fields(kind).get(column.series)
    return Target(device, kind, field) if field else None


def _listing(columns: Sequence[Column]) -> str:
    return ", ".join(repr(str(c)) for c in columns)
