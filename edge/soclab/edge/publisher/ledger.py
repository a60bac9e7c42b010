"""What the publisher has sent, what the bridge has stored, and what to send next.

A sample leaves the spool only when the bridge confirms it stored it (``soclab.stored/1``), not
when the broker acknowledges the message (PUBACK): Mosquitto saves its queues to disk only every
``autosave_interval``, so a broker killed in between forgets messages it had acknowledged.

Lanes. Samples acquired while connected are *live*; everything else in the spool (what was
acquired during an outage, and at start whatever a previous run left) is *backlog*. The sender
alternates between the lanes, so a long backlog drains at full speed (batches of
``batch.max_samples``) while live data keeps flowing, and drains oldest first.

Resending. The bridge stores one device's messages in the order the broker delivers them. When a
confirmation names samples that were published *after* a batch that the broker acknowledged but
the bridge never confirmed, and ``resend_grace_s`` passes without that confirmation arriving,
the batch was lost between broker and bridge: it is sent again (storage is idempotent, so a
batch that was merely late is harmless to send twice). Nothing is resent while the bridge is
silent: then the broker's queue for the bridge's session holds the messages.

What a confirmation may remove (issue 11, finding 7). Only samples that were published and are
not yet confirmed (``outstanding``): a confirmation naming anything else, be it samples never
sent, confirmed already, or not acquired yet, removes nothing of them. The outstanding ranges are
saved in the spool (``save()``, about once a second), so the next run of the publisher accepts
the confirmations that waited for it at the broker; what was published after the last save is
sent again instead (harmless, see above). Who may confirm at all is the broker's ACL's business
(see ``publisher.service``). A removal the disk refuses (full) is tried again every second
(``retry_removals``); should the publisher stop first, those samples go again at the next start.
"""

from __future__ import annotations

import bisect
import collections
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from soclab.edge.instruments.clock import STEP_TOLERANCE_NS
from soclab.edge.publisher.ranges import SeqRanges
from soclab.edge.spool import Spool, SpooledSamples


@dataclass(slots=True)
class Batch:
    first: int
    last: int
    order: int  # publication order
    acked: bool = False  # the broker's PUBACK arrived
    overtaken_at: float | None = None  # when a later batch was confirmed while this one was not


class Ledger:
    """The sender's bookkeeping; used from one thread only (the publisher's sender)."""

    def __init__(
        self,
        spool: Spool,
        *,
        batch_max: int,
        resend_grace_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spool = spool
        self.batch_max = batch_max
        self.resend_grace_s = resend_grace_s
        self._clock = clock
        # At start everything in the spool is backlog; live samples are those from next_seq on.
        self._backlog: collections.deque[list[int]] = collections.deque()  # [next seq to walk, end)
        if spool.next_seq > 0:
            self._backlog.append([0, spool.next_seq])
        self._live_cursor = spool.next_seq  # next live seq to send
        self._resend: collections.deque[tuple[int, int]] = collections.deque()
        # Published and not confirmed, by this run or (saved in the spool) an earlier one.
        self._outstanding = SeqRanges(spool.sent_ranges())
        self._saved = list(self._outstanding)
        self._by_mid: dict[int, Batch] = {}
        self._unconfirmed: dict[int, Batch] = {}  # first seq -> batch, published and not confirmed
        self._starts: list[int] = []  # sorted keys of _unconfirmed
        self._order = 0
        self._live_turn = True
        self._unremoved: list[tuple[int, int, bool]] = []  # confirmed, the disk refused to remove
        self.removal_error: str | None = None
        self.resent_batches = 0
        self.ranges_ignored = 0  # confirmed ranges that named nothing outstanding
        self.confirmed_samples = 0
        self.dead_lettered_samples = 0

    # --- events -----------------------------------------------------------------------------------
    def reconnected(self) -> None:
        """Samples acquired while the connection was down become backlog."""
        end = self.spool.next_seq
        if end > self._live_cursor:
            self._backlog.append([self._live_cursor, end])
            self._live_cursor = end

    def published(self, mid: int, first: int, last: int) -> None:
        self._order += 1
        batch = Batch(first, last, self._order)
        self._by_mid[mid] = batch
        self._unconfirmed[first] = batch
        bisect.insort(self._starts, first)
        self._outstanding.add(first, last)

    def puback(self, mid: int) -> None:
        batch = self._by_mid.pop(mid, None)
        if batch is not None:
            batch.acked = True

    def confirmed(self, ranges: list[list[int]], dead_lettered: bool = False) -> int:
        """The bridge stored (or dead-lettered) these ranges: forget what of them is outstanding.
        Returns the samples removed from the spool."""
        removed = 0
        newest = 0
        for first, last in ranges:
            pieces = self._outstanding.take(first, last)
            for a, b in pieces:
                removed += self._remove(a, b, dead_lettered)
            if not pieces:
                self.ranges_ignored += 1
                continue
            for batch in self._batches_overlapping(pieces[0][0], pieces[-1][1]):
                if not self._outstanding.overlaps(batch.first, batch.last):  # all of it confirmed
                    newest = max(newest, batch.order)
                    del self._unconfirmed[batch.first]
                    self._starts.remove(batch.first)
        if newest:
            now = self._clock()
            for batch in self._unconfirmed.values():
                if batch.acked and batch.order < newest and batch.overtaken_at is None:
                    batch.overtaken_at = now
        return removed

    def _remove(self, first: int, last: int, dead_lettered: bool) -> int:
        """Remove from the spool; a removal the disk refuses (full) is tried again later."""
        try:
            removed = self.spool.remove(first, last)
        except sqlite3.Error as exc:
            self._unremoved.append((first, last, dead_lettered))
            self.removal_error = str(exc)
            return 0
        if dead_lettered:
            self.dead_lettered_samples += removed
        else:
            self.confirmed_samples += removed
        return removed

    def retry_removals(self) -> None:
        """Remove what was confirmed while the disk refused (the sender, once a second)."""
        pending, self._unremoved = self._unremoved, []
        for first, last, dead_lettered in pending:
            self._remove(first, last, dead_lettered)
        if not self._unremoved:
            self.removal_error = None

    @property
    def removals_pending(self) -> int:
        """Confirmed ranges still in the spool because the disk refused their removal."""
        return len(self._unremoved)

    def _batches_overlapping(self, first: int, last: int) -> list[Batch]:
        """Unconfirmed batches with a sample in first..last (batches do not overlap each other)."""
        i = max(0, bisect.bisect_right(self._starts, first) - 1)  # the one that may hold first
        found = []
        while i < len(self._starts) and self._starts[i] <= last:
            batch = self._unconfirmed[self._starts[i]]
            if batch.last >= first:
                found.append(batch)
            i += 1
        return found

    def save(self) -> None:
        """Save the outstanding ranges in the spool, if they changed (the sender, once a second).
        Raises the spool's error (a full disk): the caller logs it and tries again later."""
        oldest = self.spool.peek(-1, 1)  # what the spool no longer holds can be confirmed no more
        self._outstanding.take(-1, oldest[0][0] - 1 if oldest else self.spool.next_seq - 1)
        current = list(self._outstanding)
        if current != self._saved:
            self.spool.save_sent(current)
            self._saved = current

    def lost_batches(self) -> int:
        """Move batches overtaken for longer than the grace period to the resend queue."""
        now = self._clock()
        lost = [
            b
            for b in self._unconfirmed.values()
            if b.overtaken_at is not None and now - b.overtaken_at >= self.resend_grace_s
        ]
        for batch in lost:
            del self._unconfirmed[batch.first]
            self._starts.remove(batch.first)
            self._resend.append((batch.first, batch.last))
        self.resent_batches += len(lost)
        return len(lost)

    # --- what to send next --------------------------------------------------------------------
    def next_batch(self, live_delay_s: float = 0.0) -> SpooledSamples | None:
        """The next message's samples: a resend first, then live and backlog in turn."""
        while self._resend:
            first, last = self._resend.popleft()
            batch = self.spool.batch(first - 1, last - first + 1, before_seq=last + 1)
            if batch is not None:
                return batch
        lanes = (self._live, self._backlog_batch) if self._live_turn else (self._backlog_batch, self._live)
        for lane in lanes:
            batch = lane(live_delay_s)
            if batch is not None:
                self._live_turn = lane is not self._live
                return batch
        return None

    def _live(self, live_delay_s: float) -> SpooledSamples | None:
        batch = self.spool.batch(self._live_cursor - 1, self.batch_max)
        if batch is None:
            return None
        # Ahead of the wall clock by more than a stamp may be (clock.STEP_TOLERANCE_NS): the wall
        # clock stepped back, so the age means nothing: go. Within it, an ordinary young batch.
        age_ns = time.time_ns() - batch.oldest_t_ns
        if batch.count < self.batch_max and -STEP_TOLERANCE_NS <= age_ns < live_delay_s * 1e9:
            return None  # wait for a fuller batch
        self._live_cursor = batch.last + 1
        return batch

    def _backlog_batch(self, _: float) -> SpooledSamples | None:
        while self._backlog:
            segment = self._backlog[0]
            batch = self.spool.batch(segment[0] - 1, self.batch_max, before_seq=segment[1])
            if batch is not None:
                segment[0] = batch.last + 1
                return batch
            self._backlog.popleft()
        return None

    # --- status -------------------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        return len(self._by_mid)

    @property
    def unconfirmed_batches(self) -> int:
        return len(self._unconfirmed)

    def backlog_samples(self) -> int:
        """Spooled samples not yet sent (nor queued for a resend)."""
        unsent = sum(self.spool.count(s[0], s[1] - 1) for s in self._backlog)
        unsent += self.spool.count(self._live_cursor, None)
        return unsent + sum(self.spool.count(a, b) for a, b in self._resend)
