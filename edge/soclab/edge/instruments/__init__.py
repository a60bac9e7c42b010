"""Instrument drivers by kind, imported only when asked for (python-can's backend table).

A missing optional library (the LabJack's LJM and its native ``libLabJackM.so``) therefore never
breaks importing this package or the other drivers; asking for that driver raises
``DriverUnavailable`` saying what is missing.
"""

from __future__ import annotations

import importlib

from soclab.edge.instruments.base import Instrument, InstrumentError

DRIVERS: dict[str, str] = {
    "mppt": "soclab.edge.instruments.libresolar_mppt.driver:MpptDriver",
    "eload": "soclab.edge.instruments.ea_el3000.driver:EaLoadDriver",
    "labjack": "soclab.edge.instruments.labjack_t7.driver:LabJackDriver",
}


class UnknownKind(InstrumentError, LookupError):
    """No driver is registered for this instrument kind."""


class DriverUnavailable(InstrumentError, ImportError):
    """The driver exists but cannot be imported here (an optional library is missing)."""


def kinds() -> tuple[str, ...]:
    """The instrument kinds a driver is registered for."""
    return tuple(DRIVERS)


def driver_class(kind: str) -> type[Instrument]:
    """The driver class for ``kind`` (``"mppt"``, ``"eload"``, ``"labjack"``), imported now."""
    try:
        target = DRIVERS[kind]
    except KeyError:
        raise UnknownKind(f"no driver for instrument kind {kind!r}; known: {', '.join(DRIVERS)}") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise DriverUnavailable(
            f"the {kind!r} driver ({module_name}) cannot be imported: {missing!r} is missing ({exc})"
        ) from exc
    except OSError as exc:  # e.g. a native library that fails to load at import
        raise DriverUnavailable(f"the {kind!r} driver ({module_name}) cannot load a library: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Instrument)):
        raise DriverUnavailable(f"{target} is not an Instrument subclass")
    return cls


__all__ = ["DRIVERS", "DriverUnavailable", "Instrument", "UnknownKind", "driver_class", "kinds"]
