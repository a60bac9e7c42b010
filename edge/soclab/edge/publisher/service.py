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
- acquisition: the instrument's ``read()``; it hands the readings to the spool through
  ``publisher.intake`` (which holds them in memory while the disk refuses them; both lock
  themselves) and reports a failure as an ``AcquisitionFailed`` event;
- paho's network thread: its callbacks only hand typed events (``Connected``, ``PubAck``,
  ``Stored`` ...) to the sender's queue, and subscribe on connect.

The instrument's health is read as a snapshot (``Health.snapshot``), never iterated live.

Confirmations (``.../stored``) come from the network, so nothing in one may end the publisher
(issue 11, finding 5): a message that is not a valid ``soclab.stored/1`` is counted
(``confirmations_invalid``) and ignored, whatever it holds. Who sent one cannot be read from an
MQTT 3.1.1 message; the ``consumer`` field is what the sender claims. On the production broker,
the ACL (``compose/mosquitto/config/acl``) lets only the bridge's accounts write
``soclab/+/+/+/stored`` and binds each client id to its account, so a confirmation there is the
bridge's; the publisher then checks that it names a bridge (``soclab-bridge/<id>``, else it is
counted in ``confirmations_refused``) and the ledger takes from it only samples that were
published and not yet confirmed (finding 7). The development broker of ``make lab`` has no ACL:
there any local client can confirm, and these two checks are all that stands.

With ``[control]`` the publisher also hosts its instrument's control (``soclab.edge.runs.hosting``:
operators' commands on ``.../cmd``, the run controller's on a local socket, the safe state at
every open): the host gets the ``cmd`` messages and every acquisition, and hands its results to
the sender (``Outgoing``), which publishes them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from soclab.edge.instruments.base import Instrument
from soclab.edge.instruments.clock import kernel_synchronised
from soclab.edge.publisher.config import PublisherConfig
from soclab.edge.publisher.intake import SpoolIntake
from soclab.edge.publisher.ledger import Ledger
from soclab.edge.publisher.mqtt import make_client
from soclab.edge.runs.hosting import ControlHost
from soclab.edge.spool import Spool, SpooledSamples
from soclab.wire import DATA_SCHEMA, STATUS_SCHEMA, STORED_SCHEMA, InvalidMessage, decode, encode
from soclab.wire.topics import BRIDGE_ROOT
from soclab.wire.typed import NotFast, decode_data

log = logging.getLogger(__name__)

_TICK_S = 0.2  # the sender wakes at least this often
# The largest confirmation the schema allows (100,000 ranges) is under 4 MiB; refuse more unread.
MAX_CONFIRMATION_BYTES = 4 * 2**20
_QUIET_S = 10.0  # a repeated complaint (forged confirmations, a full disk) is logged this often


def _check_data(payload: bytes) -> None:
    """Raise InvalidMessage (with the reason) unless ``payload`` is a valid ``soclab.data/1``.

    The typed decoder (``soclab.wire.typed``: msgspec, its bounds read from the schema file, its
    verdicts held to the reference validator's by the tests) judges a LabJack batch of 5,000
    scans in about 0.5 µs per sample, where ``json.loads`` and ``fastjsonschema`` took 4-5 µs on
    the publisher's acquisition core. It never accepts what the schema refuses; what it refuses
    goes to the reference path (``decode``), whose verdict and reason stand.
    """
    try:
        decode_data(payload)
    except NotFast:
        decode(payload, DATA_SCHEMA)


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
        if config.clock.check_sync:
            instrument.clock.synchronised = kernel_synchronised
        self.spool = Spool(config.spool_path, max_samples=config.spool.max_samples, sync=config.spool.sync)
        self.intake = SpoolIntake(self.spool, hold_max_samples=config.spool.hold_max_samples)
        self._last_reading: float | None = None  # time.monotonic() of the instrument's latest reading
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
        self._complaints: dict[str, tuple[float, int]] = {}  # key -> (last logged, not logged since)
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
                    self._housekeeping()
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
                    self._last_reading = time.monotonic()
                if self.intake.put(readings):  # a full disk: held, and written when it takes them
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
        """A message on this device's ``stored`` topic; see the module doc for what is trusted."""
        if len(payload) > MAX_CONFIRMATION_BYTES:
            self._bad_confirmation("confirmations_invalid", f"{len(payload)} bytes, more than one holds")
            return
        try:
            message = decode(payload, STORED_SCHEMA)
        except InvalidMessage as exc:
            self._bad_confirmation("confirmations_invalid", exc.reason)
            return
        except Exception as exc:  # what a decoder's own limits raise (5,000 digits): still bad input
            self._bad_confirmation("confirmations_invalid", f"{type(exc).__name__}: {str(exc)[:200]}")
            return
        consumer = message["consumer"]
        if not consumer.startswith(f"{BRIDGE_ROOT}/"):
            self._bad_confirmation("confirmations_refused", f"consumer {consumer[:80]!r} is not a bridge")
            return
        self.counters["confirmations"] += 1
        self.ledger.confirmed(message.get("stored", []))
        dead = self.ledger.confirmed(message.get("dead_lettered", []), dead_lettered=True)
        if dead:
            log.error("event=samples_dead_lettered count=%d (the bridge could not store them)", dead)

    def _bad_confirmation(self, counter: str, reason: str) -> None:
        """Count it; log it (``event=confirmation_invalid`` or ``confirmation_refused``)."""
        self.counters[counter] += 1
        event = counter.replace("confirmations_", "confirmation_")
        self._complain(counter, logging.ERROR, "event=%s reason=%r", event, reason)

    def _complain(self, key: str, level: int, message: str, *args: object) -> None:
        """Log a complaint that may repeat many times a second: at most once per ``_QUIET_S`` per
        key, saying how many were not logged since (the counters have every one)."""
        now = time.monotonic()
        last, quiet = self._complaints.get(key, (-_QUIET_S, 0))
        if now - last < _QUIET_S:
            self._complaints[key] = (last, quiet + 1)
            return
        self._complaints[key] = (now, 0)
        log.log(level, message + (f" (and {quiet} more in {_QUIET_S:g} s)" if quiet else ""), *args)

    def _housekeeping(self) -> None:
        """Once a second: removals and the ledger's record that a full disk refused, tried again."""
        self.ledger.retry_removals()
        if self.ledger.removal_error:
            self._complain(
                "removal",
                logging.WARNING,
                "event=confirmed_samples_not_removed ranges=%d error=%r",
                self.ledger.removals_pending,
                self.ledger.removal_error,
            )
        try:
            self.ledger.save()
        except sqlite3.Error as exc:  # a full disk: what was published is saved at a later try
            self._complain("ledger_save", logging.WARNING, "event=ledger_not_saved error=%r", str(exc))

    def _send_ready(self, stopping: bool = False) -> None:
        while self.ledger.inflight < self.config.mqtt.max_inflight and (stopping or not self._stop.is_set()):
            batch = self.ledger.next_batch(self.config.batch.max_delay_s)
            if batch is None:
                return
            self._publish(batch)

    def _publish(self, batch: SpooledSamples) -> None:
        payload = (self._prefix + batch.samples + "]}").encode()
        first, last = batch.first, batch.last
        try:
            _check_data(payload)  # the contract is checked before anything leaves
        except InvalidMessage as exc:
            # A driver produced something the schema refuses: never send it, never lose it quietly.
            self.counters["samples_rejected"] += batch.count
            log.error("event=invalid_message first_seq=%d last_seq=%d reason=%r", first, last, exc.reason)
            with contextlib.suppress(sqlite3.Error):  # a full disk: refused again at the next start
                self.spool.remove(first, last)
            return
        info = self.client.publish(self._topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            # Not connected any more: paho still queued it and sends it on reconnect.
            log.info("event=publish_queued rc=%s first_seq=%d", info.rc, first)
        self.ledger.published(info.mid, first, last)
        self.counters["messages_published"] += 1
        self.counters["samples_published"] += batch.count

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
        intake = self.intake.state()
        counters["spool_write_errors"] = intake.write_errors
        counters["samples_lost_unspooled"] = intake.lost
        since = self._last_reading
        error = intake.error or self.ledger.removal_error or health.last_error  # the spool's first
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
                "spool_held_samples": intake.held,
                "spool_unwritable_s": intake.unwritable_s,
                "spool_removals_pending": self.ledger.removals_pending,
                "last_reading_age_s": None if since is None else round(time.monotonic() - since, 3),
            },
            "last_error": error[:500] if error else None,
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
        self._handle_events()  # confirmations that came in meanwhile
        self._housekeeping()
        self.intake.close()
        self.spool.close()
        log.info("event=stopped counters=%s", dict(self.counters))
