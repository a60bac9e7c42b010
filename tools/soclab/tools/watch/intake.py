"""The monitor's MQTT side: an ordinary subscriber that only reads, and never falls behind silently.

paho's network thread does nothing but append each message, with its arrival time, to a queue;
one worker thread hands them to a handler (the model, or the ``--json`` printer). If the handler
cannot keep up (a LabJack streaming 2 x 10 kHz to a slow terminal), the queue grows, and the
monitor says so: ``IntakeStats`` has the queue's length and the age of its oldest message. The
queue is bounded (``max_queued``): past it, new messages are dropped and counted, and the monitor
shows that too; it never grows without bound.

The subscription is QoS 0 with a clean session: a monitor should cost the broker nothing and keep
no queue there while it is away, and what it shows is what this subscriber received (a message
lost by a reconnect shows as a sequence gap, which is the truth for this subscriber).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from soclab.tools.connection import connect
from soclab.tools.watch.model import IntakeStats
from soclab.wire import Topic
from soclab.wire.mqtt import MqttSettings

Handler = Callable[[str, bytes, float, bool], None]  # topic, payload, arrival time, retained

# What the live view reads; ``--json`` needs only data.
VIEW_KINDS = ("data", "status", "stored", "deadletter", "cmd/result")
BRIDGE_TOPICS = ("soclab-bridge/+/status", "soclab-bridge/+/deadletter")


def subscriptions(kinds: tuple[str, ...] = VIEW_KINDS, site: str = "*", bridges: bool = True) -> list[str]:
    """Topic filters for ``kinds`` of every device (of one site when ``site`` has no wildcard)."""
    level = site if site and not any(c in site for c in "*?[") else "+"
    topics = [Topic.subscription(kind, level) for kind in kinds]
    return topics + list(BRIDGE_TOPICS if bridges else ())


class Intake:
    def __init__(
        self,
        settings: MqttSettings,
        handler: Handler,
        topics: list[str],
        *,
        lock: threading.Lock | None = None,
        max_queued: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.lock = lock or threading.Lock()  # held while the handler runs: readers take it too
        self._handler = handler
        self._clock = clock
        self._max_queued = max_queued
        self._queue: collections.deque[tuple[str, bytes, float, bool]] = collections.deque()
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="watch-intake", daemon=True)
        self._client: mqtt.Client | None = None
        self._connected = False
        self._since: float | None = None
        self._dropped = 0
        self._received = 0
        self._handling: float | None = None  # arrival time of the messages being handled
        self.failure: BaseException | None = None

    def start(self, timeout_s: float = 10.0) -> Intake:
        """Connect and subscribe; ConnectionError if the broker cannot be reached or refuses."""
        self._worker.start()
        self._client = connect(self.settings, "watch", timeout_s=timeout_s, setup=self._setup)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._ready:
            self._ready.notify()
        if self._client is not None:
            self._client.disable_logger()
            self._client.disconnect()
            self._client.loop_stop()
        if self._worker.is_alive():
            self._worker.join(timeout=5)

    def stats(self) -> IntakeStats:
        now = self._clock()
        with self._ready:
            waiting = [
                t for t in (self._handling, self._queue[0][2] if self._queue else None) if t is not None
            ]
            oldest = now - min(waiting) if waiting else 0.0
            return IntakeStats(
                self._connected, self._since, len(self._queue), oldest, self._dropped, self._received
            )

    # --- paho's thread: queue and return ---------------------------------------------------------

    def _setup(self, client: mqtt.Client) -> None:
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe([(topic, 0) for topic in self.topics])
        self._connected, self._since = True, self._clock()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected, self._since = False, self._clock()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._ready:
            self._received += 1
            if len(self._queue) >= self._max_queued:
                self._dropped += 1
                return
            self._queue.append((message.topic, bytes(message.payload), self._clock(), bool(message.retain)))
            if len(self._queue) == 1:
                self._ready.notify()

    # --- the worker ------------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                with self._ready:
                    while not self._queue and not self._stop.is_set():
                        self._ready.wait(0.5)
                    if self._stop.is_set():
                        return
                    topic, payload, arrived, retained = self._queue.popleft()
                    self._handling = arrived
                with self.lock:
                    self._handler(topic, payload, arrived, retained)
                self._handling = None
        except BaseException as exc:  # a bug in a handler: kept, and shown by whoever runs us
            self.failure = exc
            raise
