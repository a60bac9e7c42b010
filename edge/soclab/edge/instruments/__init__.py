"""The registry of instrument kinds: the one list that everything else derives from.

The publisher checks ``source.kind`` against it and builds its driver from it; the simulator
command, ``make lab`` (its InfluxQL too), the live view and the analysis read it; the data
schema's enum and the Ansible role's table of kinds are tested against it. A kind is declared
in its own folder (``KIND`` in ``instruments/<maker>_<model>/__init__.py``, see ``kinds.Kind``);
adding one is that folder and one line below.

Drivers are imported only when asked for (python-can's backend table), so a missing optional
library (the LabJack's LJM and its native ``libLabJackM.so``) never breaks importing this
package or the other drivers; asking for that driver raises ``DriverUnavailable``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from soclab.edge.instruments.base import Instrument, InstrumentError
from soclab.edge.instruments.kinds import Field, Kind, Options

_FOLDERS = (
    "soclab.edge.instruments.libresolar_mppt",
    "soclab.edge.instruments.ea_el3000",
    "soclab.edge.instruments.labjack_t7",
)


class UnknownKind(InstrumentError, LookupError):
    """No instrument kind of that name is registered."""


class DriverUnavailable(InstrumentError, ImportError):
    """The driver exists but cannot be imported here (an optional library is missing)."""


def _declared(folder: str) -> Kind:
    declared = getattr(importlib.import_module(folder), "KIND", None)
    if not isinstance(declared, Kind):
        raise TypeError(f"{folder} declares no KIND")
    return declared


KINDS: Mapping[str, Kind] = {k.name: k for k in map(_declared, _FOLDERS)}


def kinds() -> tuple[str, ...]:
    """The names of the registered kinds (``mppt``, ``eload``, ``labjack``)."""
    return tuple(KINDS)


def kind(name: str) -> Kind:
    """The declaration of kind ``name``; UnknownKind if there is none."""
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(f"no instrument kind {name!r}; known: {', '.join(KINDS)}") from None


def driver_class(name: str) -> type[Instrument]:
    """The driver class of kind ``name``, imported now."""
    target = kind(name).driver
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise DriverUnavailable(
            f"the {name!r} driver ({module_name}) cannot be imported: {missing!r} is missing ({exc})"
        ) from exc
    except OSError as exc:  # e.g. a native library that fails to load at import
        raise DriverUnavailable(f"the {name!r} driver ({module_name}) cannot load a library: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Instrument)):
        raise DriverUnavailable(f"{target} is not an Instrument subclass")
    return cls


def build(name: str, options: Options) -> Instrument:
    """The driver of kind ``name`` built from its typed options (``Kind.load_options``)."""
    expected = kind(name).options
    if not isinstance(options, expected):
        raise TypeError(f"the {name!r} driver takes {expected.__name__}, got {type(options).__name__}")
    driver: Instrument = driver_class(name)(options)  # type: ignore[call-arg]
    return driver


__all__ = [
    "KINDS",
    "DriverUnavailable",
    "Field",
    "Instrument",
    "Kind",
    "Options",
    "UnknownKind",
    "build",
    "driver_class",
    "kind",
    "kinds",
]
