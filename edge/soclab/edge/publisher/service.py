"""One instrument's publisher: an acquisition thread feeds the spool, the sender drains it to MQTT.

    driver.read() --(acquisition thread)--> Spool --(sender)--> paho (QoS 1) --> broker
                                              ^                                  |
                                              +------- remove on PUBACK ---------+

The sender hands paho at most ``mqtt.max_inflight`` messages; a message's samples leave the spool
only when its PUBACK arrives. paho retransmits unacknowledged messages after a reconnect; after
a restart of the process the spool's content is sent again from its oldest sample (a message the
broker had already received then arrives twice, and overwrites itself in InfluxDB).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt

from soclab.edge.instruments.base import Instrument
from soclab.edge.publisher.config import PublisherConfig
from soclab.edge.publisher.mqtt import make_client
from soclab.edge.spool import Spool
from soclab.wire import DATA_SCHEMA, STATUS_SCHEMA, InvalidMessage, decode, encode

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, config: PublisherConfig, instrument: Instrument) -> None:
        self.config = config
        self.instrument = instrument
        self.spool = Spool(config.spool_path, max_samples=config.spool.max_samples, sync=config.spool.sync)
        self.counters: Counter[str] = Counter()
        self._topic = str(config.topic)
        self._status_topic = str(config.topic.with_kind("status"))
        s = config.source
        self._source = {"site": s.site, "node": s.node, "device": s.device, "kind": s.kind}
        self._prefix = f'{{"schema":"{DATA_SCHEMA}","source":{json.dumps(self._source)},"samples":['
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inflight: dict[int, tuple[int, int]] = {}  # mid -> (first seq, last seq)
        self._sent_up_to = -1  # highest seq handed to paho
        self._wakeup = threading.Event()
        self.client = make_client(config, self._status_payload("offline", "connection-lost"))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    # --- paho callbacks (network thread: keep them short, never block on our locks) -----------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.counters["connect_failures"] += 1
            log.warning("event=connect_refused reason=%s", reason)
            return
        self.counters["connects"] += 1
        log.info("event=connected broker=%s:%d", self.config.mqtt.host, self.config.mqtt.port)
        self._connected.set()
        client.publish(self._status_topic, self._status_payload("online"), qos=1, retain=True)
        self._wakeup.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            self.counters["disconnects"] += 1
            log.warning("event=disconnected reason=%s", reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._acks.put(mid)
        self._wakeup.set()

    # --- running ------------------------------------------------------------------------------
    def run(self) -> None:
        """Run until ``stop()``; then publish 'offline' (reason stopped) and disconnect."""
        m = self.config.mqtt
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()
        acquisition = threading.Thread(target=self._acquire, name="acquisition", daemon=True)
        acquisition.start()
        next_status = time.monotonic() + self.config.status.interval_s
        try:
            while not self._stop.is_set():
                self._wakeup.wait(timeout=0.2)
                self._wakeup.clear()
                self._take_acks()
                if self._connected.is_set():
                    self._send_ready()
                    if time.monotonic() >= next_status:
                        next_status = time.monotonic() + self.config.status.interval_s
                        self.publish_status()
        finally:
            self._stop.set()
            acquisition.join(timeout=5)
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
                if readings:
                    self.spool.append(readings)  # a full disk raises here: counted and logged below
                    self._wakeup.set()
            except Exception as exc:  # an error must not end acquisition: count, log, retry
                failures += 1
                self.counters["acquisition_errors"] += 1
                self.instrument.health.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("event=acquisition_error consecutive=%d", failures)
                self._stop.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
                continue
            failures = 0
        self.instrument.close()

    def _take_acks(self) -> None:
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                return
            span = self._inflight.pop(mid, None)
            if span is None:
                continue  # the status message, or an ack for a message from before a restart
            self.spool.remove(*span)
            self.counters["messages_acked"] += 1
            self.counters["samples_acked"] += span[1] - span[0] + 1

    def _send_ready(self) -> None:
        batch = self.config.batch
        while len(self._inflight) < self.config.mqtt.max_inflight and not self._stop.is_set():
            rows = self.spool.peek(self._sent_up_to, batch.max_samples)
            if not rows:
                return
            age_s = (time.time_ns() - rows[0][1]) / 1e9
            if len(rows) < batch.max_samples and age_s < batch.max_delay_s:
                return  # wait for a fuller batch (the loop wakes at least every 0.2 s)
            if not self._publish(rows):
                return

    def _publish(self, rows: list[tuple[int, int, str]]) -> bool:
        payload = (self._prefix + ",".join(r[2] for r in rows) + "]}").encode()
        first, last = rows[0][0], rows[-1][0]
        try:
            decode(payload, DATA_SCHEMA)  # the contract is checked before anything leaves
        except InvalidMessage as exc:
            # A driver produced something the schema refuses: never send it, never lose it quietly.
            self.counters["samples_rejected"] += len(rows)
            log.error("event=invalid_message first_seq=%d last_seq=%d reason=%r", first, last, exc.reason)
            self.spool.remove(first, last)
            self._sent_up_to = last
            return True
        info = self.client.publish(self._topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            # Not connected any more: paho still queued it and will send it on reconnect.
            log.info("event=publish_queued rc=%s first_seq=%d", info.rc, first)
        self._inflight[info.mid] = (first, last)
        self._sent_up_to = last
        self.counters["messages_published"] += 1
        self.counters["samples_published"] += len(rows)
        return True

    # --- status -------------------------------------------------------------------------------
    def publish_status(self) -> None:
        self.client.publish(self._status_topic, self._status_payload("online"), qos=1, retain=True)

    def status(self, state: str = "online", reason: str | None = None) -> dict[str, Any]:
        health = self.instrument.health
        oldest = self.spool.oldest_t_ns()
        counters = Counter(self.counters)
        counters.update(health.counters)
        counters["spool_dropped"] = self.spool.dropped
        counters["spool_invalid_values"] = self.spool.invalid_values
        message: dict[str, Any] = {
            "schema": STATUS_SCHEMA,
            "source": self._source,
            "state": state,
            "t_ns": time.time_ns(),
            "instrument": dict(self.instrument.identity()),
            "counters": {k: int(v) for k, v in sorted(counters.items())},
            "gauges": {
                **health.gauges,
                "seq_next": self.spool.next_seq,
                "spool_depth": self.spool.depth,
                "spool_oldest_age_s": None if oldest is None else round((time.time_ns() - oldest) / 1e9, 3),
                "inflight_messages": len(self._inflight),
            },
            "last_error": health.last_error,
        }
        if reason:
            message["reason"] = reason
        return message

    def _status_payload(self, state: str, reason: str | None = None) -> bytes:
        return encode(self.status(state, reason))

    def _shutdown(self) -> None:
        """Flush what can be flushed within a few seconds, say 'offline', disconnect."""
        deadline = time.monotonic() + 5.0
        while self._inflight and self._connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
            self._take_acks()
        if self._connected.is_set():
            info = self.client.publish(
                self._status_topic, self._status_payload("offline", "stopped"), qos=1, retain=True
            )
            info.wait_for_publish(timeout=3)
        self.client.disconnect()
        self.client.loop_stop()
        self.spool.close()
        log.info("event=stopped counters=%s", dict(self.counters))
