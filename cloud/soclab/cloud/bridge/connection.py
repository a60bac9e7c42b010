"""The bridge's MQTT connection: paho's network thread, connection generations, the receive window.

``MqttBroker`` is the core's ``Broker``. It owns the paho client, and the generation and
``connected`` flag under one lock: an acknowledgement is sent only if the message's connection is
still the current one (a packet id of an earlier connection would acknowledge another message).
paho's thread runs only the callbacks here: it waits for room in the ``Window``, stamps each
message with its arrival time and generation, and hands it to the writer as a typed
``core.Received`` through ``deliver``.

Our own QoS 1 publishes (confirmations, dead letters) are bounded too, without ever waiting:
paho numbers unacknowledged publishes with 16-bit packet ids and drops one whose id is still in
use (``MQTT_ERR_QUEUE_SIZE``). At 10,000 devices (``bench/fleet.py``) paho's thread, busy reading,
fell 65,535 publishes behind the writer and confirmations were lost without a word. Beyond
``MAX_UNACKED_PUBLISHES`` a publish is held back, in order, and the writer sends it (``flush()``)
once the broker has acknowledged enough. The writer must not wait for those acknowledgements:
paho's thread reads them, and it may itself be waiting for room that only the writer frees. A
publish that paho refuses all the same is logged as an error.

The window bounds what the bridge holds: at most ``max_pending_messages`` messages and
``max_pending_bytes`` bytes of payload between arrival and resolution (written, dead-lettered or
stale). When it is full paho's thread waits, so the broker's TCP buffers fill and it stops
sending. The broker's own ``max_inflight_messages`` was meant to be the first bound, but Mosquitto
2.0.11 sends more than it once acknowledgements come (measured: with a limit of 10, each
acknowledgement let 10 more through), so this one is what holds (a few huge messages count for
what they weigh).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from soclab.cloud.bridge.config import BridgeConfig
from soclab.cloud.bridge.core import Counters, Received
from soclab.wire.mqtt import Will, make_client

log = logging.getLogger("soclab.cloud.bridge")
_PAHO_LOG = logging.getLogger("soclab.cloud.bridge.paho")
MAX_UNACKED_PUBLISHES = 20_000  # well below paho's 65,535 packet ids
_QUEUED = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)  # sent, or sent once connected again
_EARLY_MAX = 1000  # acknowledgements kept that came before publish() recorded their packet id


class Later:
    """A publish held back until paho has room for it: published once ``info`` is set and the
    broker has acknowledged it."""

    __slots__ = ("info",)

    def __init__(self) -> None:
        self.info: mqtt.MQTTMessageInfo | None = None

    def is_published(self) -> bool:
        return self.info is not None and self.info.is_published()


class Window:
    """Room for received messages, counted in messages and bytes (thread-safe).

    One message is always let in when nothing is held, however large, so the bridge never waits
    for room that cannot come.
    """

    def __init__(self, messages: int, size: int) -> None:
        self._messages = messages
        self._bytes = size
        self._held_messages = 0
        self._held_bytes = 0
        self._changed = threading.Condition()

    def take(self, size: int, stopping: threading.Event) -> bool:
        """Wait for room for one message of ``size`` bytes; False if ``stopping`` was set first."""
        with self._changed:
            while self._held_messages and (
                self._held_messages >= self._messages or self._held_bytes + size > self._bytes
            ):
                if stopping.is_set():
                    return False
                self._changed.wait(0.2)
            if stopping.is_set():
                return False
            self._held_messages += 1
            self._held_bytes += size
            return True

    def release(self, size: int) -> None:
        with self._changed:
            self._held_messages -= 1
            self._held_bytes -= size
            self._changed.notify_all()


class MqttBroker:
    """The paho client of the bridge, seen by the core as its ``Broker``."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        subscriptions: list[str],
        status_topic: str,
        will_payload: bytes,
        online_payload: Callable[[], bytes],
        deliver: Callable[[Received], None],
        window: Window,
        stopping: threading.Event,
        counters: Counters,
        fail: Callable[[BaseException], None],
    ) -> None:
        self.config = config
        self.subscriptions = subscriptions
        self.status_topic = status_topic
        self.last_error: str | None = None
        self.subscribed = threading.Event()
        self._online_payload = online_payload
        self._deliver = deliver
        self._window = window
        self._stopping = stopping
        self._counters = counters
        self._fail = fail
        self._generation = 0
        self._connected = False
        self._lock = threading.Lock()  # generation and connected, with every acknowledgement
        # Our QoS 1 publishes (the writer's thread) and the broker's acknowledgements of them
        # (paho's thread): packet ids not yet acknowledged, acknowledgements that came before
        # publish() could record their id (FIFO, bounded), publishes held back. The lock is never
        # held while calling paho (paho holds its own while calling _on_publish).
        self._unacked: set[int] = set()
        self._acked_early: dict[int, None] = {}
        self._acked = threading.Condition()
        self._held: collections.deque[tuple[str, bytes, bool, Later]] = collections.deque()
        self.client = make_client(
            config.mqtt,
            config.client_id,
            clean_session=bool(config.share),  # a shared member's session must end with it
            manual_ack=True,
            will=Will(status_topic, will_payload),
        )
        if _PAHO_LOG.isEnabledFor(logging.DEBUG):  # paho logs every packet: costly at its rates
            self.client.enable_logger(_PAHO_LOG)
        # Our own publishes (confirmations, dead letters, status) all go out at once: a window
        # would hold confirmations back behind PUBACKs, and paho walks it for every PUBACK.
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    # --- the core's Broker ---------------------------------------------------------------------

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    @property
    def connected(self) -> bool:
        return self._connected

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo | Later:
        """Publish now, or (QoS 1, over ``MAX_UNACKED_PUBLISHES``) hold it back for ``flush()``."""
        if qos and (self._held or not self._room()):
            later = Later()
            self._held.append((topic, payload, retain, later))
            if len(self._held) % 10_000 == 0:
                log.warning("event=publishes_held count=%d (paho's thread is behind)", len(self._held))
            return later
        return self._send(topic, payload, qos, retain)

    def flush(self, timeout: float = 0.0) -> int:
        """Send held publishes while there is room (waiting up to ``timeout`` s for it); how many
        are still held. Called by the writer between rounds, and at the stop."""
        deadline = time.monotonic() + timeout
        while self._held:
            if not self._room():
                left = deadline - time.monotonic()
                if left <= 0 or not self._connected:
                    break
                with self._acked:
                    self._acked.wait(min(left, 0.2))
                continue
            topic, payload, retain, later = self._held.popleft()
            later.info = self._send(topic, payload, 1, retain)
        return len(self._held)

    @property
    def held(self) -> int:
        return len(self._held)

    def _room(self) -> bool:
        with self._acked:
            return len(self._unacked) < MAX_UNACKED_PUBLISHES

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos, retain)
        if info.rc not in _QUEUED:
            self.last_error = f"publish to {topic} failed: {mqtt.error_string(info.rc)}"
            log.error("event=publish_failed topic=%s error=%r", topic, mqtt.error_string(info.rc))
        elif qos:
            with self._acked:
                if info.mid in self._acked_early:  # its acknowledgement came first
                    del self._acked_early[info.mid]
                else:
                    self._unacked.add(info.mid)
        return info

    def ack(self, mid: int, qos: int, generation: int) -> bool:
        with self._lock:  # so the packet id cannot belong to a newer connection
            if generation != self._generation or not self._connected:
                return False
            self.client.ack(mid, qos)
            return True

    # --- lifetime ------------------------------------------------------------------------------

    def start(self) -> None:
        m = self.config.mqtt
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()

    def close(self, offline_payload: bytes) -> None:
        """Send what is held back (5 s at most), publish ``offline`` (retained), disconnect, stop
        paho's thread."""
        if self.flush(timeout=5.0):
            log.error("event=publishes_unsent count=%d (devices resend what is unconfirmed)", self.held)
        info = self.client.publish(self.status_topic, offline_payload, 1, True)
        if self._connected:
            with contextlib.suppress(RuntimeError, ValueError):  # disconnected: the will says offline
                info.wait_for_publish(timeout=2.0)
        self.client.disable_logger()  # paho's loop says "Client is not connected" after disconnect()
        self.client.disconnect()
        self.client.loop_stop()

    # --- paho's network thread -----------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"connect refused: {reason}"
            log.error("event=connect_refused reason=%r", str(reason))
            return
        with self._lock:
            self._generation += 1
            self._connected = True
        log.info("event=connected session_present=%s", flags.session_present)
        client.subscribe([(topic, 1) for topic in self.subscriptions])
        client.publish(self.status_topic, self._online_payload(), 1, True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._lock:
            self._generation += 1  # acknowledgements of earlier messages would reach the wrong ones
            was_connected, self._connected = self._connected, False
        self.subscribed.clear()
        if self._stopping.is_set():
            return
        self._counters.add("reconnects")
        self.last_error = f"disconnected: {reason}"
        if was_connected:
            log.warning("event=disconnected reason=%r (unacknowledged messages are redelivered)", str(reason))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if any(r.is_failure for r in reasons):
            self.last_error = f"subscription to {self.subscriptions} refused: {reasons}"
            log.error(
                "event=subscribe_refused topics=%s reasons=%r", self.subscriptions, [str(r) for r in reasons]
            )
            return
        log.info("event=subscribed topics=%s qos=%s", self.subscriptions, [int(r.value) for r in reasons])
        self.subscribed.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._acked:
            if mid in self._unacked:
                self._unacked.discard(mid)
                self._acked.notify()
            else:  # publish() has not recorded it yet, or not ours (QoS 0, the connect's status)
                if len(self._acked_early) >= _EARLY_MAX:
                    del self._acked_early[next(iter(self._acked_early))]  # the oldest: not ours
                self._acked_early[mid] = None

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            generation = self._generation
            payload = bytes(message.payload)
            if not self._window.take(len(payload), self._stopping):
                return  # not acknowledged: the broker delivers it again after the restart
            received_ns = time.time_ns()
            self._deliver(Received(message.mid, message.qos, message.topic, payload, generation, received_ns))
        except BaseException as exc:  # paho would swallow it and the message would be lost
            self._fail(exc)
            raise
