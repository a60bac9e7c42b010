"""What every instrument driver is: open a transport, yield time-stamped readings, say how it is doing.

A driver implements the protected ``_open``, ``_close`` and ``_read`` (python-can's template
pattern); the public ``read`` adds what all drivers share: reconnecting when the port vanishes,
counting it, and never raising on a wire fault. Time stamps are taken on this machine at
acquisition from the instrument's ``clock`` (``instruments.clock``: wall time spaced by the
monotonic clock, strictly increasing, steps of the wall clock followed and flagged, samples taken
while it is not synchronised flagged); a driver stamps a sample with ``stamp()`` and gives it the
stamp's flags.

Threads: ``read`` is called by one thread (the publisher's acquisition thread); control methods
of a driver (switching a load, writing a setting) may come from another, and each driver
serialises its transport itself. ``health`` may be updated from any of them and is read as a
``snapshot()``, never iterated live.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from soclab.edge.instruments.clock import AcquisitionClock, Stamp

Value = float | int | bool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample: acquisition time (ns since the epoch), values by unit-suffixed name, flags."""

    t_ns: int
    values: dict[str, Value]
    flags: tuple[str, ...] = ()


class InstrumentError(Exception):
    """Base of the drivers' errors."""


class ConnectionLost(InstrumentError):
    """The transport went away (USB unplugged, port closed); ``read`` reopens it."""


class DeviceError(InstrumentError):
    """The instrument answered a request with an error."""


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """A copy of a driver's health at one moment, for the status topic."""

    counters: Mapping[str, int]
    gauges: Mapping[str, float | None]
    last_error: str | None


class Health:
    """What a driver reports in the status topic: counters, gauges and the last error.

    Any thread may update it (the acquisition thread reading, another one commanding); readers
    take a ``snapshot()`` or copies (``counters``, ``gauges``), so nobody iterates a dict that
    another thread is extending.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._gauges: dict[str, float | None] = {}
        self._last_error: str | None = None

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def set_gauge(self, name: str, value: float | None) -> None:
        with self._lock:
            self._gauges[name] = value

    def gauge(self, name: str) -> float | None:
        with self._lock:
            return self._gauges.get(name)

    @property
    def last_error(self) -> str | None:
        with self._lock:
            return self._last_error

    @last_error.setter
    def last_error(self, text: str | None) -> None:
        with self._lock:
            self._last_error = text

    @property
    def counters(self) -> Counter[str]:
        """A copy (missing names read 0)."""
        with self._lock:
            return Counter(self._counters)

    @property
    def gauges(self) -> dict[str, float | None]:
        """A copy."""
        with self._lock:
            return dict(self._gauges)

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            return HealthSnapshot(dict(self._counters), dict(self._gauges), self._last_error)


class Instrument(ABC):
    """An instrument driver. ``kind`` is the InfluxDB measurement of its samples."""

    kind: ClassVar[str]
    reopen_backoff_s: tuple[float, float] = (0.2, 5.0)

    def __init__(self) -> None:
        self.health = Health()
        self.clock = AcquisitionClock()  # the publisher gives it its synchronisation probe
        self._is_open = False
        self._next_open = 0.0
        self._backoff = self.reopen_backoff_s[0]
        # Told, on the reading thread, when the transport (re)opened (before any reading) and when
        # it was lost: the publisher's control hosting (``soclab.edge.runs.hosting``) makes the
        # instrument safe at every open and stops a run whose instrument went away.
        self.on_open: Callable[[], None] | None = None
        self.on_lost: Callable[[str], None] | None = None

    # --- what a driver implements -------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None:
        """Open the transport and learn the instrument's identity. Raise ConnectionLost if absent."""

    @abstractmethod
    def _close(self) -> None:
        """Release the transport; must not raise."""

    @abstractmethod
    def _read(self, timeout: float) -> list[Reading]:
        """Return readings acquired within ``timeout`` seconds (maybe none). Raise ConnectionLost."""

    def identity(self) -> Identity:
        """Model, serial number, firmware, ratings: what the device told about itself."""
        return {}

    # --- shared behaviour --------------------------------------------------------------------
    def open(self) -> None:
        """Open now; a missing device raises ConnectionLost (``read`` retries it later)."""
        self._open()
        self._is_open = True
        self._backoff = self.reopen_backoff_s[0]
        self.health.last_error = None
        if self.on_open is not None:
            self.on_open()

    def close(self) -> None:
        if self._is_open:
            self._is_open = False
            self._close()

    def __enter__(self) -> Instrument:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, timeout: float = 1.0) -> list[Reading]:
        """Readings since the last call; never raises on a wire fault, reopens the port instead."""
        if not self._is_open and not self._try_reopen(timeout):
            return []
        try:
            readings = self._read(timeout)
        except ConnectionLost as exc:
            self._lost(exc)
            return []
        self.health.count("samples_read", len(readings))
        return readings

    def stamp(self) -> Stamp:
        """A sample's time stamp and the flags it gives the sample (see the module doc)."""
        return self._clock_health(self.clock.stamp())

    def _clock_health(self, stamp: Stamp) -> Stamp:
        """Count a step the clock found; keep the gauge ``clock_synchronised`` (1 or 0, once known)."""
        if stamp.step_ns:
            self.health.count("clock_steps")
        in_sync = self.clock.in_sync
        if in_sync is not None:
            self.health.set_gauge("clock_synchronised", float(in_sync))
        return stamp

    def _lost(self, exc: Exception) -> None:
        log.warning("instrument=%s event=connection_lost error=%r", self.kind, str(exc))
        self.health.count("connection_losses")
        self.health.last_error = f"connection lost: {exc}"
        self._is_open = False
        self._close()
        self._next_open = time.monotonic()
        if self.on_lost is not None:
            self.on_lost(str(exc))

    def _try_reopen(self, timeout: float) -> bool:
        wait = self._next_open - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, timeout))
            return False
        try:
            self._open()
        except Exception as exc:  # absent, or refusing to open (a pty's termios error): retry later
            self.health.count("open_failures")
            self.health.last_error = f"cannot open: {type(exc).__name__}: {exc}"
            if not isinstance(exc, ConnectionLost):
                log.warning("instrument=%s event=open_failed error=%r", self.kind, self.health.last_error)
            self._next_open = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.reopen_backoff_s[1])
            return False
        self._is_open = True
        self._backoff = self.reopen_backoff_s[0]
        self.health.last_error = None  # what went wrong before is over: the status must not say otherwise
        if self.health.counters["connection_losses"]:
            self.health.count("port_reopens")
        log.info("instrument=%s event=reopened", self.kind)
        if self.on_open is not None:
            self.on_open()
        return True


Identity = dict[str, str | float | int | bool | None]
