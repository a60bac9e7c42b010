"""What an instrument kind is: the one declaration the publisher, the simulators, the lab, the
live view and the analysis read (the registry in ``soclab.edge.instruments`` lists them).

Each instrument folder (``instruments/<maker>_<model>/``) declares its ``KIND`` in its
``__init__``, which imports nothing heavy: its typed options and its field names. The driver is
named by ``"module:Class"`` and imported only when asked for, so a missing vendor library never
breaks the import of the others (python-can's backend table).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from soclab.wire.settings import load_section

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # data.v1.json's value names; kinds are measurements too


class Options(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every driver's typed options: the ``[instrument]`` table of a publisher's file."""


@dataclass(frozen=True, slots=True)
class Field:
    """A value in a kind's samples: its name (the unit is its suffix), unit, and what it is."""

    name: str
    unit: str | None  # None: a code, a count or a flag
    description: str

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"field name {self.name!r} must match {NAME.pattern}")


@dataclass(frozen=True)
class Kind:
    """One kind of instrument: ``name`` is ``source.kind`` in messages and the InfluxDB measurement.

    ``fields`` lists every value its samples may carry (with units, for whoever shows them);
    ``headline`` the few that a live view or a report shows first. ``transport`` says how the
    Pi reaches it (``serial``: a tty the ``port`` option names; ``ljm``: LabJack's library),
    ``usb_ids`` how udev recognises it. ``simulator`` names its wire simulator (development only,
    ``soclab.dev``; None when it is simulated behind a library instead).
    """

    name: str
    title: str
    options: type[Options]
    driver: str  # "module:Class", an Instrument subclass taking (options)
    fields: tuple[Field, ...]
    headline: tuple[str, ...]
    transport: Literal["serial", "ljm"]
    usb_ids: tuple[str, ...] = ()
    simulator: str | None = None  # "module:Class" of a soclab.dev.sim.simulator.WireSimulator
    fields_note: str = ""  # e.g. when the configuration decides the fields

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"kind name {self.name!r} must match {NAME.pattern}")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: a field is listed twice")
        unknown = set(self.headline) - set(names)
        if unknown or not self.headline:
            raise ValueError(f"{self.name}: headline fields {sorted(unknown)} are not among its fields")

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    def load_options(self, table: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Options:
        """The typed options from an ``[instrument]`` table and ``SOCLAB_INSTRUMENT_*`` variables
        (raises ``soclab.wire.settings.ConfigError`` naming the setting)."""
        return load_section(self.options, table, where="instrument", env=env, prefix="SOCLAB_INSTRUMENT_")
