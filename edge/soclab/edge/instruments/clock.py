"""The acquisition clock: wall time for time stamps, spaced by the monotonic clock.

A Raspberry Pi has no battery-backed clock. It boots with a stale time (fake-hwclock's, saved at
the last shutdown) and the time daemon steps it to the right time once it reaches a server,
maybe days later; a bad server or a person can step it back. Stamping with the wall clock alone
puts every step into the spacing of the data, and a guard that only keeps stamps increasing
squashes the hour after a backward step of an hour into nanoseconds.

So a stamp is ``anchor_wall + (monotonic - anchor_monotonic)``: CLOCK_MONOTONIC is never stepped,
and the time daemon's slewing moves it as it moves the wall clock, so the two differ only by the
steps. Each reading compares them; when they disagree by more than ``step_tolerance_ns``, the
wall clock has stepped: the clock re-anchors to it, counts and logs the step, and flags the first
stamp after it ``clock_step``. Spacing is true on both sides; the step is in the data once, and
marked. Within one anchoring, stamps strictly increase (``last + 1 ns`` only when two readings
fall in the same nanosecond); across a backward step they go back, by the step.

Synchronisation: the kernel knows whether a time daemon (chrony, ntpd, systemd-timesyncd)
disciplines the clock (``kernel_synchronised``: adjtimex's maximum error under 16 s, which is what
``timedatectl`` calls "System clock synchronized"). Stamps taken while it says no are flagged
``clock_unsynced``; it is asked at most once per ``sync_check_ns``. Without a probe (a driver used
on its own) nothing is flagged; the publisher gives one (``[clock] check_sync``).

Threads: a driver stamps from its reading thread and sometimes from a control call; the clock
locks itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

log = logging.getLogger(__name__)

STEP = "clock_step"
UNSYNCED = "clock_unsynced"
# How far wall and monotonic time may part before it counts as a step; so also how far a stamp
# may be ahead of the wall clock without one.
STEP_TOLERANCE_NS = 10_000_000


@dataclass(frozen=True, slots=True)
class Stamp:
    """A time stamp (ns since the epoch), the flags it gives a sample, and the step (ns, signed)
    found when it was taken (0: none)."""

    t_ns: int
    flags: tuple[str, ...] = ()
    step_ns: int = 0


class AcquisitionClock:
    """See the module doc. ``wall_ns``, ``monotonic_ns`` and ``synchronised`` are injectable."""

    def __init__(
        self,
        *,
        wall_ns: Callable[[], int] | None = None,
        monotonic_ns: Callable[[], int] | None = None,
        synchronised: Callable[[], bool | None] | None = None,
        step_tolerance_ns: int = STEP_TOLERANCE_NS,
        sync_check_ns: int = 1_000_000_000,
    ) -> None:
        self._wall = wall_ns or time.time_ns
        self._monotonic = monotonic_ns or time.monotonic_ns
        self.synchronised = synchronised
        self.step_tolerance_ns = step_tolerance_ns
        self.sync_check_ns = sync_check_ns
        self._lock = threading.Lock()
        wall, mono = self._pair()
        self._anchor = (wall, mono)
        self._last = 0
        self._step_pending = False
        self._in_sync: bool | None = None
        self._sync_checked: int | None = None
        self.steps = 0

    @property
    def in_sync(self) -> bool | None:
        """What the probe said last (None: no probe, or it cannot tell)."""
        with self._lock:
            return self._in_sync

    @property
    def last_ns(self) -> int:
        """The latest stamp given out (or told of with ``issued``)."""
        with self._lock:
            return self._last

    def read(self) -> Stamp:
        """The acquisition time now, without giving it out as a sample's stamp: ``stamp()`` after
        it still returns a later time. A step found here is reported here (``step_ns``, and the
        ``clock_step`` flag, which the caller puts on the first sample it stamps after it)."""
        with self._lock:
            t, step = self._now()
            self._step_pending = False
            return Stamp(t, self._flags(step), step)

    def stamp(self) -> Stamp:
        """A sample's time stamp: strictly after the last one of this anchoring."""
        with self._lock:
            t, step = self._now()
            if step == 0 and t <= self._last:
                t = self._last + 1
            self._last = t
            step_flagged = step != 0 or self._step_pending
            self._step_pending = False
            return Stamp(t, self._flags(step_flagged), step)

    def issued(self, t_ns: int) -> None:
        """A stamp computed elsewhere (a stream's scans, counted from its start) was given out."""
        with self._lock:
            self._last = max(self._last, t_ns)

    # --- inside the lock ------------------------------------------------------------------------
    def _now(self) -> tuple[int, int]:
        wall, mono = self._pair()
        anchor_wall, anchor_mono = self._anchor
        t = anchor_wall + (mono - anchor_mono)
        step = wall - t
        if abs(step) <= self.step_tolerance_ns:
            self._check_sync(mono)
            return t, 0
        self._anchor = (wall, mono)
        self._last += step  # the guard against equal stamps follows the new time line
        self.steps += 1
        self._step_pending = True
        log.warning("event=clock_step step_s=%.6f steps=%d", step / 1e9, self.steps)
        self._check_sync(mono, force=True)  # a time daemon steps the clock as it synchronises it
        return wall, step

    def _flags(self, step: int | bool) -> tuple[str, ...]:
        flags = (STEP,) if step else ()
        return (*flags, UNSYNCED) if self._in_sync is False else flags

    def _pair(self) -> tuple[int, int]:
        """The wall clock and the monotonic clock read together: a thread preempted between the
        two readings would look like a step, so a pair read across a pause is read again."""
        for _ in range(3):
            before = self._monotonic()
            wall = self._wall()
            after = self._monotonic()
            if after - before <= self.step_tolerance_ns // 4:
                break
        return wall, before + (after - before) // 2

    def _check_sync(self, mono: int, *, force: bool = False) -> None:
        if self.synchronised is None:
            return
        if not force and self._sync_checked is not None and mono - self._sync_checked < self.sync_check_ns:
            return
        self._sync_checked = mono
        in_sync = self.synchronised()
        if in_sync != self._in_sync:
            if in_sync is False:
                log.warning("event=clock_unsynchronised: samples are flagged %s until it is", UNSYNCED)
            elif in_sync and self._in_sync is False:
                log.info("event=clock_synchronised")
            self._in_sync = in_sync


# --- the kernel's view ---------------------------------------------------------------------------
_MAXERROR_SYNCED_US = 16_000_000  # the kernel's NTP_PHASE_LIMIT: past it, the clock is unsynchronised


class _Timex(ctypes.Structure):
    """The head of Linux's ``struct timex`` (room is left for the rest of it)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


@cache
def _adjtimex() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).adjtimex
    except (OSError, AttributeError):  # not Linux: no way to ask
        log.warning("event=clock_sync_unknown reason='no adjtimex here'")
        return None
    function.argtypes = [ctypes.POINTER(_Timex)]
    function.restype = ctypes.c_int
    return function


def kernel_synchronised() -> bool | None:
    """Whether the kernel says a time daemon disciplines the clock (None: cannot tell).

    ``adjtimex`` with no modes only reads; the kernel raises ``maxerror`` by 500 ppm a second
    while no daemon updates it and marks the clock unsynchronised past 16 s, as systemd's
    ``ntp_synced()`` reads it.
    """
    adjtimex = _adjtimex()
    if adjtimex is None:
        return None
    timex = _Timex()
    if adjtimex(ctypes.pointer(timex)) < 0:
        return None
    return bool(timex.maxerror < _MAXERROR_SYNCED_US)
