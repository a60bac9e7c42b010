"""The run controller's durable journal: what it did, on disk before anyone hears of it.

SQLite (WAL, every write fsynced): the records (run events and the run's commands with their
results, ``soclab.journal/1``), each under a sequence number that is never reused, kept until the
bridge confirms it stored them (``soclab.stored/1`` on ``.../run/stored``); and the active run
(its document and start), so that a controller that starts again after kill -9 or a reboot
finds the run it was executing. Time stamps are strictly increasing, so no two records of a run
share an InfluxDB identity (measurement, tags, time).

One process (the run controller) owns the file; its methods are called from its threads, so a
lock guards the connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, t_ns INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_seq', 0), ('last_t_ns', 0);
CREATE TABLE IF NOT EXISTS active (one INTEGER PRIMARY KEY CHECK (one = 1), document TEXT NOT NULL,
                                   started_ns INTEGER NOT NULL);
"""


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Store one record (``t_ns`` and ``run_event`` or ``command``); it with its ``seq``."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            seq, last = (self._meta("next_seq"), self._meta("last_t_ns"))
            t_ns = max(int(record.get("t_ns") or time.time_ns()), last + 1)
            stored = {**record, "seq": seq, "t_ns": t_ns}
            self._db.execute("INSERT INTO records VALUES (?, ?, ?)", (seq, t_ns, json.dumps(stored)))
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'last_t_ns'", (t_ns,))
            return stored

    def unconfirmed(self, limit: int = 10_000) -> list[dict[str, Any]]:
        """Records the bridge has not confirmed yet, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT body FROM records ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [json.loads(body) for (body,) in rows]

    def confirmed(self, ranges: list[list[int]]) -> int:
        """The bridge stored these (inclusive ranges of seq): forget them. Returns how many."""
        removed = 0
        with self._lock, self._db:
            for first, last in ranges:
                removed += self._db.execute(
                    "DELETE FROM records WHERE seq BETWEEN ? AND ?", (first, last)
                ).rowcount
        return removed

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    # --- the active run -------------------------------------------------------------------------
    def begin(self, document: dict[str, Any], started_ns: int) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO active VALUES (1, ?, ?)", (json.dumps(document), started_ns)
            )

    def end(self) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM active")

    def active(self) -> tuple[dict[str, Any], int] | None:
        """The run that was executing when the process last stopped (or was killed), if any."""
        with self._lock:
            row = self._db.execute("SELECT document, started_ns FROM active").fetchone()
        return None if row is None else (json.loads(row[0]), int(row[1]))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])
