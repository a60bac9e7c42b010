"""Counting samples end to end for the fleet tests: what each publisher assigned (its spool's next
sequence number), what it still holds unconfirmed, and what InfluxDB stored."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

DEVICES = ("mppt", "eload", "labjack")  # device name = kind in the simulated lab


def spool(var: Path, device: str) -> contextlib.closing[sqlite3.Connection]:
    """The publisher's spool, read-only (SQLite WAL lets us read while it writes)."""
    return contextlib.closing(sqlite3.connect(f"file:{var / 'spool' / device}.sqlite?mode=ro", uri=True))


def assigned(var: Path, device: str) -> int:
    """The publisher's next sequence number: samples 0..n-1 exist (0 before its spool exists)."""
    if not (var / "spool" / f"{device}.sqlite").exists():
        return 0
    with spool(var, device) as db:
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0  # the publisher is still creating its tables
            raise
        return int(row[0]) if row else 0


def spooled(var: Path, device: str) -> set[int]:
    """Sequence numbers still waiting in the spool for their confirmation."""
    with spool(var, device) as db:
        return {row[0] for row in db.execute("SELECT seq FROM samples")}


def stored_seqs(
    query: Callable[[str], list[dict[str, Any]]], device: str, measurement: str = ""
) -> list[int]:
    """Every stored sequence number of the device, duplicates included (the measurement is the
    device's kind; in the simulated lab, its name)."""
    seqs = []
    for series in query(f"SELECT seq FROM {measurement or device} WHERE device = '{device}'"):
        seqs.extend(int(v[1]) for v in series["values"])
    return seqs


def stored_below(
    query: Callable[[str], list[dict[str, Any]]], device: str, limit: int, measurement: str = ""
) -> int:
    q = f"SELECT count(seq) FROM {measurement or device} WHERE device = '{device}' AND seq < {limit}"
    series = query(q)
    return int(series[0]["values"][0][1]) if series else 0


def wait_stored(
    query: Callable[[str], list[dict[str, Any]]],
    targets: dict[str, int],
    check_alive: Callable[[], None],
    limit_s: float,
    measurement: str = "",
) -> float:
    """Seconds until samples 0..n-1 of each device are stored; fail after ``limit_s``."""
    start = time.monotonic()
    while any(stored_below(query, d, n, measurement) < n for d, n in targets.items()):
        check_alive()
        if time.monotonic() - start > limit_s:
            missing = {d: n - stored_below(query, d, n, measurement) for d, n in targets.items()}
            pytest.fail(f"not caught up after {limit_s} s: missing {missing}")
        time.sleep(0.25)
    return time.monotonic() - start


def check_once(
    query: Callable[[str], list[dict[str, Any]]],
    var: Path,
    devices: Iterable[str] = DEVICES,
    measurement: str = "",
) -> dict[str, int]:
    """Assert every assigned sample is stored exactly once or still spooled; return stored counts."""
    counts = {}
    for device in devices:
        n = assigned(var, device)
        seqs = stored_seqs(query, device, measurement)
        doubled = [seq for seq, c in Counter(seqs).items() if c > 1]
        assert not doubled, f"{device}: stored twice: {doubled[:10]}"
        missing = set(range(n)) - set(seqs) - spooled(var, device)
        assert not missing, f"{device}: {len(missing)} of {n} samples lost: {sorted(missing)[:10]}"
        assert n > 0, f"{device}: no sample at all"
        counts[device] = len(seqs)
    return counts
