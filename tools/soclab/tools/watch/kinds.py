"""What the monitor knows about each instrument kind: the values it shows first, and units.

This is the monitor's only dependency on the instrument registry (``soclab.edge.instruments``),
and it takes only the registry's metadata: the registry imports a driver only when asked for one,
so neither pyserial nor LabJack's LJM is imported here (``tests/tools/test_watch_kinds.py``
checks it). Until the registry carries each kind's headline fields, ``HEADLINE`` names them;
a test ties its kinds to the registry's.

Units come from the wire contract itself: a value's name ends in its unit (``bat_v``, ``bat_a``,
``soc_pct``, ``int_degc``; ``schemas/soclab/wire/schema/data.v1.json``).
"""

from __future__ import annotations

from soclab.edge.instruments import kinds as registered_kinds

# What a person looks at first, per kind, in this order; the other values follow.
HEADLINE: dict[str, tuple[str, ...]] = {
    "mppt": ("bat_v", "bat_a", "soc_pct", "chg_state"),
    "eload": ("bat_v", "bat_a", "ah"),
    "labjack": ("bat_v", "bat_a"),
}
DEFAULT_HEADLINE = ("bat_v", "bat_a")

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
    return HEADLINE.get(kind or "", DEFAULT_HEADLINE)


def unit_of(name: str) -> str:
    """The unit a value's name ends in ("" for codes, counts and states, e.g. ``chg_state``)."""
    if name in _WHOLE_NAMES:
        return _WHOLE_NAMES[name]
    for suffix, unit in _UNITS:
        if name.endswith(suffix):
            return unit
    return ""
