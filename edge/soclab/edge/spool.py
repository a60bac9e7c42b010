"""The edge's durable queue: every sample is on disk before it is published, and leaves only
after the bridge confirmed it stored it (see ``publisher.ledger``).

SQLite in WAL mode, one row per sample, the row id being the device stream's sequence number,
so sequence numbers survive restarts and are never reused. The sample is stored already encoded
as its JSON object, so a message is assembled by joining rows. An append encodes all its samples
in one call (msgspec, in C): a LabJack read of 5,000 scans costs about 0.5 µs per sample instead
of the 4-5 µs of one ``json.dumps`` each (see ``_encode_all``).

Sync policy (``sync``):
- ``"full"`` (default): every append is fsynced before ``append`` returns. Survives kill -9 and a
  power cut; costs one fsync per driver read (1/s for the MPPT, ~10-100/s for a LabJack stream).
- ``"normal"``: survives kill -9 (the WAL is in the OS), may lose the last appends on a power cut.

Bound (``max_samples``): when an append would exceed it, the oldest samples are deleted (policy
"drop-oldest": a long outage keeps its most recent data), counted in ``dropped`` (persisted) and
logged as a warning; the publisher reports the count in its status topic.

Beside the samples, the spool keeps which of them were published and are not yet confirmed
(``sent``, a few ranges that the ledger saves about once a second): a confirmation is accepted
only for those, also when it reaches the next run of the publisher.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from soclab.edge.instruments.base import Reading

log = logging.getLogger(__name__)
_NO_END = 2**63 - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (seq INTEGER PRIMARY KEY, t_ns INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sent (first INTEGER PRIMARY KEY, last INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_seq', 0), ('dropped', 0);
"""


@dataclass(frozen=True, slots=True)
class SpooledSamples:
    """Spooled samples first..last (``count`` of them; fewer than last - first + 1 where some
    left the spool), ``samples`` their JSON objects joined by commas: a message's samples."""

    first: int
    last: int
    count: int
    oldest_t_ns: int
    samples: str


class Spool:
    """Thread-safe; one writer process per file (the publisher of one instrument)."""

    def __init__(self, path: str | Path, *, max_samples: int = 10_000_000, sync: str = "full") -> None:
        if sync not in ("full", "normal"):
            raise ValueError(f"spool sync must be 'full' or 'normal', not {sync!r}")
        if max_samples < 1:
            raise ValueError("spool max_samples must be at least 1")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_samples = max_samples
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={sync.upper()}")
        self._db.executescript(_SCHEMA)
        self.next_seq = self._meta("next_seq")
        self.dropped = self._meta("dropped")
        self.depth = self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        self.invalid_values = 0

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def append(self, readings: Iterable[Reading]) -> range:
        """Store readings under consecutive sequence numbers; return the numbers given."""
        batch = list(readings)
        with self._lock:
            first = self.next_seq
            if not batch:
                return range(first, first)
            bodies, invalid = _encode_all(first, batch)
            seq = first + len(batch)
            rows = list(zip(range(first, seq), [r.t_ns for r in batch], bodies, strict=True))
            overflow = max(0, self.depth + len(rows) - self.max_samples)
            with self._db:  # one transaction: rows, next_seq and the drop are one
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT INTO samples VALUES (?, ?, ?)", rows)
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq,))
                if overflow:
                    self._db.execute(
                        "DELETE FROM samples WHERE seq IN (SELECT seq FROM samples ORDER BY seq LIMIT ?)",
                        (overflow,),
                    )
                    self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (overflow,))
            self.next_seq = seq  # written: nothing of a failed append (a full disk) is counted
            self.depth += len(rows) - overflow
            self.invalid_values += invalid
            if overflow:
                self.dropped += overflow
                log.warning(
                    "event=spool_full policy=drop-oldest dropped=%d dropped_total=%d max_samples=%d",
                    overflow,
                    self.dropped,
                    self.max_samples,
                )
            return range(first, seq)

    def peek(self, after_seq: int, limit: int, before_seq: int | None = None) -> list[tuple[int, int, str]]:
        """Up to ``limit`` samples with after_seq < seq (< before_seq), oldest first: (seq, t_ns, json)."""
        with self._lock:
            return self._db.execute(
                "SELECT seq, t_ns, body FROM samples WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                (after_seq, _NO_END if before_seq is None else before_seq, limit),
            ).fetchall()

    def batch(self, after_seq: int, limit: int, before_seq: int | None = None) -> SpooledSamples | None:
        """Up to ``limit`` samples with after_seq < seq (< before_seq), oldest first, as one
        message's samples (None if there are none).

        SQLite joins the samples' JSON itself: one string for the batch instead of a Python row
        per sample (at 50,000 scans/s, fetching rows was a fifth of the publisher's work). They
        come in the order SQLite reads them, which is seq order; nothing downstream depends on it
        (the bridge sorts what it confirms).
        """
        with self._lock:
            first, last, count, oldest_t_ns, samples = self._db.execute(
                "SELECT min(seq), max(seq), count(*), min(t_ns), group_concat(body, ',') FROM"
                " (SELECT seq, t_ns, body FROM samples WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?)",
                (after_seq, _NO_END if before_seq is None else before_seq, limit),
            ).fetchone()
        if not count:
            return None
        return SpooledSamples(first, last, count, oldest_t_ns, samples)

    def count(self, first_seq: int, last_seq: int | None) -> int:
        """How many samples first..last (inclusive; None: to the end) are stored."""
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM samples WHERE seq BETWEEN ? AND ?",
                (first_seq, _NO_END if last_seq is None else last_seq),
            ).fetchone()
        return int(count)

    def remove(self, first_seq: int, last_seq: int) -> int:
        """Forget samples first..last (inclusive): the bridge stored them. Returns how many."""
        with self._lock, self._db:
            cur = self._db.execute("DELETE FROM samples WHERE seq BETWEEN ? AND ?", (first_seq, last_seq))
            self.depth -= cur.rowcount
            return cur.rowcount

    def sent_ranges(self) -> list[tuple[int, int]]:
        """The ranges last saved by ``save_sent``."""
        with self._lock:
            rows = self._db.execute("SELECT first, last FROM sent ORDER BY first").fetchall()
        return [(int(a), int(b)) for a, b in rows]

    def save_sent(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Replace the saved ranges of published, unconfirmed samples (one transaction)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM sent")
            self._db.executemany("INSERT INTO sent VALUES (?, ?)", list(ranges))

    def oldest_t_ns(self) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT t_ns FROM samples ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()


_INT64 = range(-(2**63), 2**63)


def _valid(value: object) -> bool:
    """What a sample value can be: a bool, a finite float, an integer InfluxDB can hold."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value in _INT64
    return isinstance(value, float) and math.isfinite(value)


_ENCODER = msgspec.json.Encoder()


def _encode_all(first_seq: int, readings: Sequence[Reading]) -> tuple[list[str], int]:
    """The samples' JSON objects (sequence numbers from ``first_seq``), and how many values were
    invalid, in one encoder call.

    When every value of the append is a float and their exact sum (``math.fsum``) is finite, no
    value is nan or infinite (either would make the sum so), so the values are taken as they are,
    checked once for the whole append; otherwise (an integer, a bool, a bad value, or a sum that
    overflows) each sample goes through ``_checked``, value by value.
    """
    values = [v for r in readings for v in r.values.values()]
    try:
        fast = set(map(type, values)) <= {float} and math.isfinite(math.fsum(values))
    except (OverflowError, ValueError):  # inf - inf, or finite values whose sum overflows
        fast = False
    if fast:
        samples = [
            {"seq": seq, "t_ns": r.t_ns, "values": r.values, "flags": sorted(set(r.flags))}
            if r.flags
            else {"seq": seq, "t_ns": r.t_ns, "values": r.values}
            for seq, r in enumerate(readings, first_seq)
        ]
        invalid = 0
    else:
        checked = [_checked(seq, r) for seq, r in enumerate(readings, first_seq)]
        samples = [sample for sample, _ in checked]
        invalid = sum(bad for _, bad in checked)
    # One line per sample: a newline inside a string is escaped, so only the separators split.
    return _ENCODER.encode_lines(samples).decode()[:-1].split("\n"), invalid


def _checked(seq: int, reading: Reading) -> tuple[dict[str, object], int]:
    """The sample as it may travel, and how many values were invalid. A value that cannot travel
    (nan, inf, an integer beyond 64 bits, anything not a number) is left out and named in the
    flags (``invalid:<name>``), so that one bad value never costs its message's other samples."""
    values = {}
    flags = list(reading.flags)
    for name, value in reading.values.items():
        if _valid(value):
            values[name] = value
        else:
            flags.append(f"invalid:{name}")
    sample: dict[str, object] = {"seq": seq, "t_ns": reading.t_ns, "values": values}
    if flags:
        sample["flags"] = sorted(set(flags))
    return sample, len(reading.values) - len(values)
