"""A set of sequence numbers kept as sorted, disjoint, inclusive ``[first, last]`` ranges.

The ledger's record of what was published and not yet confirmed: publishing adds a range,
a confirmation takes out what it names of it, and only that. Adjacent ranges merge, so a
steady stream of batches stays one range however many are in flight.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class SeqRanges:
    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        for first, last in ranges:
            self.add(first, last)

    def add(self, first: int, last: int) -> None:
        """Add first..last (inclusive), merging with what it touches."""
        if first > last:
            return
        i = bisect.bisect_left(self._lasts, first - 1)  # the first range that may touch or follow
        j = bisect.bisect_right(self._firsts, last + 1)  # past the last range that may touch
        if i < j:
            first = min(first, self._firsts[i])
            last = max(last, self._lasts[j - 1])
        self._firsts[i:j] = [first]
        self._lasts[i:j] = [last]

    def take(self, first: int, last: int) -> list[tuple[int, int]]:
        """Remove what of first..last is in the set; return those pieces, in order."""
        if first > last:
            return []
        i = bisect.bisect_left(self._lasts, first)  # the first range ending at or after first
        j = bisect.bisect_right(self._firsts, last)  # past the last range starting at or before last
        if i >= j:
            return []
        taken = [
            (max(a, first), min(b, last)) for a, b in zip(self._firsts[i:j], self._lasts[i:j], strict=True)
        ]
        keep_firsts: list[int] = []
        keep_lasts: list[int] = []
        if self._firsts[i] < first:  # the part of the first range before the cut
            keep_firsts.append(self._firsts[i])
            keep_lasts.append(first - 1)
        if self._lasts[j - 1] > last:  # the part of the last range after it
            keep_firsts.append(last + 1)
            keep_lasts.append(self._lasts[j - 1])
        self._firsts[i:j] = keep_firsts
        self._lasts[i:j] = keep_lasts
        return taken

    def overlaps(self, first: int, last: int) -> bool:
        i = bisect.bisect_left(self._lasts, first)
        return i < len(self._firsts) and self._firsts[i] <= last

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._firsts, self._lasts, strict=True))

    def __len__(self) -> int:
        """The number of ranges (not of sequence numbers)."""
        return len(self._firsts)

    def __repr__(self) -> str:
        return f"SeqRanges({list(self)})"
