"""The bridge: MQTT data messages in, InfluxDB points out, each message acknowledged once stored.

The MQTT session is persistent (fixed client id, MQTT 3.1.1 ``clean_session=False``, QoS 1
subscriptions to ``data``, ``replay``, ``status``, and the runs' ``journal`` and ``cmd/result``
(``runs``), of every device of ``site``) and paho runs
with ``manual_ack=True``: a message is acknowledged only after its points were written (or after
it was dead-lettered), so the broker keeps it, and redelivers it after a crash or reconnect. What
is written, when, and what is acknowledged is decided by ``core`` (delivery rules there), what is
accepted by ``intake`` (the checks), how points look by ``points``, the pipeline's own health
points by ``telemetry``. This module wires them to the world.

Replicas. With ``[bridge] share`` set, the bridge subscribes through ``$share/<share>/...`` with
a clean session: Mosquitto hands each message to one member of the group and forgets a member as
soon as its connection is gone (a persistent member that died would keep its turn, and its share
would queue in its session for ever: ``tests/fleet/test_shared_subscriptions.py``). What a dead
member held unacknowledged is lost at the broker and comes back from the edge, which resends
every batch not confirmed (``[mqtt] resend_grace_s``). Without ``share``, replicas split the
data by ``site``, each with its own persistent session.

Threads, each the only owner of what it touches, and typed messages between them:

- paho's network thread (``connection.MqttBroker``): waits for room in the receive window and
  puts each message, as a ``core.Received``, into the writer's inbox.
- the writer thread owns the ``Core`` (and through it the intake, the telemetry and the ledger
  of unacknowledged messages). It takes ``Received``, ``WriteDone`` and ``_Stop`` from its inbox,
  hands ``core.Write`` requests to the sink thread, publishes dead letters, confirmations and
  acknowledgements through the broker (paho's publish and ack are thread-safe), and the bridge's
  status every ``status_interval_s``: a writer that hangs stops saying it is alive.
- the sink thread owns the ``InfluxSink``: it writes one ``Write`` at a time and answers with a
  ``WriteDone``, so the writer decodes the next batch while the database works on this one.

Status. The bridge is not an instrument, so ``soclab.status/1`` (whose source names one) does not
fit; it publishes a retained JSON object on ``soclab-bridge/<id>/status``, outside the
``soclab/`` tree that devices and ACLs are organised by: ``{"bridge": id, "state":
"online"|"offline", "t_ns", "counters", "gauges", "last_error"}``, every ``status_interval_s``,
with ``offline`` as the last will and on a clean stop. ``Bridge.counters()`` gives the same
counters in process.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from soclab.cloud.bridge import runs
from soclab.cloud.bridge.config import BridgeConfig
from soclab.cloud.bridge.connection import MqttBroker, Window
from soclab.cloud.bridge.core import (
    Core,
    Counters,
    Failed,
    Outcome,
    Received,
    Refused,
    Settings,
    Stored,
    Write,
)
from soclab.cloud.bridge.intake import Intake
from soclab.cloud.bridge.sink import InfluxSink, Sink, WriteFailed, WriteRejected
from soclab.cloud.bridge.telemetry import Telemetry
from soclab.wire import Topic
from soclab.wire.topics import bridge_consumer, bridge_topic

log = logging.getLogger("soclab.cloud.bridge")


@dataclass(frozen=True, slots=True)
class WriteDone:
    """The sink thread's answer for one write."""

    write: Write
    outcome: Outcome


class _Stop:
    """Tells the writer to write what it holds and finish."""


_Inbox = queue.SimpleQueue[Received | WriteDone | _Stop]
_ROUND = 500  # inbox items the writer handles at most between two rounds of writes and acks


class Bridge:
    """``with Bridge(config) as bridge:`` consumes until the block ends (or ``stop()``).

    ``start()`` returns at once; the bridge connects (and reconnects) in the background.
    ``wait_subscribed()`` waits for the broker to confirm the subscriptions: from then on the
    session exists and every message for it is kept until the bridge has stored it. ``sink``
    replaces the InfluxDB sink (anything with ``write(body)`` and ``close()``).
    """

    def __init__(self, config: BridgeConfig, *, sink: Sink | None = None) -> None:
        self.config = c = config.check()
        # Replicas sharing the data: Mosquitto hands each message to one member of the group.
        share = f"$share/{c.share}/" if c.share else ""
        kinds = ("data", "replay", "status", *runs.KINDS)  # runs: the journals, command results
        self.subscriptions = [share + Topic.subscription(kind, c.site) for kind in kinds]
        self.status_topic = bridge_topic(c.id, "status")
        self.consumer = bridge_consumer(c.id)
        self.failure: BaseException | None = None
        self._counters = Counters()
        self._inbox: _Inbox = queue.SimpleQueue()
        self._writes: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._started = False
        self._gauges: dict[str, Any] = {}
        self._window = Window(c.mqtt.max_pending_messages, c.mqtt.max_pending_bytes)
        self._broker = MqttBroker(
            c,
            subscriptions=self.subscriptions,
            status_topic=self.status_topic,
            will_payload=status_payload(c.id, "offline", "connection-lost", {}, {}, None),
            online_payload=lambda: self._status_payload("online"),
            deliver=self._inbox.put,
            window=self._window,
            stopping=self._stopping,
            counters=self._counters,
            fail=self._fail,
        )
        settings = Settings(
            batch_points=c.batch.points,
            batch_ms=c.batch.ms,
            idle_ms=c.batch.idle_ms,
            retry_initial_s=c.retry.initial_s,
            retry_max_s=c.retry.max_s,
            shutdown_timeout_s=c.shutdown_timeout_s,
            consumer=self.consumer,
            fallback_deadletter_topic=bridge_topic(c.id, "deadletter"),
            excerpt_bytes=c.intake.excerpt_bytes,
            telemetry_interval_s=c.status_interval_s,  # the bridge's health: status and telemetry alike
        )
        self._core = Core(
            settings,
            intake=Intake(c.intake),
            telemetry=Telemetry(c.id),
            broker=self._broker,
            release=self._window.release,
            counters=self._counters,
        )
        i = c.influx
        self._sink = sink or InfluxSink(i.url, i.token, i.org, i.bucket, timeout_ms=i.timeout_ms, gzip=i.gzip)
        self._writer = threading.Thread(target=self._guard, args=(self._run_writer,), name="bridge-writer")
        self._sink_thread = threading.Thread(
            target=self._guard, args=(self._run_sink,), name="bridge-sink", daemon=True
        )

    # --- public -------------------------------------------------------------------------------

    def start(self) -> Bridge:
        c = self.config
        log.info(
            "event=starting bridge=%s broker=%s:%d client_id=%s subscriptions=%s influx=%s bucket=%s",
            c.id, c.mqtt.host, c.mqtt.port, c.client_id, ",".join(self.subscriptions), c.influx.url,
            c.influx.bucket,
        )  # fmt: skip
        self._started = True
        self._writer.start()
        self._sink_thread.start()
        self._broker.start()
        return self

    def wait_subscribed(self, timeout: float) -> None:
        """Return once the broker has confirmed the subscriptions; TimeoutError otherwise."""
        if not self._broker.subscribed.wait(timeout):
            raise TimeoutError(
                f"bridge not subscribed to {self.subscriptions} after {timeout} s "
                f"(last error: {self._broker.last_error})"
            )

    def wait_finished(self, timeout: float | None = None) -> bool:
        """True once the bridge has stopped or failed (``failure`` then holds the exception)."""
        return self._finished.wait(timeout)

    def counters(self) -> dict[str, int]:
        return self._counters.snapshot()

    def gauges(self) -> dict[str, Any]:
        """The writer's last published gauges (it refreshes them with each status)."""
        return {**self._gauges, "connected": self._broker.connected, "held_publishes": self._broker.held}

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
        self._inbox.put(_Stop())
        self._writer.join()
        self._writes.put(None)
        self._sink_thread.join(timeout=self.config.influx.timeout_ms / 1000 + 1)
        self._broker.close(self._status_payload("offline", "stopped"))
        self._sink.close()
        log.info("event=stopped counters=%s", json.dumps(self.counters(), separators=(",", ":")))
        self._finished.set()

    def __enter__(self) -> Bridge:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- the writer thread --------------------------------------------------------------------

    def _run_writer(self) -> None:
        core = self._core
        inbox = self._inbox
        interval = self.config.status_interval_s
        next_status = time.monotonic() + interval
        while True:
            try:
                items = [inbox.get(timeout=core.wait_s())]
            except queue.Empty:
                items = []
            # What else has come meanwhile, handled before the next round of writes and
            # acknowledgements: under load the per-round work is shared by many messages.
            while items and len(items) < _ROUND and not inbox.empty():
                items.append(inbox.get_nowait())
            for item in items:
                if isinstance(item, Received):
                    core.receive(item)
                elif isinstance(item, WriteDone):
                    core.done(item.write, item.outcome)
                elif isinstance(item, _Stop):
                    core.stop()
            for write in core.writes():
                self._writes.put(write)
            self._broker.flush()  # confirmations held back while paho's thread was behind
            core.acknowledge()
            self._gauges = core.gauges()
            if core.finished():
                return
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + interval
                if self._broker.connected:
                    self._broker.publish(self.status_topic, self._status_payload("online"), 0, True)

    # --- the sink thread ----------------------------------------------------------------------

    def _run_sink(self) -> None:
        while (write := self._writes.get()) is not None:
            outcome: Outcome
            try:
                self._sink.write(write.body)
                outcome = Stored()
            except WriteRejected as exc:
                outcome = Refused(str(exc))
            except WriteFailed as exc:
                outcome = Failed(str(exc), exc.retry_after)
            self._inbox.put(WriteDone(write, outcome))

    # --- status and failures ------------------------------------------------------------------

    def _status_payload(self, state: str, reason: str | None = None) -> bytes:
        last_error = self._core.last_error or self._broker.last_error
        return status_payload(self.config.id, state, reason, self.counters(), self.gauges(), last_error)

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


def status_payload(
    bridge_id: str,
    state: str,
    reason: str | None,
    counters: dict[str, int],
    gauges: dict[str, Any],
    last_error: str | None,
) -> bytes:
    """The bridge's status message (see the module's docstring)."""
    status: dict[str, Any] = {"bridge": bridge_id, "state": state, "t_ns": time.time_ns()}
    if reason:
        status["reason"] = reason
    status.update(counters=counters, gauges=gauges, last_error=last_error)
    return json.dumps(status, separators=(",", ":")).encode()
