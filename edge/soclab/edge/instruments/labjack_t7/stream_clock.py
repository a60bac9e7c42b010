"""Time stamps for stream scans: counted from the scan rate, kept close to the Pi's clock.

The policy:

* A stream run starts at ``t0``, the acquisition clock (``Instrument.stamp``) just after eStreamStart
  returned. Scan k is stamped ``t0 + c + floor(k * 1e9 / rate)`` ns, where ``rate`` is the actual
  scan rate eStreamStart returned and ``c`` a correction, 0 at the start. The stamps come from the
  running scan counter, never from when a read returned: they are spaced by the T7's own crystal,
  and read jitter never enters them.
* The T7's crystal and the Pi's clock disagree by some ppm. After each read the clock compares
  ``u = Pi time now - nominal stamp of the newest scan the device has acquired`` (scans read plus
  both backlogs). Transfer latency only ever makes ``u`` larger, so the offset is the lower
  envelope of ``u`` over the last ``window`` reads, each projected to now with the drift; the drift
  is the robust (Theil-Sen) slope of ``u`` against scan time over the same window, reported once
  the window spans ``min_span_s`` (positive ppm: the T7 runs fast). Both are gauges.
* The offset is only known to within a scan period (the newest scan was acquired up to one period
  before the read) plus latency. When |offset| exceeds ``max_offset_ns`` + one period, ``c`` is
  stepped by the offset (one re-anchor, counted): forward at once; backward only as far as keeps
  the next stamp half a period after the last one given out (so at most half a period per read):
  stamps stay strictly increasing, and a backward correction is spread over a few reads (each step
  counted).
  Within a read, spacing is always 1/rate.
* A step of the Pi's wall clock (``instruments.clock``) is not drift: ``shift`` moves the stamps
  and what was observed so far by the step, at once, forward or back.
"""

from __future__ import annotations

import statistics
from collections import deque
from fractions import Fraction


class StreamClock:
    """Scan index -> ns time stamp for one stream run (see the module doc)."""

    def __init__(
        self,
        t0_ns: int,
        scan_rate_hz: float,
        *,
        max_offset_ns: int = 5_000_000,
        window: int = 32,
        min_span_s: float = 1.0,
    ) -> None:
        if not scan_rate_hz > 0:
            raise ValueError(f"scan rate must be > 0, got {scan_rate_hz}")
        period = Fraction(10**9) / Fraction(scan_rate_hz)  # exact: the float rate as given
        self._num, self._den = period.numerator, period.denominator
        self.t0_ns = t0_ns
        self.scan_rate_hz = scan_rate_hz
        self.max_offset_ns = max_offset_ns
        self.min_span_ns = int(min_span_s * 1e9)
        self.correction_ns = 0
        self.reanchors = 0
        self.offset_ns: int | None = None
        self.drift_ppm: float | None = None
        self._points: deque[tuple[int, int]] = deque(maxlen=window)

    @property
    def period_ns(self) -> float:
        return self._num / self._den

    def nominal(self, scan: int) -> int:
        """Stamp of ``scan`` without the correction."""
        return self.t0_ns + scan * self._num // self._den

    def stamps(self, first_scan: int, count: int, after_ns: int) -> list[int]:
        """Stamps of scans ``first_scan ..``, the first at least half a period after ``after_ns``."""
        if count <= 0:
            return []
        start = self.nominal(first_scan) + self.correction_ns
        earliest = after_ns + max(1, self._num // (2 * self._den))  # at least half a period later
        if start < earliest:
            self.correction_ns += earliest - start
        base = self.t0_ns + self.correction_ns
        num, den = self._num, self._den
        return [base + k * num // den for k in range(first_scan, first_scan + count)]

    def shift(self, step_ns: int) -> None:
        """The acquisition clock stepped by ``step_ns``: so do the stamps, and the observations."""
        self.correction_ns += step_ns
        self._points = deque(((e, u + step_ns) for e, u in self._points), maxlen=self._points.maxlen)

    def observe(self, now_ns: int, scans_acquired: int) -> bool:
        """Compare with the Pi's clock after a read; True if this re-anchored."""
        if scans_acquired <= 0:
            return False
        newest = scans_acquired - 1
        e = newest * self._num // self._den
        self._points.append((e, now_ns - self.t0_ns - e))
        slope = self._slope()
        s = slope or 0.0
        envelope = min(u + s * (e - ei) for ei, u in self._points)
        offset = round(envelope) - self.correction_ns
        self.offset_ns = offset
        self.drift_ppm = None if slope is None else -slope * 1e6
        if abs(offset) > self.max_offset_ns + self.period_ns:
            self.correction_ns += offset
            self.reanchors += 1
            return True
        return False

    def _slope(self) -> float | None:
        pts = list(self._points)
        if len(pts) < 3 or pts[-1][0] - pts[0][0] < self.min_span_ns:
            return None
        slopes = [
            (uj - ui) / (ej - ei) for i, (ei, ui) in enumerate(pts) for ej, uj in pts[i + 1 :] if ej > ei
        ]
        return statistics.median(slopes) if slopes else None
