"""One instrument's publisher: an acquisition thread feeds the spool, the sender drains it to MQTT.

    driver.read() --(acquisition)--> Spool --(sender, Ledger)--> paho QoS 1 --> broker --> bridge
                                       ^                                                    |
                                       +---- remove when the bridge confirms (stored) ------+

The sender hands paho at most ``mqtt.max_inflight`` messages not yet acknowledged by the broker
(paho sends them again after a reconnect); the ledger decides what goes next (resends, live
data, backlog) and when a sample may leave the spool. The MQTT session is persistent, so
confirmations published while the publisher is away wait for it at the broker.

Threads, and what each one owns:

- the sender (the thread that calls ``run()``): the ledger, the publisher's counters and gauges,
  every status message; it is the only one to publish;
- acquisition: the instrument's ``read()``; it appends to the spool (which locks itself) and
  reports a failure as an ``AcquisitionFailed`` event;
- paho's network thread: its callbacks only hand typed events (``Connected``, ``PubAck``,
  ``Stored`` ...) to the sender's queue, and subscribe on connect.

The instrument's health is read as a snapshot (``Health.snapshot``), never iterated live.

With ``[control]`` the publisher also hosts its instrument's control (``soclab.edge.runs.hosting``:
operators' commands on ``.../cmd``, the run controller's on a local socket, the safe state at
every open): the host gets the ``cmd`` messages and every acquisition, and hands its results to
the sender (``Outgoing``), which publishes them.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from soclab.edge.instruments.base import Instrument
from soclab.edge.publisher.config import PublisherConfig
from soclab.edge.publisher.ledger import Ledger, Row
from soclab.edge.publisher.mqtt import make_client
from soclab.edge.runs.hosting import ControlHost
from soclab.edge.spool import Spool
from soclab.wire import DATA_SCHEMA, STATUS_SCHEMA, STORED_SCHEMA, InvalidMessage, decode, encode

log = logging.getLogger(__name__)

_TICK_S = 0.2  # the sender wakes at least this often


# --- what the other threads tell the sender ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Connected:
    session_present: bool


@dataclass(frozen=True, slots=True)
class ConnectRefused:
    reason: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str


@dataclass(frozen=True, slots=True)
class PubAck:
    mid: int


@dataclass(frozen=True, slots=True)
class Stored:
    payload: bytes


@dataclass(frozen=True, slots=True)
class AcquisitionFailed:
    error: str


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes


Event = Connected | ConnectRefused | Disconnected | PubAck | Stored | AcquisitionFailed | Outgoing


class Publisher:
    def __init__(self, config: PublisherConfig, instrument: Instrument) -> None:
        self.config = config
        self.instrument = instrument
        self.spool = Spool(config.spool_path, max_samples=config.spool.max_samples, sync=config.spool.sync)
        self.ledger = Ledger(
            self.spool, batch_max=config.batch.max_samples, resend_grace_s=config.mqtt.resend_grace_s
        )
        self.counters: Counter[str] = Counter()
        self._topic = str(config.topic)
        self._status_topic = str(config.topic.with_kind("status"))
        self._stored_topic = str(config.topic.with_kind("stored"))
        s = config.source
        self._source = {"site": s.site, "node": s.node, "device": s.device, "kind": s.kind}
        self._prefix = f'{{"schema":"{DATA_SCHEMA}","source":{json.dumps(self._source)},"samples":['
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._gauges: dict[str, float | None] = {}
        self.client = make_client(config, self._status_payload("offline", "connection-lost"))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.control = (
            None
            if config.control is None
            else ControlHost(
                config.control, config.topic, instrument, lambda t, p: self._event(Outgoing(t, p))
            )
        )

    # --- paho callbacks (network thread): hand events to the sender, never block ----------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._event(ConnectRefused(str(reason)))
            return
        client.subscribe(self._stored_topic, qos=1)
        if self.control is not None:
            client.subscribe(self.control.cmd_topic, qos=1)
        self._connected.set()
        self._event(Connected(bool(flags.session_present)))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        self._event(Disconnected(str(reason)))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._event(PubAck(mid))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self.control is not None and message.topic == self.control.cmd_topic:
            self.control.mqtt_command(bytes(message.payload))
            return
        self._event(Stored(bytes(message.payload)))

    def _event(self, event: Event) -> None:
        self._events.put(event)
        self._wakeup.set()

    # --- running ------------------------------------------------------------------------------
    def run(self) -> None:
        """Run until ``stop()``; then publish 'offline' (reason stopped) and disconnect."""
        m = self.config.mqtt
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()
        if self.control is not None:
            self.control.start()
        acquisition = threading.Thread(target=self._acquire, name="acquisition", daemon=True)
        acquisition.start()
        next_status = next_check = time.monotonic()
        try:
            while not self._stop.is_set():
                self._wakeup.wait(timeout=_TICK_S)
                self._wakeup.clear()
                self._handle_events()
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + 1.0
                    lost = self.ledger.lost_batches()
                    if lost:
                        log.warning("event=resend batches=%d reason=not confirmed, later ones were", lost)
                if self._connected.is_set():
                    self._send_ready()
                    if now >= next_status:
                        next_status = now + self.config.status.interval_s
                        self.publish_status()
        finally:
            self._stop.set()
            acquisition.join(timeout=5)
            if self.control is not None:
                self.control.stop()
            self._shutdown()

    def stop(self) -> None:
        self._stop.set()
        self._wakeup.set()

    def _acquire(self) -> None:
        try:
            self.instrument.open()
        except Exception as exc:  # absent at start: read() keeps trying with backoff
            log.warning("event=instrument_unavailable error=%r", str(exc))
            self.instrument.health.last_error = f"cannot open: {exc}"
        failures = 0
        while not self._stop.is_set():
            try:
                readings = self.instrument.read(timeout=0.5)
                if self.control is not None:
                    self.control.readings(readings)
                if readings:
                    self.spool.append(readings)  # a full disk raises here: counted and logged below
                    self._wakeup.set()
            except Exception as exc:  # an error must not end acquisition: report, log, retry
                failures += 1
                self.instrument.health.last_error = f"{type(exc).__name__}: {exc}"
                self._event(AcquisitionFailed(f"{type(exc).__name__}: {exc}"))
                log.exception("event=acquisition_error consecutive=%d", failures)
                self._stop.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
                continue
            failures = 0
        if self.control is not None:
            self.control.closing()
        self.instrument.close()

    def _handle_events(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            match event:
                case PubAck(mid):
                    self.ledger.puback(mid)
                    self.counters["messages_acked"] += 1
                case Stored(payload):
                    self._confirmation(payload)
                case Connected(session_present):
                    self.counters["connects"] += 1
                    m = self.config.mqtt
                    log.info(
                        "event=connected broker=%s:%d session_present=%s", m.host, m.port, session_present
                    )
                    self.ledger.reconnected()
                    self.client.publish(
                        self._status_topic, self._status_payload("online"), qos=1, retain=True
                    )
                case ConnectRefused(reason):
                    self.counters["connect_failures"] += 1
                    log.warning("event=connect_refused reason=%s", reason)
                case Disconnected(reason):
                    if not self._stop.is_set():
                        self.counters["disconnects"] += 1
                        log.warning("event=disconnected reason=%s", reason)
                case AcquisitionFailed():
                    self.counters["acquisition_errors"] += 1
                case Outgoing(topic, payload):
                    self.client.publish(topic, payload, qos=1)

    def _confirmation(self, payload: bytes) -> None:
        try:
            message = decode(payload, STORED_SCHEMA)
        except InvalidMessage as exc:
            self.counters["confirmations_invalid"] += 1
            log.error("event=invalid_confirmation reason=%r", exc.reason)
            return
        self.counters["confirmations"] += 1
        self.ledger.confirmed(message.get("stored", []))
        dead = self.ledger.confirmed(message.get("dead_lettered", []), dead_lettered=True)
        if dead:
            log.error("event=samples_dead_lettered count=%d (the bridge could not store them)", dead)

    def _send_ready(self, stopping: bool = False) -> None:
        while self.ledger.inflight < self.config.mqtt.max_inflight and (stopping or not self._stop.is_set()):
            rows = self.ledger.next_batch(self.config.batch.max_delay_s)
            if not rows:
                return
            self._publish(rows)

    def _publish(self, rows: list[Row]) -> None:
        payload = (self._prefix + ",".join(r[2] for r in rows) + "]}").encode()
        first, last = rows[0][0], rows[-1][0]
        try:
            decode(payload, DATA_SCHEMA)  # the contract is checked before anything leaves
        except InvalidMessage as exc:
            # A driver produced something the schema refuses: never send it, never lose it quietly.
            self.counters["samples_rejected"] += len(rows)
            log.error("event=invalid_message first_seq=%d last_seq=%d reason=%r", first, last, exc.reason)
            self.spool.remove(first, last)
            return
        info = self.client.publish(self._topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            # Not connected any more: paho still queued it and sends it on reconnect.
            log.info("event=publish_queued rc=%s first_seq=%d", info.rc, first)
        self.ledger.published(info.mid, first, last)
        self.counters["messages_published"] += 1
        self.counters["samples_published"] += len(rows)

    # --- status -------------------------------------------------------------------------------
    def publish_status(self) -> None:
        oldest = self.spool.oldest_t_ns()
        self._gauges = {
            "backlog_samples": self.ledger.backlog_samples(),
            "spool_oldest_age_s": None if oldest is None else round((time.time_ns() - oldest) / 1e9, 3),
        }
        self.client.publish(self._status_topic, self._status_payload("online"), qos=1, retain=True)

    def status(self, state: str = "online", reason: str | None = None) -> dict[str, Any]:
        """The status message (the sender's thread builds it; the instrument's health is a snapshot)."""
        health = self.instrument.health.snapshot()
        counters = Counter(self.counters)
        counters.update(health.counters)
        counters["spool_dropped"] = self.spool.dropped
        counters["spool_invalid_values"] = self.spool.invalid_values
        counters["samples_confirmed"] = self.ledger.confirmed_samples
        counters["samples_dead_lettered"] = self.ledger.dead_lettered_samples
        counters["batches_resent"] = self.ledger.resent_batches
        message: dict[str, Any] = {
            "schema": STATUS_SCHEMA,
            "source": self._source,
            "state": state,
            "t_ns": time.time_ns(),
            "instrument": dict(self.instrument.identity()),
            "counters": {k: int(v) for k, v in sorted(counters.items())},
            "gauges": {
                **health.gauges,
                **self._gauges,
                "seq_next": self.spool.next_seq,
                "spool_depth": self.spool.depth,
                "inflight_messages": self.ledger.inflight,
                "unconfirmed_batches": self.ledger.unconfirmed_batches,
            },
            "last_error": health.last_error,
        }
        if reason:
            message["reason"] = reason
        return message

    def _status_payload(self, state: str, reason: str | None = None) -> bytes:
        return encode(self.status(state, reason))

    def _shutdown(self) -> None:
        """Send what was acquired, wait for its confirmation (5 s at most), say 'offline'.

        What is not confirmed by then stays in the spool and goes at the next start.
        """
        deadline = time.monotonic() + 5.0
        while self._connected.is_set() and time.monotonic() < deadline:
            self._handle_events()
            self._send_ready(stopping=True)
            if not self.ledger.unconfirmed_batches and not self.ledger.backlog_samples():
                break
            self._wakeup.wait(0.05)
            self._wakeup.clear()
        if self._connected.is_set():
            info = self.client.publish(
                self._status_topic, self._status_payload("offline", "stopped"), qos=1, retain=True
            )
            info.wait_for_publish(timeout=3)
        self.client.disable_logger()  # paho's loop says "Client is not connected" after disconnect()
        self.client.disconnect()
        self.client.loop_stop()
        self.spool.close()
        log.info("event=stopped counters=%s", dict(self.counters))
