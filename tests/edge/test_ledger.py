"""The publisher's ledger: lanes, confirmations, resends. A real spool, a fake clock."""

from __future__ import annotations

import json
import time

from soclab.edge.instruments.base import Reading
from soclab.edge.publisher.ledger import Ledger
from soclab.edge.spool import Spool


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fill(spool: Spool, n: int) -> range:
    t = time.time_ns() - 10**9  # old enough for any batching delay
    return spool.append([Reading(t + i, {"bat_v": 12.0}) for i in range(n)])


def seqs(rows) -> list[int]:
    return [r[0] for r in rows]


def send(ledger: Ledger, mid: int) -> list[int]:
    """Publish the next batch; the sequence numbers of its samples, as the message holds them."""
    batch = ledger.next_batch()
    if batch is None:
        return []
    ledger.published(mid, batch.first, batch.last)
    ledger.puback(mid)
    sent = [sample["seq"] for sample in json.loads(f"[{batch.samples}]")]
    assert (batch.first, batch.last, batch.count) == (sent[0], sent[-1], len(sent))
    return sent


def test_samples_leave_the_spool_only_when_confirmed(tmp_path):
    spool = Spool(tmp_path / "s.sqlite")
    ledger = Ledger(spool, batch_max=10)
    fill(spool, 10)
    assert send(ledger, 1) == list(range(10))
    assert spool.depth == 10  # the broker's PUBACK is not enough
    assert ledger.confirmed([[0, 9]]) == 10
    assert spool.depth == 0
    assert ledger.unconfirmed_batches == 0


def test_backlog_drains_oldest_first_alternating_with_live_data(tmp_path):
    spool = Spool(tmp_path / "s.sqlite")
    fill(spool, 25)  # left by a previous run, or acquired while disconnected
    ledger = Ledger(spool, batch_max=10)
    fill(spool, 3)  # live
    sent = [send(ledger, mid) for mid in range(1, 6)]
    assert sent == [[25, 26, 27], list(range(0, 10)), list(range(10, 20)), list(range(20, 25)), []]


def test_an_outage_turns_live_samples_into_backlog(tmp_path):
    spool = Spool(tmp_path / "s.sqlite")
    ledger = Ledger(spool, batch_max=100)
    fill(spool, 5)
    assert send(ledger, 1) == [0, 1, 2, 3, 4]
    fill(spool, 50)  # while disconnected
    ledger.reconnected()
    fill(spool, 2)  # after the reconnect
    assert send(ledger, 2) == [55, 56]
    assert send(ledger, 3) == list(range(5, 55))
    assert ledger.backlog_samples() == 0


def test_a_batch_overtaken_by_later_confirmations_is_resent_after_the_grace(tmp_path):
    spool = Spool(tmp_path / "s.sqlite")
    clock = Clock()
    ledger = Ledger(spool, batch_max=10, resend_grace_s=5.0, clock=clock)
    fill(spool, 30)
    for mid in (1, 2, 3):
        send(ledger, mid)
    ledger.confirmed([[0, 9], [20, 29]])  # the broker lost 10..19 (e.g. killed before it saved)
    assert ledger.lost_batches() == 0  # maybe only late
    clock.now = 4.9
    assert ledger.lost_batches() == 0
    clock.now = 5.0
    assert ledger.lost_batches() == 1
    assert send(ledger, 4) == list(range(10, 20))
    ledger.confirmed([[10, 19]])
    assert spool.depth == 0
    assert ledger.resent_batches == 1


def test_nothing_is_resent_while_the_bridge_is_silent(tmp_path):
    spool = Spool(tmp_path / "s.sqlite")
    clock = Clock()
    ledger = Ledger(spool, batch_max=10, resend_grace_s=1.0, clock=clock)
    fill(spool, 30)
    for mid in (1, 2, 3):
        send(ledger, mid)
    clock.now = 3600.0
    assert ledger.lost_batches() == 0
    assert ledger.next_batch() is None


def test_dead_lettered_samples_leave_and_are_counted(tmp_path):
    spool = Spool(tmp_path / "s.sqlite")
    ledger = Ledger(spool, batch_max=10)
    fill(spool, 10)
    send(ledger, 1)
    ledger.confirmed([[0, 9]], dead_lettered=True)
    assert (spool.depth, ledger.dead_lettered_samples, ledger.confirmed_samples) == (0, 10, 0)


def test_confirmations_of_unknown_or_repeated_ranges_are_harmless(tmp_path):
    spool = Spool(tmp_path / "s.sqlite")
    ledger = Ledger(spool, batch_max=10)
    fill(spool, 10)
    send(ledger, 1)
    assert ledger.confirmed([[0, 9]]) == 10
    assert ledger.confirmed([[0, 9], [500, 400], [1000, 2000]]) == 0


# --- what a confirmation may remove (issue 11, finding 7) ------------------------------------------------
def test_a_confirmation_removes_only_samples_published_and_not_yet_confirmed(tmp_path):
    """Finding 7: forged confirmations deleted 250 LabJack samples before they were ever sent."""
    spool = Spool(tmp_path / "s.sqlite")
    ledger = Ledger(spool, batch_max=10)
    fill(spool, 30)
    assert send(ledger, 1) == list(range(10))
    assert ledger.confirmed([[0, 29]]) == 10  # 10..29 were never sent: they stay
    assert seqs(spool.peek(-1, 100)) == list(range(10, 30))
    assert ledger.confirmed([[0, 9]]) == 0  # confirmed already
    assert send(ledger, 2) == list(range(10, 20))
    assert ledger.confirmed([[15, 10**15]]) == 5  # a range beyond anything: only what was sent
    assert seqs(spool.peek(-1, 100)) == list(range(10, 15)) + list(range(20, 30))
    assert ledger.confirmed_samples == 15
    assert ledger.unconfirmed_batches == 1  # 10..14 of the second batch wait for their confirmation
    assert ledger.confirmed([[10, 14]]) == 5
    assert ledger.unconfirmed_batches == 0


def test_a_dead_letter_for_samples_never_sent_removes_nothing(tmp_path):
    spool = Spool(tmp_path / "s.sqlite")
    ledger = Ledger(spool, batch_max=10)
    fill(spool, 10)
    assert ledger.confirmed([[0, 9]], dead_lettered=True) == 0
    assert (spool.depth, ledger.dead_lettered_samples) == (10, 0)


def test_a_late_confirmation_of_a_batch_waiting_to_be_resent_is_taken(tmp_path):
    spool = Spool(tmp_path / "s.sqlite")
    clock = Clock()
    ledger = Ledger(spool, batch_max=10, resend_grace_s=1.0, clock=clock)
    fill(spool, 20)
    send(ledger, 1)
    send(ledger, 2)
    ledger.confirmed([[10, 19]])
    clock.now = 1.0
    assert ledger.lost_batches() == 1
    assert ledger.confirmed([[0, 9]]) == 10  # it was published: late, not forged
    assert ledger.next_batch() is None  # so nothing is sent again
    assert spool.depth == 0


def test_samples_published_by_an_earlier_run_may_be_confirmed_after_a_restart(tmp_path):
    """The session is persistent: confirmations of what the previous run published wait at the
    broker. The ledger saves what it published (``save()``, once a second from the sender), so
    the next run accepts those, and still nothing it never published."""
    spool = Spool(tmp_path / "s.sqlite")
    ledger = Ledger(spool, batch_max=10)
    fill(spool, 40)
    send(ledger, 1)  # 0..9
    send(ledger, 2)  # 10..19
    ledger.confirmed([[0, 4]])
    ledger.save()
    send(ledger, 3)  # 20..29: published after the last save, as if the process died right then
    spool.close()

    spool = Spool(tmp_path / "s.sqlite")
    ledger = Ledger(spool, batch_max=10)
    assert ledger.confirmed([[0, 39]]) == 15  # 5..19: published and saved; 20..39 stay
    assert seqs(spool.peek(-1, 100)) == list(range(20, 40))
    assert [send(ledger, mid) for mid in (1, 2)] == [list(range(20, 30)), list(range(30, 40))]
    assert ledger.confirmed([[20, 39]]) == 20


def test_a_young_batch_waits_for_the_delay_even_stamped_a_little_ahead_of_the_wall_clock(tmp_path):
    """A stamp may be up to the clock's step tolerance ahead of time.time_ns() (it is spaced by the
    monotonic clock); only beyond it has the wall clock stepped back, and the batch goes at once.
    (A sample stamped 1 ms ahead once left at once despite a 600 s batching delay.)"""
    spool = Spool(tmp_path / "s.sqlite")
    ledger = Ledger(spool, batch_max=10)
    spool.append([Reading(time.time_ns() + 1_000_000, {"bat_v": 12.0})])
    assert ledger.next_batch(live_delay_s=600) is None
    later = Spool(tmp_path / "t.sqlite")
    later.append([Reading(time.time_ns() + 3600 * 10**9, {"bat_v": 12.0})])  # the clock stepped back
    stepped = Ledger(later, batch_max=10).next_batch(live_delay_s=600)
    assert stepped is not None
    assert stepped.count == 1
