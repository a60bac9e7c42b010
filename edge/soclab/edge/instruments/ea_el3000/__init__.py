"""EA Elektro-Automatik EL 3000 A electronic loads (the lab's EL 3160-60A): codec, driver, simulator.

The simulator is not imported here, so the driver does not pull in the simulated lab.
"""

from soclab.edge.instruments.ea_el3000.driver import EaLoadDriver, NoAnswer
from soclab.edge.instruments.ea_el3000.telegram import (
    AccessDenied,
    ChecksumMismatch,
    EaDeviceError,
    TelegramError,
    UnknownObject,
    WrongObjectLength,
)

__all__ = [
    "AccessDenied",
    "ChecksumMismatch",
    "EaDeviceError",
    "EaLoadDriver",
    "NoAnswer",
    "TelegramError",
    "UnknownObject",
    "WrongObjectLength",
]
