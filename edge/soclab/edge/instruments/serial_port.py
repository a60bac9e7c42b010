"""The serial transport every serial driver is given: pyserial's ``Serial`` in the lab, a
transcript in tests (``tests/transcript.py``), a pseudo-terminal in the simulated lab.

A driver never opens ``serial.Serial`` itself: it calls the ``SerialFactory`` it was given with
the port's name and line settings, so its logic is tested byte for byte without a device, a pty or
wall-clock waits (PyMeasure's adapters, the e-load driver's original seam).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import serial

# What a failing port raises: pyserial's own error, or the OS error underneath (EIO when unplugged).
SERIAL_ERRORS: tuple[type[Exception], ...] = (serial.SerialException, OSError)

EIGHTBITS, PARITY_NONE, PARITY_ODD, STOPBITS_ONE = serial.EIGHTBITS, serial.PARITY_NONE, serial.PARITY_ODD, 1


class SerialPort(Protocol):
    """What the drivers use of ``serial.Serial``."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes, /) -> int | None: ...

    def reset_input_buffer(self) -> None: ...

    def close(self) -> None: ...


SerialFactory = Callable[..., SerialPort]


def open_serial(port: str, baudrate: int, **settings: Any) -> SerialPort:
    """The real port: ``serial.Serial(port, baudrate, **settings)`` (timeouts, parity ...)."""
    ser: SerialPort = serial.Serial(port, baudrate, **settings)
    return ser
