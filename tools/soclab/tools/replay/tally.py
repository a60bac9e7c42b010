"""What a replay sent and what the bridge said about it: the bookkeeping, without I/O.

The sender hands ``Tally`` every batch it publishes and every confirmation that arrives; the
tally says how many batches are in flight (sent, not settled), which to send again, and the
counts. A batch is settled once each of its sequence numbers is confirmed stored or refused
(dead-lettered). A confirmation names sequence numbers of one device; numbers this replay did not
send, or has already settled, change nothing, so a forged or repeated confirmation cannot inflate
the counts.

Resends. The bridge stores one session's messages in order, so a batch still unconfirmed after a
later batch of its device was confirmed was lost on the way (a broker that crashed before it
saved its queue); so, probably, was one sent before a silence of ``grace_s`` in which nothing at
all was confirmed. Either is sent again once ``grace_s`` has passed: writes are idempotent, and a
batch stored twice is the same points.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from soclab.tools.replay.messages import Batch


@dataclass(slots=True)
class _Pending:
    batch: Batch
    sent_at: float
    settled: set[int] = field(default_factory=set)
    overtaken_at: float | None = None


class Tally:
    def __init__(self, grace_s: float, now: float) -> None:
        self.grace_s = grace_s
        self.sent_batches = 0
        self.sent_samples = 0  # first sends only: each sample counts once
        self.resent_batches = 0
        self.stored = 0
        self.refused = 0
        self.ignored = 0  # confirmed numbers that were not in flight (repeats, forgeries)
        self.last_settled_at = now  # when a sample was last settled (or the start)
        self._pending: dict[str, dict[int, _Pending]] = {}  # device -> first seq -> batch
        self._firsts: dict[str, list[int]] = {}  # device -> sorted first seqs of _pending

    @property
    def in_flight(self) -> int:
        """Batches sent and not yet settled."""
        return sum(len(p) for p in self._pending.values())

    @property
    def unsettled(self) -> int:
        """Samples sent and neither stored nor refused yet."""
        return sum(
            p.batch.size - len(p.settled) for by_first in self._pending.values() for p in by_first.values()
        )

    def sent(self, batch: Batch, now: float) -> None:
        pending = self._pending.setdefault(batch.device, {})
        if batch.first in pending:
            raise ValueError(f"{batch.device} batch from {batch.first} is already in flight")
        pending[batch.first] = _Pending(batch, now)
        bisect.insort(self._firsts.setdefault(batch.device, []), batch.first)
        self.sent_batches += 1
        self.sent_samples += batch.size

    def confirmed(
        self, device: str, stored: Iterable[Sequence[int]], refused: Iterable[Sequence[int]], now: float
    ) -> int:
        """Settle the numbers these ranges name; the count of samples newly settled."""
        before = self.stored + self.refused
        for ranges, outcome in ((stored, "stored"), (refused, "refused")):
            for first, last in ranges:
                self._settle(device, int(first), int(last), outcome, now)
        settled = self.stored + self.refused - before
        if settled:
            self.last_settled_at = now
        return settled

    def resend_due(self, now: float) -> list[Batch]:
        """Batches to send again now (their clocks restart)."""
        quiet = now - self.last_settled_at >= self.grace_s
        due = []
        for by_first in self._pending.values():
            for pending in by_first.values():
                overtaken = pending.overtaken_at is not None and now - pending.overtaken_at >= self.grace_s
                if overtaken or (quiet and now - pending.sent_at >= self.grace_s):
                    pending.sent_at, pending.overtaken_at = now, None
                    due.append(pending.batch)
        self.resent_batches += len(due)
        return due

    def _settle(self, device: str, first: int, last: int, outcome: str, now: float) -> None:
        pending = self._pending.get(device, {})
        firsts = self._firsts.get(device, [])
        i = bisect.bisect_right(firsts, last) - 1
        touched = 0
        while i >= 0:
            entry = pending[firsts[i]]
            if entry.batch.last < first:
                break
            for seq in range(max(first, entry.batch.first), min(last, entry.batch.last) + 1):
                if seq not in entry.settled:
                    entry.settled.add(seq)
                    touched += 1
                    if outcome == "stored":
                        self.stored += 1
                    else:
                        self.refused += 1
            if len(entry.settled) == entry.batch.size:
                self._done(device, i, now)
            i -= 1
        self.ignored += (last - first + 1) - touched

    def _done(self, device: str, index: int, now: float) -> None:
        firsts = self._firsts[device]
        del self._pending[device][firsts[index]]
        del firsts[index]
        for earlier in firsts[:index]:  # overtaken: sent before, still unconfirmed
            entry = self._pending[device][earlier]
            if entry.overtaken_at is None:
                entry.overtaken_at = now
