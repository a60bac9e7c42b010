"""A synthetic instrument: readings at a steady rate, no wire; for publisher tests and benchmarks
that need volume rather than realism."""

from __future__ import annotations

import time
from typing import ClassVar

from soclab.edge.instruments.base import Instrument, Reading


class SteadyInstrument(Instrument):
    """``rate_hz`` readings per second of ``bat_v``, stamped by the base's acquisition clock."""

    kind: ClassVar[str] = "labjack"

    def __init__(self, rate_hz: float = 10.0, kind: str = "labjack") -> None:
        super().__init__()
        self.kind = kind  # type: ignore[misc]  # stands in for any instrument
        self.rate_hz = rate_hz
        self._next = 0.0

    def _open(self) -> None:
        self._next = time.monotonic()

    def _close(self) -> None:
        pass

    def _read(self, timeout: float) -> list[Reading]:
        now = time.monotonic()
        if now < self._next:
            time.sleep(min(timeout, self._next - now))
        due = int((time.monotonic() - self._next) * self.rate_hz) + 1
        self._next += due / self.rate_hz
        stamps = [self.stamp() for _ in range(due)]
        return [Reading(stamp.t_ns, {"bat_v": 12.5}, stamp.flags) for stamp in stamps]
