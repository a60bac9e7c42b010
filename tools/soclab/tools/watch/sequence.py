"""Which sequence numbers of one device this subscriber has seen: holes and duplicates.

A publisher numbers its samples consecutively and never reuses a number, but it does not send
them in order: after an outage it drains its backlog oldest first *between* live messages, and
it sends a batch again when the bridge did not confirm it. So a jump forward is not yet a loss:
it is a hole that the backlog may still fill. The tracker keeps the seen numbers as sorted,
disjoint ranges; a hole is the space between two ranges, dated from when it became visible, so
that the monitor can call a hole a gap only once it has stayed open longer than a grace period.
A number seen again is a duplicate.

Memory is bounded: past ``max_ranges`` ranges the lowest ones are forgotten (their holes with them).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(slots=True)
class _Range:
    lo: int
    hi: int
    since: float  # when the hole below this range (if any) became visible


class SeqTracker:
    def __init__(self, max_ranges: int = 256) -> None:
        self.max_ranges = max_ranges
        self._ranges: list[_Range] = []
        self.duplicates = 0
        self.seen = 0

    @property
    def highest(self) -> int | None:
        return self._ranges[-1].hi if self._ranges else None

    def add(self, seqs: list[int], now: float) -> None:
        """Record the sequence numbers of one message, in the order they came."""
        if not seqs:
            return
        start = prev = seqs[0]
        for seq in seqs[1:]:
            if seq != prev + 1:
                self.add_run(start, prev, now)
                start = seq
            prev = seq
        self.add_run(start, prev, now)

    def add_run(self, lo: int, hi: int, now: float) -> None:
        """Record the consecutive numbers ``lo..hi``."""
        self.seen += hi - lo + 1
        ranges = self._ranges
        i = bisect.bisect_left([r.hi for r in ranges], lo)  # first range that may overlap or follow
        # A run inside an existing hole inherits the hole's age; above or below everything it is new.
        since = ranges[i].since if 0 < i < len(ranges) else now
        j = i
        merged = _Range(lo, hi, since)
        while j < len(ranges) and ranges[j].lo <= hi + 1:
            other = ranges[j]
            self.duplicates += max(0, min(hi, other.hi) - max(lo, other.lo) + 1)
            merged.lo, merged.hi = min(merged.lo, other.lo), max(merged.hi, other.hi)
            merged.since = min(merged.since, other.since)
            j += 1
        if i > 0 and ranges[i - 1].hi + 1 == merged.lo:  # adjacent to the range below
            below = ranges[i - 1]
            merged.lo, merged.since = below.lo, below.since
            i -= 1
        if i == j == 0 and ranges:  # a new lowest range, apart: the hole above it opens now
            ranges[j].since = now
        ranges[i:j] = [merged]
        if len(ranges) > self.max_ranges:
            del ranges[: len(ranges) - self.max_ranges]
            ranges[0].since = now

    def holes(self) -> list[tuple[int, int, float]]:
        """Open holes: (first missing, last missing, open since)."""
        r = self._ranges
        return [(r[k - 1].hi + 1, r[k].lo - 1, r[k].since) for k in range(1, len(r))]

    def missing(self) -> int:
        """Numbers not seen between the lowest and the highest seen."""
        return sum(hi - lo + 1 for lo, hi, _ in self.holes())

    def missing_longer_than(self, now: float, grace_s: float) -> tuple[int, float | None]:
        """(numbers in holes open longer than ``grace_s``, when the oldest of them opened)."""
        old = [(hi - lo + 1, since) for lo, hi, since in self.holes() if now - since > grace_s]
        if not old:
            return 0, None
        return sum(n for n, _ in old), min(since for _, since in old)

    def reset(self) -> None:
        """Forget what was seen (the publisher started numbering again)."""
        self._ranges.clear()
