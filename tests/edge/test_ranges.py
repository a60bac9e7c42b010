"""The ledger's set of sequence-number ranges, against a plain set of numbers."""

from __future__ import annotations

import itertools
import random

from soclab.edge.publisher.ranges import SeqRanges


def members(ranges: SeqRanges) -> set[int]:
    return {n for a, b in ranges for n in range(a, b + 1)}


def test_random_adds_and_takes_agree_with_a_set() -> None:
    rng = random.Random(7)
    ranges, model = SeqRanges(), set[int]()
    for _ in range(3000):
        a = rng.randrange(200)
        b = a + rng.randrange(-2, 15)
        if rng.random() < 0.5:
            ranges.add(a, b)
            model |= set(range(a, b + 1))
        else:
            taken = ranges.take(a, b)
            expected = model & set(range(a, b + 1))
            assert {n for x, y in taken for n in range(x, y + 1)} == expected
            assert taken == sorted(taken)
            model -= expected
        assert members(ranges) == model
        pairs = list(ranges)
        assert all(x <= y for x, y in pairs)
        assert all(y + 1 < x2 for (_, y), (x2, _) in itertools.pairwise(pairs))  # disjoint, merged
        probe = rng.randrange(200)
        assert ranges.overlaps(probe, probe + 3) == bool(model & set(range(probe, probe + 4)))


def test_adjacent_batches_stay_one_range() -> None:
    ranges = SeqRanges()
    for first in range(0, 5000, 500):
        ranges.add(first, first + 499)
    assert list(ranges) == [(0, 4999)]
    assert ranges.take(1000, 1499) == [(1000, 1499)]
    assert list(ranges) == [(0, 999), (1500, 4999)]
    assert ranges.take(-(2**63), 2**63) == [(0, 999), (1500, 4999)]
    assert len(ranges) == 0
