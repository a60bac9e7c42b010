"""One battery, several processes: the owner's ``BatteryState`` snapshots in a small shared file.

The simulated lab owns the battery (its MPPT and load simulators act on it); the LabJack stand-in
runs inside the LabJack publisher's process and must see the same battery. The owner writes a
snapshot each tick (about 50 a second) into a memory-mapped file; readers map the same file and
take the latest snapshot, or interpolate between the last two (a 10 kHz stream asks for many
instants between two ticks).

Layout, little-endian, 24 + 2 * 80 bytes::

    header   8s magic b"SOCLBAT1" | u32 layout version | u32 record size | u64 sequence
    record 0 the latest snapshot, record 1 the one before it:
             i64 t_ns (wall clock at the write) | 8 x f64 (t_s, soc, ocv_v, voltage_v, current_a,
             charged_ah, discharged_ah, temperature_degc) | u32 CRC-32 of the preceding bytes | u32 0

Consistency is a sequence lock: the writer makes the sequence odd, writes both records, makes it
even; a reader copies the records between two reads of the sequence and keeps the copy only if both
are the same even number. Python gives no memory barriers, so each record also carries a CRC-32: a
reader on a weakly ordered CPU (the Pi's ARM) still never accepts a torn record. One writer per
file. The writer makes the file complete under a temporary name and renames it into place, so no
reader maps half a file; a reader follows a restarted writer's new file by its inode.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import time
import zlib
from dataclasses import fields
from pathlib import Path

from soclab.dev.sim.battery import BatteryState

MAGIC = b"SOCLBAT1"
LAYOUT_VERSION = 1
_HEADER = struct.Struct("<8sIIQ")
_SEQ = struct.Struct("<Q")
_SEQ_AT = 16
_FIELDS = tuple(f.name for f in fields(BatteryState))
_BODY = struct.Struct("<q" + "d" * len(_FIELDS))
_RECORD = struct.Struct(f"<{_BODY.size}sII")
_RECORDS_AT = _HEADER.size
SIZE = _HEADER.size + 2 * _RECORD.size

Snapshot = tuple[int, BatteryState]


class SharedBatteryError(Exception):
    """Base of the shared battery file's errors."""


class BatteryStateMissing(SharedBatteryError):
    """No file yet, or nothing written to it yet (is the simulated lab running?)."""


class BatteryStateStale(SharedBatteryError):
    """The latest snapshot is older than allowed: the writer stopped."""


class BatteryStateCorrupt(SharedBatteryError):
    """Not a battery state file, or no consistent snapshot could be read."""


def _pack(t_ns: int, state: BatteryState) -> bytes:
    body = _BODY.pack(t_ns, *(float(getattr(state, name)) for name in _FIELDS))
    return _RECORD.pack(body, zlib.crc32(body), 0)


def _unpack(raw: bytes) -> Snapshot | None:
    """A record, or None if never written; BatteryStateCorrupt if its CRC is wrong."""
    body, crc, _ = _RECORD.unpack(raw)
    if zlib.crc32(body) != crc:
        raise BatteryStateCorrupt("record CRC mismatch")
    t_ns, *values = _BODY.unpack(body)
    if t_ns == 0:
        return None
    return t_ns, BatteryState(**dict(zip(_FIELDS, values, strict=True)))


def interpolate(a: Snapshot, b: Snapshot, t_ns: int) -> BatteryState:
    """The state at ``t_ns``, linear between snapshots ``a`` and ``b``; held outside them."""
    (ta, sa), (tb, sb) = sorted((a, b), key=lambda s: s[0])
    if t_ns <= ta or tb == ta:
        return sa if t_ns <= ta else sb
    if t_ns >= tb:
        return sb
    w = (t_ns - ta) / (tb - ta)
    return BatteryState(**{n: (1 - w) * getattr(sa, n) + w * getattr(sb, n) for n in _FIELDS})


class BatteryStateWriter:
    """The owner's side: ``write(state)`` each tick. Creates (replaces) the file at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        blank = _RECORD.pack(bytes(_BODY.size), zlib.crc32(bytes(_BODY.size)), 0)
        tmp.write_bytes(_HEADER.pack(MAGIC, LAYOUT_VERSION, _RECORD.size, 0) + blank + blank)
        os.replace(tmp, self.path)
        self._file = open(self.path, "r+b")  # noqa: SIM115 - kept open with the mapping
        self._map = mmap.mmap(self._file.fileno(), SIZE)
        self._seq = 0
        self._latest: bytes | None = None

    def write(self, state: BatteryState, t_ns: int | None = None) -> None:
        """Publish ``state`` as of ``t_ns`` (default: now, wall clock)."""
        record = _pack(time.time_ns() if t_ns is None else t_ns, state)
        previous = self._latest if self._latest is not None else record
        self._seq += 1
        _SEQ.pack_into(self._map, _SEQ_AT, self._seq)  # odd: writing
        self._map[_RECORDS_AT : _RECORDS_AT + 2 * _RECORD.size] = record + previous
        self._seq += 1
        _SEQ.pack_into(self._map, _SEQ_AT, self._seq)  # even: consistent
        self._latest = record

    def close(self, *, unlink: bool = False) -> None:
        with contextlib.suppress(ValueError):  # already closed
            self._map.close()
        self._file.close()
        if unlink:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> BatteryStateWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BatteryStateReader:
    """A reader's side: ``read()`` the latest snapshot, ``pair()`` the last two, ``at(t_ns)``."""

    def __init__(self, path: str | Path, *, max_age_s: float = 1.0, max_wait_s: float = 0.05) -> None:
        self.path = Path(path)
        self.max_age_ns = int(max_age_s * 1e9)
        self.max_wait_s = max_wait_s  # for a consistent copy while the writer is mid-write
        self.torn_reads = 0  # copies thrown away because the writer was writing: expected, rare
        self._map: mmap.mmap | None = None
        self._inode: int | None = None

    def read(self) -> Snapshot:
        """The latest snapshot ``(t_ns, state)``; typed errors if missing, stale or corrupt."""
        return self.pair()[0]

    def pair(self) -> tuple[Snapshot, Snapshot]:
        """The latest snapshot and the one before it (the same one after the first write)."""
        latest, previous = self._consistent()
        age = time.time_ns() - latest[0]
        if age > self.max_age_ns:
            raise BatteryStateStale(
                f"{self.path}: latest battery state is {age / 1e9:.1f} s old (allowed"
                f" {self.max_age_ns / 1e9:g} s): is the simulated lab running?"
            )
        return latest, previous

    def at(self, t_ns: int) -> BatteryState:
        latest, previous = self.pair()
        return interpolate(previous, latest, t_ns)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
            self._inode = None

    # --- internals ------------------------------------------------------------------------------
    def _mapping(self) -> mmap.mmap:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.close()
            raise BatteryStateMissing(
                f"{self.path}: no battery state file (is the simulated lab running?)"
            ) from None
        if self._map is not None and st.st_ino == self._inode:
            return self._map
        self.close()  # first use, or the writer was restarted (a new file)
        if st.st_size != SIZE:
            raise BatteryStateCorrupt(f"{self.path}: {st.st_size} bytes, a battery state file has {SIZE}")
        with open(self.path, "rb") as f:
            m = mmap.mmap(f.fileno(), SIZE, access=mmap.ACCESS_READ)
        magic, version, record_size, _ = _HEADER.unpack_from(m, 0)
        if magic != MAGIC or version != LAYOUT_VERSION or record_size != _RECORD.size:
            m.close()
            raise BatteryStateCorrupt(f"{self.path}: not a battery state file of layout {LAYOUT_VERSION}")
        self._map, self._inode = m, st.st_ino
        return m

    def _consistent(self) -> tuple[Snapshot, Snapshot]:
        m = self._mapping()
        deadline = time.monotonic() + self.max_wait_s
        problem = "the writer stayed mid-write"
        while True:
            s1 = _SEQ.unpack_from(m, _SEQ_AT)[0]
            if s1 == 0:
                raise BatteryStateMissing(f"{self.path}: nothing written yet (is the simulated lab running?)")
            if not s1 & 1:
                raw = m[_RECORDS_AT : _RECORDS_AT + 2 * _RECORD.size]
                if _SEQ.unpack_from(m, _SEQ_AT)[0] == s1:
                    try:
                        latest = _unpack(raw[: _RECORD.size])
                        previous = _unpack(raw[_RECORD.size :])
                    except BatteryStateCorrupt as exc:
                        problem = str(exc)
                    else:
                        if latest is not None:
                            return latest, previous or latest
                        problem = "sequence says written, record is empty"
            self.torn_reads += 1
            if time.monotonic() >= deadline:
                raise BatteryStateCorrupt(
                    f"{self.path}: no consistent snapshot within {self.max_wait_s} s: {problem}"
                )
            time.sleep(0)
