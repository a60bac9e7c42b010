"""Acquisition's way into the spool while the disk refuses writes (issue 11, finding 13): a real
spool that refuses on demand as a full disk does, and a fake clock. The real full filesystem is
tests/faults/test_disk_full.py."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from soclab.edge.instruments.base import Reading
from soclab.edge.publisher.intake import SpoolIntake
from soclab.edge.publisher.ledger import Ledger
from soclab.edge.spool import Spool

T0 = 1_700_000_000_000_000_000


class RefusingSpool(Spool):
    """A spool on a disk that can be full: while ``full``, every write raises as SQLite does."""

    full = False

    def append(self, readings):  # type: ignore[no-untyped-def]
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return super().append(readings)

    def remove(self, first_seq: int, last_seq: int) -> int:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return super().remove(first_seq, last_seq)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def reading(i: int) -> Reading:
    return Reading(T0 + i, {"bat_v": 12.0 + i / 1000})


def spooled(spool: Spool) -> list[tuple[int, int]]:
    """(seq, which reading) of every spooled sample."""
    return [(seq, t_ns - T0) for seq, t_ns, _ in spool.peek(-1, 10**6)]


def test_readings_wait_in_order_while_the_disk_is_full_and_follow_when_it_frees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool, clock = RefusingSpool(tmp_path / "s.sqlite"), Clock()
    intake = SpoolIntake(spool, hold_max_samples=1000, retry_s=1.0, clock=clock)
    assert intake.put([reading(0), reading(1)]) == 2
    spool.full = True
    for i in range(2, 12):  # five seconds of two readings a second
        clock.now += 0.5
        assert intake.put([reading(i)]) == 0
    state = intake.state()
    assert (state.held, state.lost, state.unwritable_s) == (10, 0, 4.5)
    assert state.error == "spool: database or disk is full"
    assert state.write_errors == 1 + 4  # the first refusal, then one try a second
    assert caplog.text.count("event=spool_unwritable") == 1
    spool.full = False
    clock.now += 0.5
    assert intake.put([reading(12)]) == 11  # the held ones first, then the new one
    assert intake.put([]) == 0
    assert spooled(spool) == [(i, i) for i in range(13)]  # every reading, in order, consecutive
    state = intake.state()
    assert (state.held, state.unwritable_s, state.error) == (0, None, None)
    assert "event=spool_writable_again after_s=5.0 readings_held_most=11 written_now=11 lost=0" in caplog.text


def test_catching_up_needs_no_new_reading(tmp_path: Path) -> None:
    """An instrument that gives nothing (unplugged) must not keep held readings from the disk."""
    spool, clock = RefusingSpool(tmp_path / "s.sqlite"), Clock()
    intake = SpoolIntake(spool, hold_max_samples=1000, clock=clock)
    spool.full = True
    intake.put([reading(0), reading(1)])
    spool.full = False
    clock.now += 1.0
    assert intake.put([]) == 2
    assert spool.depth == 2


def test_beyond_the_bound_the_oldest_held_readings_are_lost_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool, clock = RefusingSpool(tmp_path / "s.sqlite"), Clock()
    intake = SpoolIntake(spool, hold_max_samples=5, clock=clock)
    spool.full = True
    for i in range(8):
        intake.put([reading(i)])
    assert (intake.state().held, intake.state().lost) == (5, 3)
    assert "event=samples_lost count=1 lost_total=3" in caplog.text
    spool.full = False
    clock.now += 1.0
    intake.put([])
    assert [which for _, which in spooled(spool)] == [3, 4, 5, 6, 7]  # the newest kept


def test_what_is_held_at_stop_is_written_if_it_can_be_and_else_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = RefusingSpool(tmp_path / "s.sqlite")
    intake = SpoolIntake(spool, hold_max_samples=100, clock=Clock())
    spool.full = True
    intake.put([reading(0), reading(1)])
    assert intake.close() == 2
    assert "event=samples_lost_at_stop count=2" in caplog.text
    spool.full = False
    assert intake.close() == 0
    assert spool.depth == 2


def test_a_failed_append_changes_nothing_in_the_spool(tmp_path: Path) -> None:
    """SQLite rolls the transaction back: no sequence number is used, no value counted twice."""
    spool = Spool(tmp_path / "s.sqlite")
    spool.append([reading(0)])
    spool._db.execute("PRAGMA max_page_count = 1")  # a disk that is full now
    with pytest.raises(sqlite3.OperationalError, match="full"):
        spool.append([Reading(T0 + i, {"bat_v": float("nan"), "x": "y" * 5000}) for i in range(50)])  # type: ignore[dict-item]
    assert (spool.next_seq, spool.depth, spool.invalid_values) == (1, 1, 0)
    spool.close()
    reopened = Spool(tmp_path / "s.sqlite")
    assert (reopened.next_seq, reopened.depth) == (1, 1)
    assert json.loads(reopened.peek(-1, 1)[0][2])["seq"] == 0


def test_confirmed_samples_the_disk_refuses_to_remove_are_removed_later(tmp_path: Path) -> None:
    spool = RefusingSpool(tmp_path / "s.sqlite")
    ledger = Ledger(spool, batch_max=10)
    spool.append([reading(i) for i in range(10)])
    batch = ledger.next_batch()
    assert batch is not None
    ledger.published(1, batch.first, batch.last)
    spool.full = True
    assert ledger.confirmed([[0, 9]]) == 0
    assert (ledger.removals_pending, ledger.removal_error) == (1, "database or disk is full")
    assert ledger.unconfirmed_batches == 0  # confirmed all the same: never sent again
    ledger.retry_removals()
    assert ledger.removals_pending == 1
    spool.full = False
    ledger.retry_removals()
    assert (ledger.removals_pending, ledger.removal_error, ledger.confirmed_samples) == (0, None, 10)
    assert spool.depth == 0
