"""Publish a replay's batches through the broker and wait for the bridge to store them.

At most ``window`` batches are in flight (sent, not yet confirmed stored or refused): the tool
never hands paho more than that (past 65,535 unacknowledged messages paho's packet ids would run
out), and the broker and the bridge see a steady stream rather than the whole file at once. The
bridge's ``soclab.stored/1`` confirmations on ``.../replay/stored`` settle the batches
(``Tally``); so do its dead letters on ``.../deadletter`` for a message it refused whole (the
dead letter's SHA-256 of the original payload names the batch; the reason is kept for the
report). Lost batches are sent again; a bridge that confirms nothing for ``timeout_s`` while
batches are in flight ends the replay (``Stalled``), with the counts so far.

Threads: paho's network thread only queues what arrives; everything else happens in the thread
that calls ``run()``.
"""

from __future__ import annotations

import collections
import hashlib
import queue
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from soclab.tools.replay.messages import CONFIRMATION_KIND, Batch
from soclab.tools.replay.tally import Tally
from soclab.wire import DEADLETTER_SCHEMA, STORED_SCHEMA, InvalidMessage, decode, encode

MAX_WINDOW = 10_000  # far below paho's 65,535 packet ids, resends included
_TICK_S = 0.05


class Stalled(RuntimeError):
    """The bridge confirmed nothing for too long while batches were in flight."""


class SendError(RuntimeError):
    """paho refused a message (not a lost connection, which it survives by itself)."""


@dataclass(frozen=True)
class Pace:
    """How the sender behaves: in-flight window, resend grace, stall limit, replay speed."""

    window: int = 1000
    grace_s: float = 30.0
    timeout_s: float = 120.0
    speed: float = 0.0  # 0: as fast as the window allows; 1: real time; 60: a minute per second
    progress_every_s: float = 2.0

    def check(self) -> Pace:
        if not 1 <= self.window <= MAX_WINDOW:
            raise ValueError(f"the window must be 1..{MAX_WINDOW} messages, got {self.window}")
        if self.grace_s <= 0 or self.timeout_s <= 0:
            raise ValueError("the resend grace and the timeout must be positive")
        if self.speed < 0:
            raise ValueError("the speed cannot be negative")
        return self


def confirmation_filters(site: str, node: str) -> list[str]:
    """The bridge's confirmations and dead letters for the replayed node's devices."""
    return [f"soclab/{site}/{node}/+/{CONFIRMATION_KIND}", f"soclab/{site}/{node}/+/deadletter"]


class Inbox:
    """What paho's thread hands over: SUBACK outcomes and confirmation messages."""

    def __init__(self) -> None:
        self.subscribed: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self.messages: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()

    def attach(self, client: mqtt.Client, site: str, node: str, pace: Pace) -> None:
        """Before connecting: the in-flight window, and the subscriptions to the confirmations
        and dead letters, made again at every (re)connection."""
        client.max_inflight_messages_set(pace.window)
        client.max_queued_messages_set(0)  # unlimited: the window bounds it
        topics = [(topic, 1) for topic in confirmation_filters(site, node)]

        def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if not reason.is_failure:
                c.subscribe(topics)

        def on_subscribe(c: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
            self.subscribed.put(not any(r.is_failure for r in reasons))

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = lambda c, u, message: self.messages.put((message.topic, bytes(message.payload)))

    def wait_subscribed(self, timeout_s: float) -> None:
        try:
            granted = self.subscribed.get(timeout=timeout_s)
        except queue.Empty:
            raise ConnectionError(f"no answer to the subscription within {timeout_s:.0f} s") from None
        if not granted:
            raise ConnectionError("the broker refused the subscription to the bridge's confirmations")


class Sender:
    """``Sender(client, inbox, pace).run(batches)``: the counts stay in ``tally`` afterwards,
    also when ``run`` raises (Stalled, SendError, KeyboardInterrupt)."""

    def __init__(
        self,
        client: mqtt.Client,
        inbox: Inbox,
        pace: Pace,
        *,
        progress: Callable[[Tally], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.inbox = inbox
        self.pace = pace.check()
        self.progress = progress
        self.clock = clock
        self.tally = Tally(pace.grace_s, clock())
        self.bad_confirmations = 0
        self.refusals: collections.Counter[str] = collections.Counter()  # reason -> samples
        self._digests: dict[bytes, Batch] = {}  # SHA-256 of each payload sent -> its batch

    def run(self, batches: Iterable[Batch]) -> Tally:
        source = iter(batches)
        upcoming: Batch | None = next(source, None)
        start = self.clock()
        first_t_ns = upcoming.t_ns if upcoming else 0
        next_report = start + self.pace.progress_every_s
        while upcoming is not None or self.tally.in_flight:
            now = self.clock()
            for batch in self.tally.resend_due(now):
                self._publish(batch)
            wait = _TICK_S
            while upcoming is not None and self.tally.in_flight < self.pace.window:
                due = start + (upcoming.t_ns - first_t_ns) / 1e9 / self.pace.speed if self.pace.speed else now
                if due > now:
                    wait = min(wait, due - now)
                    break
                self._publish(upcoming)
                self.tally.sent(upcoming, now)
                upcoming = next(source, None)
            if self.tally.in_flight and now - self.tally.last_settled_at > self.pace.timeout_s:
                raise Stalled(
                    f"the bridge confirmed nothing for {self.pace.timeout_s:.0f} s "
                    f"({self.tally.in_flight} messages in flight): is it running, and does it store replays?"
                )
            if self.progress is not None and now >= next_report:
                self.progress(self.tally)
                next_report = now + self.pace.progress_every_s
            self._take_confirmations(wait)
        return self.tally

    def _publish(self, batch: Batch) -> None:
        payload = encode(batch.message)
        self._digests[hashlib.sha256(payload).digest()] = batch
        info = self.client.publish(batch.topic, payload, qos=1)
        if info.rc not in (
            mqtt.MQTT_ERR_SUCCESS,
            mqtt.MQTT_ERR_NO_CONN,
        ):  # NO_CONN: queued, sent on reconnect
            raise SendError(f"paho refused a message to {batch.topic}: {mqtt.error_string(info.rc)}")

    def _take_confirmations(self, wait_s: float) -> None:
        """Apply what arrived; wait up to ``wait_s`` for the first if nothing has."""
        timeout: float | None = wait_s
        while True:
            try:
                topic, payload = (
                    self.inbox.messages.get(timeout=timeout) if timeout else self.inbox.messages.get_nowait()
                )
            except queue.Empty:
                return
            timeout = None
            self._apply(topic, payload)

    def _apply(self, topic: str, payload: bytes) -> None:
        """One confirmation or dead letter; anything unreadable from the network is counted."""
        levels = topic.split("/")
        try:
            if levels[-1] == "deadletter":
                self._dead_letter(decode(payload, DEADLETTER_SCHEMA))
                return
            message = decode(payload, STORED_SCHEMA)
        except (InvalidMessage, ValueError, RecursionError):
            self.bad_confirmations += 1
            return
        if len(levels) != 6:
            self.bad_confirmations += 1
            return
        self.tally.confirmed(
            levels[3], message.get("stored", []), message.get("dead_lettered", []), self.clock()
        )

    def _dead_letter(self, letter: dict[str, Any]) -> None:
        """A message of this replay that the bridge refused whole: its samples are refused."""
        digest = letter.get("sha256")
        batch = self._digests.get(bytes.fromhex(digest)) if isinstance(digest, str) else None
        if batch is None or letter["topic"] != batch.topic:
            return  # not one of ours (another sender's, or before this replay)
        refused = self.tally.confirmed(batch.device, [], [[batch.first, batch.last]], self.clock())
        if refused:
            self.refusals[letter["reason"][:300]] += refused
