"""What acquisition hands the spool: written at once, or held in memory while the disk refuses.

When the spool's filesystem is full (or turns read-only, or fails), ``Spool.append`` raises and
nothing of that append is written. Acquisition must not stop for it, and what is already spooled
stays where it is (a failed append changes nothing, and the sender goes on publishing it). So
the readings wait here, in order, up to ``hold_max_samples`` (beyond that the oldest held ones
are dropped, counted in ``lost`` and logged: a sample gets its sequence number only when it is
written, so a dropped one leaves no hole to see downstream, only this count). Every
``retry_s`` the held readings are written again, oldest first, in chunks; once the disk takes
them, the newest readings follow and all is as before, by itself.

Loud: the first failure is logged as an error (``event=spool_unwritable``), then a reminder every
minute while it lasts, and ``event=spool_writable_again`` with how long it lasted and how many
readings waited; ``state()`` gives the status its gauges, counters and last error.

Threads: ``put`` is called by the acquisition thread, ``state`` by the sender; both lock.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from soclab.edge.instruments.base import Reading
from soclab.edge.spool import Spool

log = logging.getLogger(__name__)

_CHUNK = 1000  # readings per append while catching up: a nearly full disk may take a small one
_REMIND_S = 60.0


@dataclass(frozen=True, slots=True)
class IntakeState:
    held: int  # readings waiting in memory
    lost: int  # readings dropped because more waited than hold_max_samples
    write_errors: int  # appends the spool refused
    unwritable_s: float | None  # how long the spool has refused appends (None: it takes them)
    error: str | None  # why, while it does


class SpoolIntake:
    def __init__(
        self,
        spool: Spool,
        *,
        hold_max_samples: int,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if hold_max_samples < 1:
            raise ValueError("spool hold_max_samples must be at least 1")
        self.spool = spool
        self.hold_max_samples = hold_max_samples
        self.retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._held: collections.deque[Reading] = collections.deque()
        self._lost = 0
        self._write_errors = 0
        self._failing_since: float | None = None
        self._error: str | None = None
        self._next_try = 0.0
        self._next_reminder = 0.0
        self._held_most = 0

    def put(self, readings: Sequence[Reading]) -> int:
        """Spool ``readings`` (maybe none: then only catch up if due); returns how many were written."""
        with self._lock:
            if not self._held:
                if not readings:
                    return 0
                try:
                    self.spool.append(readings)
                    return len(readings)
                except sqlite3.Error as exc:
                    self._refused(exc)
            self._hold(readings)
            if self._clock() < self._next_try:
                return 0
            return self._catch_up()

    def close(self) -> int:
        """A last try at writing what is held; returns how many readings are lost with it (logged)."""
        with self._lock:
            if self._held:
                self._catch_up()
            left = len(self._held)
            if left:
                log.error("event=samples_lost_at_stop count=%d reason=%r", left, self._error)
            return left

    def state(self) -> IntakeState:
        with self._lock:
            since = self._failing_since
            return IntakeState(
                held=len(self._held),
                lost=self._lost,
                write_errors=self._write_errors,
                unwritable_s=None if since is None else round(self._clock() - since, 3),
                error=self._error,
            )

    # --- inside the lock ------------------------------------------------------------------------
    def _hold(self, readings: Sequence[Reading]) -> None:
        self._held.extend(readings)
        self._held_most = max(self._held_most, len(self._held))
        over = len(self._held) - self.hold_max_samples
        if over > 0:
            for _ in range(over):
                self._held.popleft()
            self._lost += over
            log.error(
                "event=samples_lost count=%d lost_total=%d reason='the spool refuses writes and %d "
                "readings wait in memory already'",
                over,
                self._lost,
                self.hold_max_samples,
            )

    def _catch_up(self) -> int:
        written = 0
        while self._held:
            chunk = [self._held[i] for i in range(min(_CHUNK, len(self._held)))]
            try:
                self.spool.append(chunk)
            except sqlite3.Error as exc:
                self._refused(exc)
                return written
            for _ in chunk:
                self._held.popleft()
            written += len(chunk)
        if self._failing_since is not None:
            log.warning(
                "event=spool_writable_again after_s=%.1f readings_held_most=%d written_now=%d lost=%d",
                self._clock() - self._failing_since,
                self._held_most,
                written,
                self._lost,
            )
        self._failing_since = self._error = None
        self._held_most = 0
        return written

    def _refused(self, exc: sqlite3.Error) -> None:
        now = self._clock()
        self._write_errors += 1
        self._next_try = now + self.retry_s
        self._error = f"spool: {exc}"
        if self._failing_since is None:
            self._failing_since = now
            self._next_reminder = now + _REMIND_S
            log.error(
                "event=spool_unwritable error=%r: readings wait in memory (at most %d) until it "
                "takes them again",
                str(exc),
                self.hold_max_samples,
            )
        elif now >= self._next_reminder:
            self._next_reminder = now + _REMIND_S
            log.error(
                "event=spool_unwritable error=%r for_s=%.0f held=%d lost=%d",
                str(exc),
                now - self._failing_since,
                len(self._held),
                self._lost,
            )
