"""What the monitor knows about each instrument kind: the values it shows first, and units.

This is the monitor's only dependency on the instrument registry (``soclab.edge.instruments``),
and it takes only the registry's metadata: the registry imports a driver only when asked for one,
so neither pyserial nor LabJack's LJM is imported here (``tests/tools/test_watch_kinds.py``
checks it). The headline fields and units are the registry's (``Kind.headline``, ``Field.unit``).

For a kind or a value the registry does not know (a newer device than this monitor), the unit
comes from the wire contract itself: a value's name ends in its unit (``bat_v``, ``bat_a``,
``soc_pct``, ``int_degc``; ``schemas/soclab/wire/schema/data.v1.json``).
"""

from __future__ import annotations

from soclab.edge.instruments import KINDS
from soclab.edge.instruments import kinds as registered_kinds

DEFAULT_HEADLINE = ("bat_v", "bat_a")  # for a kind the registry does not know

# Name suffix -> unit, longest suffixes first where one ends another ("_wh" before "_h").
_UNITS: tuple[tuple[str, str], ...] = (
    ("_degc", "°C"),
    ("_pct", "%"),
    ("_ohm", "Ω"),
    ("_ppm", "ppm"),
    ("_ah", "Ah"),
    ("_wh", "Wh"),
    ("_hz", "Hz"),
    ("_ms", "ms"),
    ("_v", "V"),
    ("_a", "A"),
    ("_w", "W"),
    ("_s", "s"),
)
_WHOLE_NAMES = {"ah": "Ah", "wh": "Wh"}  # a unit alone (the e-load's Ah counter is "ah")


def kinds() -> tuple[str, ...]:
    """The instrument kinds of the registry."""
    return registered_kinds()


def headline(kind: str | None) -> tuple[str, ...]:
    """The values shown first for a device of this kind (a kind the monitor does not know: bat_v, bat_a)."""
    known = KINDS.get(kind or "")
    return known.headline if known is not None else DEFAULT_HEADLINE


def unit_of(name: str, kind: str | None = None) -> str:
    """The unit of value ``name`` ("" for codes, counts and states, e.g. ``chg_state``): the
    registry's for a field of a known kind, else the one its name ends in."""
    known = KINDS.get(kind or "")
    field = known.field(name) if known is not None else None
    if field is not None:
        return field.unit or ""
    if name in _WHOLE_NAMES:
        return _WHOLE_NAMES[name]
    for suffix, unit in _UNITS:
        if name.endswith(suffix):
            return unit
    return ""
