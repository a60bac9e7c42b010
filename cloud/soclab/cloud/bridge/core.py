"""The bridge's delivery logic, without I/O or threads: what to write, when, what to acknowledge.

``Core`` is a state machine driven by its owner (one thread, see ``service``): it is handed each
received message (``receive``), asked for the next database write (``writes``), told how each
write went (``done``) and when to stop (``stop``). It calls out only through small interfaces:
``Broker`` (publish a dead letter, a confirmation; acknowledge a message), ``Clock``, and a
``release`` callback that frees a message's room in the receive window. Tests drive it with fakes
(``tests/cloud/test_core.py``), as Telegraf tests its consumer; the real-server tests prove the
wiring.

Rules it keeps:

- **Acknowledge only what is settled, in arrival order**: a message is acknowledged once its
  points are written, or once its dead letter is at the broker. The broker redelivers anything
  unacknowledged after a crash or a reconnect; rewriting is harmless (points are identified by
  measurement, tags and time). A message received on an earlier connection (``generation``) is
  not written: its packet id died with the connection and the broker sends it again.
- **Batches**: up to ``[batch] points``, or the oldest waited ``ms``, or no message came for
  ``idle_ms`` (the broker's window may be full: it sends no more until we acknowledge). One write
  is in flight while the next batch forms, so decoding overlaps the database's work; the next
  batch grows until that write is done (or it is full): the busier the database, the larger and
  fewer the writes.
- **Failures**: a write that failed (connection, 5xx, timeout) is retried with exponential backoff
  (``[retry]``) for as long as it takes, and nothing behind it is written first. At ``stop``, for
  ``shutdown_timeout_s`` more; then what is unwritten stays unacknowledged at the broker.
- **Refusals** (HTTP 400/413/422): telemetry lines are taken out first; a batch of several
  messages is split into single messages; a single message into halves, down to the points
  InfluxDB refuses. InfluxDB stores the rest of a refused request ("partial write"), so a message
  may end partly stored: its device is told exactly which samples are stored and which are
  dead-lettered, and the dead letter says which were refused and why.
- **Confirmations**: after each write, one ``soclab.stored/1`` message per device (on ``stored``,
  or ``replay/stored`` for a replay) names the sequence numbers now stored or dead-lettered; a run
  controller's journal (``runs``: run events and command results) is confirmed the same way.
- **Telemetry**: a record of what was stored and dead-lettered is taken at most every
  ``telemetry_interval_s`` (a busy fleet would otherwise add a point per device to every write)
  and at stop; it rides on the next data write, or goes alone when no data follows; its lines keep
  their time stamp when written again.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from soclab.cloud.bridge import runs
from soclab.cloud.bridge.deadletter import dead_letter
from soclab.cloud.bridge.intake import Accepted, Intake, Rejected, merge_ranges, seq_ranges
from soclab.cloud.bridge.telemetry import Delivered, Telemetry, device_of, status_lines
from soclab.wire import STORED_SCHEMA

log = logging.getLogger("soclab.cloud.bridge")

COUNTERS = (
    "messages_received",
    "messages_invalid",
    "points_written",
    "points_refused",
    "batches_written",
    "write_errors",
    "write_retries",
    "acked",
    "redeliveries_expected",
    "reconnects",
    "confirmations_published",
    "telemetry_dropped",
)
IDLE_TICK_S = 0.05  # how often the owner calls in when nothing is due (dead letters to settle)
_DROPPED = re.compile(r"dropped=(\d+)")


# --- the interfaces ----------------------------------------------------------------------------


class Clock(Protocol):
    """``time`` itself; a fake in tests."""

    def monotonic(self) -> float: ...

    def time_ns(self) -> int: ...


class Published(Protocol):
    def is_published(self) -> bool: ...


class Broker(Protocol):
    """The MQTT side as the core sees it (``service.MqttBroker``; a fake in tests)."""

    @property
    def generation(self) -> int:
        """Counts connections: a message's packet id is valid only in its own generation."""
        ...

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Published: ...

    def ack(self, mid: int, qos: int, generation: int) -> bool:
        """Acknowledge if ``generation`` is still the connected one; whether it was sent."""
        ...


# --- what passes between the core and its owner -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """One MQTT message as the network thread hands it over."""

    mid: int
    qos: int
    topic: str
    payload: bytes
    generation: int
    received_ns: int


@dataclass(frozen=True, slots=True)
class Stored:
    """The write succeeded: every point is in the database."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The write may succeed later (connection, timeout, 5xx, 429, also 401/403/404)."""

    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """The database refused points of this write (400/413/422); it may have stored the others."""

    reason: str


Outcome = Stored | Failed | Refused


@dataclass(eq=False, slots=True)
class Write:
    """One request for the sink: ``body`` is line protocol."""

    body: bytes
    job: _Job


@dataclass(frozen=True)
class Settings:
    batch_points: int = 5000
    batch_ms: float = 100.0
    idle_ms: float = 5.0
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    shutdown_timeout_s: float = 10.0
    consumer: str = "soclab-bridge/bridge"  # names the bridge in dead letters and confirmations
    fallback_deadletter_topic: str = "soclab-bridge/bridge/deadletter"
    excerpt_bytes: int = 64 * 1024
    telemetry_interval_s: float = 0.0  # a telemetry record at most this often (0: with every write)


class Counters:
    """The bridge's counters: written by the core, read by anyone (hence the lock)."""

    def __init__(self) -> None:
        self._values = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


# --- the core's own records ----------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Entry:
    """A received message on its way to its acknowledgement."""

    received: Received
    accepted: Accepted | None = None  # a data message's points
    confirm: tuple[str, list[list[int]]] | None = None  # a run journal's: (topic, its records' seqs)
    body: bytes = b""  # its line protocol (data or status)
    points: int = 0
    resolved: bool = False  # written, dead-lettered or stale: its room in the window is free
    written: bool = False
    dead_letter: Published | None = None
    refused: list[int] = field(default_factory=list)  # indices of points the database refused
    refusal: str = ""  # the database's first reason
    parts: int = 0  # writes of parts of it still to come


@dataclass(eq=False, slots=True)
class _Job:
    """A write to make: whole messages, or some lines of one (``lines``), and telemetry."""

    entries: list[_Entry]
    lines: list[bytes] | None = None
    first: int = 0  # index of lines[0] among the message's points
    telemetry: list[bytes] = field(default_factory=list)


class Core:
    def __init__(
        self,
        settings: Settings,
        *,
        intake: Intake,
        telemetry: Telemetry,
        broker: Broker,
        clock: Clock = time,
        release: Callable[[int], None] = lambda size: None,
        counters: Counters | None = None,
    ) -> None:
        self.settings = settings
        self.intake = intake
        self.telemetry = telemetry
        self.broker = broker
        self.clock = clock
        self.release = release
        self.counters = counters or Counters()
        self.last_error: str | None = None
        self._ledger: collections.deque[_Entry] = collections.deque()
        self._forming: list[_Entry] = []
        self._forming_points = 0
        self._forming_since = 0.0
        self._last_arrival = 0.0
        self._jobs: collections.deque[_Job] = collections.deque()
        self._inflight: Write | None = None
        self._retry_at: float | None = None
        self._delay = settings.retry_initial_s
        self._detached: list[bytes] = []  # telemetry lines taken out of a refused write
        self._telemetry_at = 0.0  # when the next telemetry record may be taken
        self._received = 0
        self._resolved = 0
        self._pending_bytes = 0
        self._stopping = False
        self._give_up_at = 0.0
        self._settle_until: float | None = None
        self._gave_up = False

    # --- events ----------------------------------------------------------------------------------

    def receive(self, received: Received) -> None:
        """Take one message: into the forming batch, or dead-lettered, or dropped as stale."""
        now = self.clock.monotonic()
        self._last_arrival = now
        self._received += 1
        self.counters.add("messages_received")
        entry = _Entry(received)
        self._pending_bytes += len(received.payload)
        if received.generation != self.broker.generation:
            self._resolve(entry, stale=True)
            return
        self._ledger.append(entry)
        try:
            if runs.is_run_topic(received.topic):  # a run journal, a command result, a run status
                lines, ranges = runs.lines(received.topic, received.payload)
                entry.body, entry.points = "\n".join(lines).encode(), len(lines)
                entry.confirm = (runs.confirmations(received.topic), ranges) if ranges else None
            elif received.topic.endswith("/status"):
                entry.body = "\n".join(status_lines(received.topic, received.payload)).encode()
                entry.points = 1
            else:
                accepted = self.intake.accept(received.topic, received.payload, received.received_ns)
                entry.accepted, entry.body, entry.points = accepted, accepted.body, accepted.samples
        except Rejected as exc:
            self._dead_letter(entry, exc.reason)
            return
        except Exception as exc:  # a bug met by this payload: keep it as a dead letter, go on
            log.error("event=intake_error topic=%s error=%r", received.topic, repr(exc), exc_info=exc)
            self._dead_letter(entry, f"bridge error: {type(exc).__name__}: {exc}")
            return
        if not self._forming:
            self._forming_since = now
        self._forming.append(entry)
        self._forming_points += entry.points
        if self._forming_points >= self.settings.batch_points:
            self._cut()

    def writes(self) -> list[Write]:
        """The writes to hand to the sink now (at most one is in flight)."""
        now = self.clock.monotonic()
        s = self.settings
        free = self._inflight is None and not self._jobs
        if self._forming and (
            self._stopping
            or (free and now >= self._forming_since + s.batch_ms / 1000)
            or (free and now >= self._last_arrival + s.idle_ms / 1000)
        ):
            self._cut()  # while a write is in flight the batch grows (up to batch_points) instead
        if self._stopping and now >= self._give_up_at and (self._jobs or self._inflight):
            self._give_up()
            return []
        if self._inflight is not None or (self._retry_at is not None and now < self._retry_at):
            return []
        if self._retry_at is not None:
            self._retry_at = None
            self.counters.add("write_retries")
        while self._jobs:
            job = self._jobs.popleft()
            write = self._prepare(job)
            if write is not None:
                self._inflight = write
                return [write]
        if not self._forming and (self._detached or self._telemetry_due(now)):
            lines = self._detached + (self._take_telemetry(now) if self._telemetry_due(now) else [])
            self._detached = []
            self._inflight = Write(b"\n".join(lines), _Job([], telemetry=lines))
            return [self._inflight]
        return []

    def done(self, write: Write, outcome: Outcome) -> None:
        """How the sink's write went."""
        if write is not self._inflight:
            raise ValueError("done() for a write that is not in flight")
        self._inflight = None
        job = write.job
        if isinstance(outcome, Failed):
            self._failed(job, outcome)
        elif isinstance(outcome, Refused):
            self._delay = self.settings.retry_initial_s
            self._refused(job, outcome.reason)
        else:
            self._delay = self.settings.retry_initial_s
            self._stored(job)

    def stop(self) -> None:
        """Write what was received, then finish; a failing write is retried ``shutdown_timeout_s`` more."""
        if not self._stopping:
            self._stopping = True
            self._give_up_at = self.clock.monotonic() + self.settings.shutdown_timeout_s
            if self._retry_at is not None:  # the pause is cut short: retry now, then until the deadline
                self._retry_at = self.clock.monotonic()

    def acknowledge(self) -> None:
        """Acknowledge settled messages from the oldest on, stopping at the first unsettled one."""
        generation = self.broker.generation
        while self._ledger:
            entry = self._ledger[0]
            r = entry.received
            stale = r.generation != generation
            if not stale and not _settled(entry):
                return
            self._ledger.popleft()
            if stale:
                self._resolve(entry, stale=True)
                continue
            if r.qos and self.broker.ack(r.mid, r.qos, r.generation):
                self.counters.add("acked")

    # --- for the owner ---------------------------------------------------------------------------

    def wait_s(self) -> float:
        """How long the owner may wait for the next event before calling ``writes()`` again."""
        now = self.clock.monotonic()
        s = self.settings
        wait = IDLE_TICK_S
        if self._forming and self._inflight is None and not self._jobs:
            due = min(self._forming_since + s.batch_ms / 1000, self._last_arrival + s.idle_ms / 1000)
            wait = min(wait, due - now)
        if self._retry_at is not None and self._inflight is None:
            wait = min(wait, self._retry_at - now)
        busy = self._forming or self._jobs or self._inflight is not None or self._retry_at is not None
        if self.telemetry.pending and not busy:
            wait = min(wait, self._telemetry_at - now)  # a record alone when due
        return max(0.0, wait)

    @property
    def idle(self) -> bool:
        """Nothing to write: no batch forming, queued or in flight, no telemetry waiting."""
        return not (self._forming or self._jobs or self._inflight or self.telemetry.pending or self._detached)

    def finished(self) -> bool:
        """After ``stop()``: everything written (or given up) and dead letters settled."""
        if not self._stopping:
            return False
        if self._gave_up:
            return True
        if not self.idle:
            return False
        now = self.clock.monotonic()
        if self._settle_until is None:  # give the broker a moment to confirm dead letters
            self._settle_until = now + min(self.settings.shutdown_timeout_s, 5.0)
        return not self._ledger or now >= self._settle_until

    def gauges(self) -> dict[str, int]:
        return {
            "pending_messages": self._received - self._resolved,
            "pending_bytes": self._pending_bytes,
            "unacked_messages": len(self._ledger),
        }

    # --- writing ---------------------------------------------------------------------------------

    def _telemetry_due(self, now: float) -> bool:
        return self.telemetry.pending and (self._stopping or now >= self._telemetry_at)

    def _take_telemetry(self, now: float) -> list[bytes]:
        self._telemetry_at = now + self.settings.telemetry_interval_s
        return self.telemetry.take(self.clock.time_ns())

    def _cut(self) -> None:
        self._jobs.append(_Job(self._forming))
        self._forming, self._forming_points = [], 0

    def _prepare(self, job: _Job) -> Write | None:
        """The job's write, without messages that went stale meanwhile; None if nothing is left."""
        if not job.entries:  # telemetry alone
            return Write(b"\n".join(job.telemetry), job)
        generation = self.broker.generation
        live = []
        for entry in job.entries:
            if entry.received.generation == generation:
                live.append(entry)
            else:
                self._resolve(entry, stale=True)
        if not live:
            self._detached.extend(job.telemetry)
            return None
        job.entries = live
        if job.lines is not None:
            return Write(b"\n".join(job.lines), job)
        if not job.telemetry and not self._detached and self._telemetry_due(self.clock.monotonic()):
            job.telemetry = self._take_telemetry(self.clock.monotonic())
        body = b"\n".join(e.body for e in live)
        if job.telemetry:
            body += b"\n" + b"\n".join(job.telemetry)
        return Write(body, job)

    def _stored(self, job: _Job) -> None:
        self.counters.add("batches_written")
        if job.lines is not None:
            entry = job.entries[0]
            self.counters.add("points_written", len(job.lines))
            entry.parts -= 1
            if entry.parts == 0:
                self._finish_parts(entry)
            return
        self.counters.add("points_written", sum(e.points for e in job.entries))
        for entry in job.entries:
            self._written(entry)
        self._confirm([e for e in job.entries if e.accepted or e.confirm], "stored")

    def _written(self, entry: _Entry) -> None:
        entry.written = True
        self._resolve(entry)
        accepted = entry.accepted
        if accepted is not None:
            self.intake.learn(accepted)
            self.telemetry.stored(_delivered(accepted, entry.received.received_ns, accepted.samples))

    def _failed(self, job: _Job, outcome: Failed) -> None:
        s = self.settings
        self.counters.add("write_errors")
        self.last_error = f"write failed: {outcome.reason}"
        pause = min(max(self._delay, outcome.retry_after or 0.0), s.retry_max_s)
        log.warning(
            "event=write_failed error=%r messages=%d retry_in_s=%.1f", outcome.reason, len(job.entries), pause
        )
        now = self.clock.monotonic()
        self._retry_at = min(now + pause, self._give_up_at) if self._stopping else now + pause
        self._delay = min(self._delay * 2, s.retry_max_s)
        self._jobs.appendleft(job)

    def _refused(self, job: _Job, reason: str) -> None:
        if job.telemetry and job.entries:  # try the data alone; the telemetry goes alone later
            log.warning("event=write_refused error=%r (again without telemetry)", reason)
            self._detached.extend(job.telemetry)
            job.telemetry = []
            self._jobs.appendleft(job)
            return
        if not job.entries:
            log.error("event=telemetry_refused lines=%d error=%r (dropped)", len(job.telemetry), reason)
            self.counters.add("telemetry_dropped", len(job.telemetry))
            return
        if job.lines is None and len(job.entries) > 1:
            log.warning(
                "event=batch_refused messages=%d error=%r (writing one by one)", len(job.entries), reason
            )
            self._jobs.extendleft(_Job([e]) for e in reversed(job.entries))
            return
        entry = job.entries[0]
        entry.refusal = entry.refusal or reason
        if job.lines is None:
            lines, first = entry.body.split(b"\n"), 0
        else:
            lines, first = job.lines, job.first
            entry.parts -= 1
        dropped = _DROPPED.search(reason)
        if len(lines) == 1 or (dropped is not None and int(dropped.group(1)) >= len(lines)):
            entry.refused.extend(range(first, first + len(lines)))
            if entry.parts == 0:
                self._finish_parts(entry)
            return
        half = len(lines) // 2
        entry.parts += 2
        # extendleft puts them in reverse: the first half is written first
        self._jobs.extendleft([_Job([entry], lines[half:], first + half), _Job([entry], lines[:half], first)])

    def _finish_parts(self, entry: _Entry) -> None:
        """All parts of a refused message are written or refused: tell the device which is which."""
        if not entry.refused:
            self._written(entry)
            self._confirm([entry], "stored")
            return
        refused = sorted(entry.refused)
        self.counters.add("points_refused", len(refused))
        accepted = entry.accepted
        if accepted is None:  # a status message (one point) or a run's: dead-lettered whole
            self._dead_letter(entry, f"InfluxDB refused the points: {entry.refusal}")
            if entry.confirm is not None:  # the run controller stops sending them again
                self._publish_confirmation(entry.confirm[0], {"dead_lettered": entry.confirm[1]})
            return
        refused_set = set(refused)
        stored = [seq for i, seq in enumerate(accepted.seqs) if i not in refused_set]
        which = ", ".join(f"samples/{i}" for i in refused[:5]) + (", ..." if len(refused) > 5 else "")
        if stored:
            reason = (
                f"InfluxDB refused {len(refused)} of {accepted.samples} points ({which}); "
                f"the other {len(stored)} are stored: {entry.refusal}"
            )
            # A partly refused message teaches the intake nothing (no learn()).
            self.telemetry.stored(_delivered(accepted, entry.received.received_ns, len(stored)))
        else:
            reason = f"InfluxDB refused the points: {entry.refusal}"
        entry.written = True
        self._dead_letter(entry, reason)
        self._publish_confirmation(
            accepted.where.confirmations,
            {
                "stored": seq_ranges(stored) if stored else [],
                "dead_lettered": merge_ranges((accepted.seqs[i], accepted.seqs[i]) for i in refused),
            },
        )

    def _give_up(self) -> None:
        unwritten = sum(1 for e in self._ledger if not e.resolved)
        log.error(
            "event=stop_with_unwritten messages=%d (left unacknowledged: the broker keeps them)", unwritten
        )
        self._gave_up = True

    # --- publishing ------------------------------------------------------------------------------

    def _confirm(self, entries: list[_Entry], outcome: str) -> None:
        """Tell each device which of its samples are stored: one message per device and topic."""
        by_topic: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        for entry in entries:
            accepted = entry.accepted
            if accepted is not None:
                by_topic[accepted.where.confirmations].extend((a, b) for a, b in accepted.ranges)
            elif entry.confirm is not None:
                by_topic[entry.confirm[0]].extend((a, b) for a, b in entry.confirm[1])
        for topic, ranges in by_topic.items():
            self._publish_confirmation(topic, {outcome: merge_ranges(ranges)})

    def _publish_confirmation(self, topic: str, ranges: dict[str, list[list[int]]]) -> None:
        message: dict[str, object] = {
            "schema": STORED_SCHEMA,
            "consumer": self.settings.consumer,
            "t_ns": self.clock.time_ns(),
        }
        message.update({k: v for k, v in ranges.items() if v})
        self.broker.publish(topic, msgspec.json.encode(message), qos=1)
        self.counters.add("confirmations_published")

    def _dead_letter(self, entry: _Entry, reason: str) -> None:
        r = entry.received
        s = self.settings
        self.counters.add("messages_invalid")
        self.telemetry.dead_lettered(device_of(r.topic))
        log.warning("event=dead_letter topic=%s reason=%r bytes=%d", r.topic, reason[:1000], len(r.payload))
        topic, payload = dead_letter(
            r.topic,
            r.payload,
            reason,
            received_ns=r.received_ns,
            consumer=s.consumer,
            fallback_topic=s.fallback_deadletter_topic,
            excerpt_bytes=s.excerpt_bytes,
        )
        entry.dead_letter = self.broker.publish(topic, payload, qos=1)
        self._resolve(entry)

    def _resolve(self, entry: _Entry, stale: bool = False) -> None:
        """Free the message's room in the window (once)."""
        if entry.resolved:
            return
        entry.resolved = True
        self._resolved += 1
        size = len(entry.received.payload)
        self._pending_bytes -= size
        self.release(size)
        if stale:  # from an earlier connection: the broker redelivers it, so it is not written now
            self.counters.add("redeliveries_expected")


def _settled(entry: _Entry) -> bool:
    if entry.dead_letter is not None:
        return entry.dead_letter.is_published()
    return entry.written


def _delivered(accepted: Accepted, received_ns: int, samples: int) -> Delivered:
    n = accepted.samples
    return Delivered(
        accepted.where.device,
        samples,
        accepted.where.replay,
        lag_min_ns=received_ns - accepted.t_max,
        lag_max_ns=received_ns - accepted.t_min,
        lag_sum_ns=(received_ns * n - accepted.t_sum) * samples // n,
    )
