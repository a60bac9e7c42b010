"""Sliding windows over the monitor's clock: rates, and lags with their median and maximum."""

from __future__ import annotations

from collections import deque


class RateWindow:
    """Events per second over the last ``window_s`` (over less while the monitor is younger)."""

    def __init__(self, window_s: float = 5.0, maxlen: int = 4096) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque(maxlen=maxlen)
        self._started: float | None = None

    def add(self, now: float, count: int = 1) -> None:
        if self._started is None:
            self._started = now
        self._events.append((now, count))

    def rate(self, now: float) -> float:
        events = self._events
        while events and now - events[0][0] > self.window_s:
            events.popleft()
        if self._started is None:
            return 0.0
        span = min(self.window_s, max(1.0, now - self._started))
        return sum(n for _, n in events) / span


class CounterRate:
    """The rate of a monotonic counter reported now and then (a bridge's ``points_written``)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._points: deque[tuple[float, int]] = deque(maxlen=256)

    def add(self, now: float, value: int) -> None:
        if self._points and value < self._points[-1][1]:
            self._points.clear()  # the process restarted and counts from 0 again
        self._points.append((now, value))

    def rate(self, now: float) -> float | None:
        points = self._points
        while len(points) > 2 and now - points[1][0] > self.window_s:
            points.popleft()
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            return None
        return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


class LagWindow:
    """Lags (seconds) of samples over the last ``window_s``: weighted median and maximum.

    Each entry stands for ``weight`` samples: ``typical`` is their middle lag, ``worst`` the
    oldest one's. The median is taken over samples, not messages.
    """

    def __init__(self, window_s: float = 60.0, maxlen: int = 20_000) -> None:
        self.window_s = window_s
        self._entries: deque[tuple[float, float, float, int]] = deque(maxlen=maxlen)

    def add(self, now: float, typical_s: float, worst_s: float, weight: int) -> None:
        self._entries.append((now, typical_s, worst_s, weight))

    def _prune(self, now: float) -> None:
        while self._entries and now - self._entries[0][0] > self.window_s:
            self._entries.popleft()

    def median_max(self, now: float) -> tuple[float, float] | None:
        self._prune(now)
        if not self._entries:
            return None
        ordered = sorted((typical, weight) for _, typical, _, weight in self._entries)
        half = sum(w for _, w in ordered) / 2
        running = 0
        median = ordered[-1][0]
        for typical, weight in ordered:
            running += weight
            if running >= half:
                median = typical
                break
        return median, max(worst for _, _, worst, _ in self._entries)
