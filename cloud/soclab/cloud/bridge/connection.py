"""The bridge's MQTT connection: paho's network thread, connection generations, the receive window.

``MqttBroker`` is the core's ``Broker``. It owns the paho client, and the generation and
``connected`` flag under one lock: an acknowledgement is sent only if the message's connection is
still the current one (a packet id of an earlier connection would acknowledge another message).
paho's thread runs only the callbacks here: it waits for room in the ``Window``, stamps each
message with its arrival time and generation, and hands it to the writer as a typed
``core.Received`` through ``deliver``.

The window bounds what the bridge holds: at most ``max_pending_messages`` messages and
``max_pending_bytes`` bytes of payload between arrival and resolution (written, dead-lettered or
stale). When it is full paho's thread waits, so the broker's TCP buffers fill and it stops
sending. The broker's own ``max_inflight_messages`` is the first bound; this one holds whatever
the broker allows (a few huge messages count for what they weigh).
"""

from __future__ import annotations

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
        self.client = make_client(
            config.mqtt,
            config.client_id,
            clean_session=False,
            manual_ack=True,
            will=Will(status_topic, will_payload),
        )
        if _PAHO_LOG.isEnabledFor(logging.DEBUG):  # paho logs every packet: costly at its rates
            self.client.enable_logger(_PAHO_LOG)
        self.client.max_inflight_messages_set(100)  # our own publishes: dead letters, confirmations
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # --- the core's Broker ---------------------------------------------------------------------

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    @property
    def connected(self) -> bool:
        return self._connected

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos, retain)

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
        """Publish ``offline`` (retained), disconnect, stop paho's thread."""
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
