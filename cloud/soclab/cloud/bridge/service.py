"""The bridge: MQTT data messages in, InfluxDB points out, each message acknowledged once stored.

Delivery. The MQTT session is persistent (fixed client id, MQTT 3.1.1 ``clean_session=False``,
QoS 1 subscription), and paho runs with ``manual_ack=True``: a message is acknowledged only after
its points were written (or after it was dead-lettered). Until then the broker keeps it, and
redelivers it after a crash or reconnect; the rewrite is harmless because points are identified by
measurement + tags + time (``points``). Acknowledgements go out in the order the messages came in
(as MQTT requires), writes happen in that order too, and a failed write is retried with
exponential backoff (``[retry]``) for as long as it takes: nothing is dropped or reordered.

Confirmations. After a write, the bridge tells each device which of its sequence numbers are
now stored: one ``soclab.stored/1`` message (QoS 1) per device and batch on
``soclab/<site>/<node>/<device>/stored``; samples of a valid message that InfluxDB refused are
named as ``dead_lettered``. The publisher keeps samples in its spool until they are confirmed, so
what a broker loses (killed before it saved its queue) is sent again.

Telemetry. The bridge also subscribes to the publishers' retained ``.../status`` and stores each
as a ``soclab_status`` point, and adds to every write one ``soclab_bridge`` point per device
(messages, samples, dead letters, lag from sample time to arrival): ``telemetry`` documents both.
Should InfluxDB refuse a write that carries telemetry, the same messages are written again
without it before any of them is taken for a bad one.

Runs. The bridge also stores the run controllers' journals (``.../run/journal``, confirmed on
``.../run/stored`` like data), every command result (``.../cmd/result``) and the run status
(``runs`` documents the points).

Memory. The broker sends a client at most ``max_inflight_messages`` unacknowledged messages
(Mosquitto's setting, 20 by default: raise it, ``localservices.mosquitto`` uses 1000), so during a
database outage the bridge holds at most that many; the rest wait in the broker's queue for the
session. ``[mqtt] max_pending_messages`` is a second bound in case the broker allows more: the
network thread then waits, and the broker's TCP buffers fill.

Threads. paho's network thread only queues incoming messages (with the connection's generation,
so that acknowledgements are never sent for packet ids of an earlier connection). One writer
thread decodes, batches (up to ``[batch] points``, ``ms``, or a pause of ``idle_ms`` in the
stream: a full window sends nothing until acknowledged), writes, dead-letters and acknowledges. A
status thread publishes counters.

Invalid messages (not JSON, not ``soclab.data/1``, ``source`` not matching the topic, not
representable as points, or refused by InfluxDB itself) are counted, logged with their reason,
republished whole as ``soclab.deadletter/1`` on the device's ``.../deadletter`` topic, and
acknowledged once the broker has the dead letter. A batch that InfluxDB refuses is retried message
by message, so one bad message never takes valid ones with it.

Status. The bridge is not an instrument, so ``soclab.status/1`` (whose source names one) does not
fit; it publishes a retained JSON object on ``soclab-bridge/<id>/status``, outside the
``soclab/`` tree that devices and ACLs are organised by: ``{"bridge": id, "state":
"online"|"offline", "t_ns", "counters", "gauges", "last_error"}``, every ``status_interval_s``,
with ``offline`` as the last will and on a clean stop. ``Bridge.counters()`` gives the same
counters in process.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from soclab.cloud.bridge import runs
from soclab.cloud.bridge.config import BridgeConfig
from soclab.cloud.bridge.intake import Intake, Rejected, dead_letter, merge_ranges
from soclab.cloud.bridge.sink import InfluxSink, WriteFailed, WriteRejected
from soclab.cloud.bridge.telemetry import Telemetry, status_lines
from soclab.wire import STORED_SCHEMA, Topic, encode
from soclab.wire.mqtt import Will, make_client

log = logging.getLogger("soclab.cloud.bridge")
_PAHO_LOG = logging.getLogger("soclab.cloud.bridge.paho")

COUNTERS = (
    "messages_received",
    "messages_invalid",
    "points_written",
    "batches_written",
    "write_errors",
    "write_retries",
    "acked",
    "redeliveries_expected",
    "reconnects",
    "confirmations_published",
)
_IDLE_TICK_S = 0.05  # how often the writer looks for dead letters to acknowledge when idle


@dataclass(slots=True)
class _Received:
    """One MQTT message as the network thread hands it over."""

    mid: int
    qos: int
    topic: str
    payload: bytes
    generation: int
    received_ns: int


@dataclass(slots=True)
class _Entry:
    """A received message on its way to its acknowledgement."""

    received: _Received
    body: bytes = b""  # line protocol of a valid message
    points: int = 0
    resolved: bool = False  # written, dead-lettered or found stale: its slot in the window is free
    written: bool = False
    dead_letter: mqtt.MQTTMessageInfo | None = None
    ranges: list[list[int]] = field(default_factory=list)  # the sequence numbers it carries

    def settled(self) -> bool:
        if self.dead_letter is not None:
            return self.dead_letter.is_published()
        return self.written


class _Stopped(Exception):
    """The shutdown deadline passed while a write was still failing."""


@dataclass
class _Counters:
    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.values)


class Bridge:
    """``with Bridge(config) as bridge:`` consumes until the block ends (or ``stop()``).

    ``start()`` returns at once; the bridge connects (and reconnects) in the background.
    ``wait_subscribed()`` waits for the broker to confirm the subscription: from then on the
    session exists and every message for it is kept until the bridge has stored it.
    """

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config.check()
        self.subscription = Topic.subscription("data", config.site)
        self.status_subscription = Topic.subscription("status", config.site)
        self.run_subscriptions = [Topic.subscription(kind, config.site) for kind in runs.KINDS]
        self.status_topic = f"soclab-bridge/{config.id}/status"
        self.fallback_deadletter_topic = f"soclab-bridge/{config.id}/deadletter"
        self.consumer = f"soclab-bridge/{config.id}"
        self._counters = _Counters()
        self._intake = Intake()
        self._telemetry = Telemetry(config.id)
        i = config.influx
        self._sink = InfluxSink(i.url, i.token, i.org, i.bucket, timeout_ms=i.timeout_ms, gzip=i.gzip)
        self._inbox: queue.SimpleQueue[_Received] = queue.SimpleQueue()
        self._room = threading.Semaphore(config.mqtt.max_pending_messages)
        self._resolved = 0  # messages written, dead-lettered or found stale (writer thread only)
        self._ledger: collections.deque[_Entry] = collections.deque()  # writer thread only
        self._generation = 0
        self._generation_lock = threading.Lock()
        self._connected = False
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._last_error: str | None = None
        self.failure: BaseException | None = None
        self._started = False
        self._client = self._make_client()
        self._writer = threading.Thread(target=self._guard, args=(self._run_writer,), name="bridge-writer")
        self._status = threading.Thread(target=self._guard, args=(self._run_status,), name="bridge-status")

    # --- public -------------------------------------------------------------------------------

    def start(self) -> Bridge:
        c = self.config
        log.info(
            "event=starting bridge=%s broker=%s:%d client_id=%s subscription=%s influx=%s bucket=%s",
            c.id, c.mqtt.host, c.mqtt.port, c.client_id, self.subscription, c.influx.url, c.influx.bucket,
        )  # fmt: skip
        self._started = True
        self._writer.start()
        self._status.start()
        self._client.connect_async(c.mqtt.host, c.mqtt.port, keepalive=c.mqtt.keepalive_s)
        self._client.loop_start()
        return self

    def wait_subscribed(self, timeout: float) -> None:
        """Return once the broker has confirmed the subscription; TimeoutError otherwise."""
        if not self._subscribed.wait(timeout):
            raise TimeoutError(
                f"bridge not subscribed to {self.subscription} after {timeout} s "
                f"(last error: {self._last_error})"
            )

    def wait_finished(self, timeout: float | None = None) -> bool:
        """True once the bridge has stopped or failed (``failure`` then holds the exception)."""
        return self._finished.wait(timeout)

    def counters(self) -> dict[str, int]:
        return self._counters.snapshot()

    def gauges(self) -> dict[str, Any]:
        return {
            "pending_messages": self._counters.values["messages_received"] - self._resolved,
            "unacked_messages": len(self._ledger),
            "connected": self._connected,
        }

    def stop(self) -> None:
        """Write what was received, acknowledge it, publish ``offline``, disconnect.

        If the database is still failing after ``shutdown_timeout_s``, the unwritten messages are
        left unacknowledged: the broker keeps them for the next start.
        """
        if self._stopping.is_set():
            self._finished.wait()
            return
        self._stopping.set()
        if not self._started:
            self._sink.close()
            self._finished.set()
            return
        log.info("event=stopping")
        self._writer.join()
        self._status.join()
        info = self._client.publish(self.status_topic, self._status_payload("offline", "stopped"), 1, True)
        if self._connected:
            with contextlib.suppress(RuntimeError, ValueError):  # disconnected: the will says offline
                info.wait_for_publish(timeout=2.0)
        self._client.disable_logger()  # paho's loop says "Client is not connected" after disconnect()
        self._client.disconnect()
        self._client.loop_stop()
        self._sink.close()
        log.info("event=stopped counters=%s", json.dumps(self.counters(), separators=(",", ":")))
        self._finished.set()

    def __enter__(self) -> Bridge:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- MQTT (paho's network thread) ---------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        will = Will(self.status_topic, self._status_payload("offline", "connection-lost"))
        client = make_client(
            self.config.mqtt, self.config.client_id, clean_session=False, manual_ack=True, will=will
        )
        client.enable_logger(_PAHO_LOG)
        client.max_inflight_messages_set(100)  # our own publishes: dead letters and status
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._last_error = f"connect refused: {reason}"
            log.error("event=connect_refused reason=%r", str(reason))
            return
        with self._generation_lock:
            self._generation += 1
            self._connected = True
        log.info("event=connected session_present=%s", flags.session_present)
        topics = [self.subscription, self.status_subscription, *self.run_subscriptions]
        client.subscribe([(topic, 1) for topic in topics])
        client.publish(self.status_topic, self._status_payload("online"), 1, True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._generation_lock:
            self._generation += 1  # acknowledgements of earlier messages would reach the wrong ones
            was_connected, self._connected = self._connected, False
        self._subscribed.clear()
        if self._stopping.is_set():
            return
        self._counters.add("reconnects")
        self._last_error = f"disconnected: {reason}"
        if was_connected:
            log.warning("event=disconnected reason=%r (unacknowledged messages are redelivered)", str(reason))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if any(r.is_failure for r in reasons):
            self._last_error = f"subscription to {self.subscription} refused: {reasons}"
            log.error(
                "event=subscribe_refused topic=%s reasons=%r", self.subscription, [str(r) for r in reasons]
            )
            return
        log.info("event=subscribed topic=%s qos=%s", self.subscription, [int(r.value) for r in reasons])
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            generation = self._generation
            while not self._room.acquire(timeout=0.2):
                if self._stopping.is_set():
                    return
            if self._stopping.is_set():
                self._room.release()
                return  # not acknowledged: the broker delivers it again after the restart
            self._counters.add("messages_received")
            self._inbox.put(
                _Received(
                    message.mid, message.qos, message.topic, message.payload, generation, time.time_ns()
                )
            )
        except BaseException as exc:  # paho would swallow it and the message would be lost
            self._fail(exc)
            raise

    # --- the writer thread --------------------------------------------------------------------

    def _run_writer(self) -> None:
        batch: list[_Entry] = []
        points = 0
        deadline = 0.0
        while True:
            stopping = self._stopping.is_set()
            idle = self.config.batch.idle_ms / 1000
            timeout = min(max(0.0, deadline - time.monotonic()), idle) if batch else _IDLE_TICK_S
            try:
                received = self._inbox.get(timeout=0 if stopping else timeout)
            except queue.Empty:
                received = None
            if received is not None:
                entry = self._take(received)
                if entry is not None:
                    if not batch:
                        deadline = time.monotonic() + self.config.batch.ms / 1000
                    batch.append(entry)
                    points += entry.points
            full = points >= self.config.batch.points
            due = bool(batch) and (received is None or time.monotonic() >= deadline)
            if full or due:
                try:
                    self._deliver(batch)
                except _Stopped:
                    unwritten = sum(1 for e in self._ledger if not e.resolved)
                    log.error(
                        "event=stop_with_unwritten messages=%d (left unacknowledged: the broker keeps them)",
                        unwritten,
                    )
                    return
                batch, points = [], 0
            self._acknowledge()
            if stopping and received is None and not batch:
                self._settle_dead_letters()
                return

    def _take(self, received: _Received) -> _Entry | None:
        """Decode one message: an entry to write, or None once it is dead-lettered or stale."""
        entry = _Entry(received)
        if received.generation != self._generation:
            self._resolve(entry, stale=True)
            return None
        self._ledger.append(entry)
        try:
            if runs.is_run_topic(received.topic):  # the run journal, command results, run status
                lines, entry.ranges = runs.lines(received.topic, received.payload)
            elif received.topic.endswith("/status"):
                lines = status_lines(received.topic, received.payload)
            else:
                lines, entry.ranges = self._intake.accept(received.topic, received.payload)
        except Rejected as exc:
            self._dead_letter(entry, exc.reason)
            return None
        except Exception as exc:  # a bug met by this payload: keep it as a dead letter, go on
            log.error("event=intake_error topic=%s error=%r", received.topic, repr(exc), exc_info=exc)
            self._dead_letter(entry, f"bridge error: {type(exc).__name__}: {exc}")
            return None
        entry.body = "\n".join(lines).encode()
        entry.points = len(lines)
        return entry

    def _deliver(self, entries: list[_Entry]) -> None:
        """Write these entries in one request, retrying until it succeeds; isolate refused ones."""
        delay = self.config.retry.initial_s
        give_up = None
        with_telemetry = True
        while True:
            live = []
            for entry in entries:
                if entry.received.generation == self._generation:
                    live.append(entry)
                else:
                    self._resolve(entry, stale=True)
            if not live:
                return
            body = b"\n".join(e.body for e in live)
            arrivals = ((e.received.topic, e.body, e.received.received_ns) for e in live)
            telemetry = self._telemetry.batch(arrivals, time.time_ns()) if with_telemetry else None
            if telemetry is not None and telemetry.lines:
                body += b"\n" + "\n".join(telemetry.lines).encode()
            try:
                self._sink.write(body)
            except WriteRejected as exc:
                if telemetry is not None and telemetry.lines:
                    log.warning("event=write_refused error=%r (again without telemetry)", str(exc))
                    with_telemetry = False
                    continue
                if len(live) == 1:
                    self._dead_letter(live[0], f"InfluxDB refused the points: {exc}")
                    self._confirm(live, "dead_lettered")
                else:
                    log.warning(
                        "event=batch_refused messages=%d error=%r (writing one by one)", len(live), str(exc)
                    )
                    for entry in live:
                        self._deliver([entry])
                return
            except WriteFailed as exc:
                self._counters.add("write_errors")
                self._last_error = f"write failed: {exc}"
                pause = min(max(delay, exc.retry_after or 0.0), self.config.retry.max_s)
                log.warning(
                    "event=write_failed error=%r messages=%d retry_in_s=%.1f", str(exc), len(live), pause
                )
                if self._stopping.is_set():
                    now = time.monotonic()
                    give_up = give_up or now + self.config.shutdown_timeout_s
                    if now >= give_up:
                        raise _Stopped from None
                    time.sleep(min(pause, give_up - now))
                else:
                    self._stopping.wait(pause)  # a stop cuts the pause short; then retries until the deadline
                delay = min(delay * 2, self.config.retry.max_s)
                self._counters.add("write_retries")
                continue
            for entry in live:
                entry.written = True
                self._resolve(entry)
            if telemetry is not None:
                self._telemetry.written(telemetry)
            self._confirm(live, "stored")
            self._counters.add("points_written", sum(e.points for e in live))
            self._counters.add("batches_written")
            return

    def _confirm(self, entries: list[_Entry], outcome: str) -> None:
        """Tell each device which of its samples are stored (or dead-lettered): one message each."""
        by_topic: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        for entry in entries:
            if entry.ranges:
                topic = str(Topic.parse(entry.received.topic).with_kind("stored"))
                by_topic[topic].extend((first, last) for first, last in entry.ranges)
        for topic, ranges in by_topic.items():
            message = {
                "schema": STORED_SCHEMA,
                "consumer": self.consumer,
                "t_ns": time.time_ns(),
                outcome: merge_ranges(ranges),
            }
            self._client.publish(topic, encode(message), qos=1)
            self._counters.add("confirmations_published")

    def _dead_letter(self, entry: _Entry, reason: str) -> None:
        r = entry.received
        self._counters.add("messages_invalid")
        self._telemetry.dead_lettered(r.topic)
        log.warning("event=dead_letter topic=%s reason=%r bytes=%d", r.topic, reason, len(r.payload))
        topic, payload = dead_letter(
            r.topic,
            r.payload,
            reason,
            received_ns=r.received_ns,
            consumer=self.consumer,
            fallback_topic=self.fallback_deadletter_topic,
        )
        entry.dead_letter = self._client.publish(topic, payload, qos=1)
        self._resolve(entry)

    def _acknowledge(self) -> None:
        """Acknowledge settled messages from the oldest on, stopping at the first unsettled one."""
        while self._ledger:
            entry = self._ledger[0]
            r = entry.received
            stale = r.generation != self._generation
            if not stale and not entry.settled():
                return
            self._ledger.popleft()
            if stale or r.qos == 0:
                continue
            with self._generation_lock:  # so the packet id cannot belong to a newer connection
                if r.generation == self._generation and self._connected:
                    self._client.ack(r.mid, r.qos)
                    self._counters.add("acked")

    def _settle_dead_letters(self) -> None:
        """At stop: give the broker a moment to confirm dead letters, so their originals are acked."""
        deadline = time.monotonic() + min(self.config.shutdown_timeout_s, 5.0)
        while self._ledger and time.monotonic() < deadline:
            self._acknowledge()
            if self._ledger:
                time.sleep(_IDLE_TICK_S)

    def _resolve(self, entry: _Entry, stale: bool = False) -> None:
        """Free the message's slot in the window (once)."""
        if entry.resolved:
            return
        entry.resolved = True
        self._resolved += 1
        self._room.release()
        if stale:  # from an earlier connection: the broker redelivers it, so it is not written now
            self._counters.add("redeliveries_expected")

    # --- status -------------------------------------------------------------------------------

    def _run_status(self) -> None:
        while not self._stopping.wait(self.config.status_interval_s):
            if self._connected:
                self._client.publish(self.status_topic, self._status_payload("online"), 0, True)

    def _status_payload(self, state: str, reason: str | None = None) -> bytes:
        status: dict[str, Any] = {"bridge": self.config.id, "state": state, "t_ns": time.time_ns()}
        if reason:
            status["reason"] = reason
        status["counters"] = self.counters()
        status["gauges"] = self.gauges()
        status["last_error"] = self._last_error
        return json.dumps(status, separators=(",", ":")).encode()

    # --- failures -----------------------------------------------------------------------------

    def _guard(self, target: Any) -> None:
        try:
            target()
        except BaseException as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """A bug, not a data or network problem: log it and let the process end (and restart)."""
        if self.failure is None:
            self.failure = exc
            log.critical("event=bridge_failed error=%r", repr(exc), exc_info=exc)
        self._finished.set()
