"""Exact transcripts for serial drivers, after PyMeasure's ``expected_protocol``.

A ``Transcript`` is a serial port (and the factory that opens it) that knows, step by step, what
the driver must write and what the device answers. Bytes the device sends by itself (a ThingSet
publication) are steps too: one is released each time the driver waits for input with nothing
left to read, so they interleave with requests exactly as the transcript says. A ``Vanish`` step
is the USB cable pulled: reads and writes fail with EIO and the port cannot be opened again
until ``refused_opens`` attempts have failed.

The test fails on a write the transcript does not expect (at once, and again in ``assert_done``
should the driver swallow the AssertionError), and ``assert_done`` fails on a step not used or
a byte left unread. Nothing here waits on the wall clock beyond the port's own read timeout.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import serial

DATA = Path(__file__).parent / "data"
THINGSET = DATA / "thingset-mppt-1210-hus"


@dataclass(frozen=True)
class Exchange:
    """The driver writes ``write`` (exactly); the device answers ``answer`` (maybe nothing)."""

    write: bytes
    answer: bytes = b""


@dataclass(frozen=True)
class Unsolicited:
    """The device sends ``data`` by itself (a publication, a boot banner, garbage)."""

    data: bytes


@dataclass(frozen=True)
class Vanish:
    """The device is unplugged: I/O fails, and ``refused_opens`` opens fail before it is back."""

    refused_opens: int = 0


Step = Exchange | Unsolicited | Vanish


class Transcript:
    """A serial factory (``Transcript(...)`` is passed as ``serial_factory``) and its port."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = list(steps)
        self.cursor = 0
        self.rx = bytearray()
        self.timeout = 0.01
        self.opened: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.closed = True
        self.errors: list[str] = []
        self._vanished = False
        self._refusals = 0
        self._lock = threading.RLock()

    # --- building -------------------------------------------------------------------------------------
    @classmethod
    def hex(cls, pairs: list[tuple[str, str]]) -> Transcript:
        """From ``(written, answered)`` pairs in hex, as PROTOCOLS.md writes the e-load's captures."""
        return cls([Exchange(bytes.fromhex(w), bytes.fromhex(a)) for w, a in pairs])

    @classmethod
    def thingset(cls, source: str | Path) -> Transcript:
        """From a ThingSet transcript (a file of ``tests/data`` or its text): ``> request``, ``< answer``
        (``< (no answer...)``: none), and publications (``#...``) the device sends by itself."""
        return cls(thingset_steps(source))

    # --- the factory ----------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Transcript:
        with self._lock:
            if self._refusals:
                self._refusals -= 1
                raise serial.SerialException(
                    f"could not open port {args[0] if args else '?'}: no such device"
                )
            self.opened.append((args, kwargs))
            self.timeout = min(float(kwargs.get("timeout", self.timeout) or 0.0), 0.05)
            self.closed = False
            self._vanished = False
            return self

    # --- the port -------------------------------------------------------------------------------------
    @property
    def in_waiting(self) -> int:
        with self._lock:
            self._check_io()
            return len(self.rx)

    def read(self, size: int = 1) -> bytes:
        with self._lock:
            self._check_io()
            if not self.rx:
                self._release_unsolicited()
            if self.rx:
                out = bytes(self.rx[:size])
                del self.rx[:size]
                return out
        time.sleep(self.timeout)  # what a serial port does when nothing comes
        return b""

    def write(self, data: bytes, /) -> int:
        with self._lock:
            self._check_io()
            step = self.steps[self.cursor] if self.cursor < len(self.steps) else None
            if not isinstance(step, Exchange) or step.write != data:
                wanted = step.write if isinstance(step, Exchange) else step
                error = f"unexpected write {data!r} at step {self.cursor}; the transcript has {wanted!r}"
                self.errors.append(error)
                raise AssertionError(error)
            self.cursor += 1
            self.rx += step.answer
            return len(data)

    def reset_input_buffer(self) -> None:
        with self._lock:
            self._check_io()
            self.rx.clear()

    def close(self) -> None:
        with self._lock:
            self.closed = True

    def _check_io(self) -> None:
        if self.closed:
            raise serial.PortNotOpenError()
        if self._vanished:
            raise OSError(5, "Input/output error")
        step = self.steps[self.cursor] if self.cursor < len(self.steps) else None
        if isinstance(step, Vanish) and not self.rx:
            self.cursor += 1
            self._vanished, self._refusals = True, step.refused_opens
            raise OSError(5, "Input/output error")

    def _release_unsolicited(self) -> None:
        step = self.steps[self.cursor] if self.cursor < len(self.steps) else None
        if isinstance(step, Unsolicited):
            self.cursor += 1
            self.rx += step.data

    # --- the verdict ----------------------------------------------------------------------------------
    @property
    def remaining(self) -> list[Step]:
        return self.steps[self.cursor :]

    def assert_done(self) -> None:
        assert not self.errors, self.errors
        assert not self.remaining, f"steps not used: {self.remaining}"
        assert not self.rx, f"bytes left unread: {bytes(self.rx)!r}"


def thingset_steps(source: str | Path) -> list[Step]:
    """The steps of a ThingSet transcript (see ``Transcript.thingset``)."""
    text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
    steps: list[Step] = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        marker, _, rest = raw.partition(" ")
        if marker == ">":
            steps.append(Exchange(rest.encode() + b"\n"))
        elif marker == "<":
            last = steps[-1] if steps else None
            if not isinstance(last, Exchange) or last.answer:
                raise ValueError(f"an answer without its request: {raw!r}")
            if not rest.startswith("(no answer"):
                steps[-1] = Exchange(last.write, rest.encode() + b"\n")
        elif raw.startswith("#"):
            steps.append(Unsolicited(raw.encode() + b"\n"))
        else:
            raise ValueError(f"not a transcript line: {raw!r}")
    return steps
