"""The bridge's delivery core with fakes for the broker, the database and the clock.

The fake database behaves as InfluxDB does where it matters: a point is identified by series and
time (a rewrite overwrites), and a request with refused points stores the others and says
``partial write ... dropped=N``. The real servers are in test_bridge.py.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from soclab.cloud.bridge.connection import Window
from soclab.cloud.bridge.core import (
    Core,
    Failed,
    Outcome,
    Received,
    Refused,
    Settings,
    Stored,
    Write,
)
from soclab.cloud.bridge.intake import Intake
from soclab.cloud.bridge.telemetry import Telemetry

NOW_NS = 1_700_000_000_000_000_000
T0 = NOW_NS - 60 * 10**9
SITE = "lab1"


# --- fakes ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return NOW_NS + int((self.now - 1000.0) * 1e9)


@dataclass
class Handle:
    published: bool = True

    def is_published(self) -> bool:
        return self.published


@dataclass
class Broker:
    generation: int = 1
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    handles: list[Handle] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    confirm_publishes: bool = True

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Handle:
        self.published.append((topic, json.loads(payload)))
        handle = Handle(self.confirm_publishes)
        self.handles.append(handle)
        return handle

    def ack(self, mid: int, qos: int, generation: int) -> bool:
        if generation != self.generation:
            return False
        self.acks.append(mid)
        return True

    def on(self, kind: str) -> list[dict[str, Any]]:
        return [m for topic, m in self.published if topic.endswith(f"/{kind}")]


class Database:
    """Points by (series, time); ``refuse(line)`` says which lines it refuses (and why)."""

    def __init__(self, refuse: Callable[[bytes], bool] = lambda line: False) -> None:
        self.points: dict[tuple[bytes, bytes], bytes] = {}
        self.refuse = refuse
        self.requests = 0
        self.down = False

    def write(self, body: bytes) -> Outcome:
        self.requests += 1
        if self.down:
            return Failed("connection refused")
        lines = body.split(b"\n")
        refused = [line for line in lines if self.refuse(line)]
        for line in lines:
            if line not in refused:
                head, fields, t = line.rsplit(b" ", 2)
                self.points[(head, t)] = fields
        if refused:
            return Refused(f"HTTP 400: partial write: field type conflict dropped={len(refused)}")
        return Stored()

    def series(self, measurement: bytes) -> list[tuple[bytes, bytes, bytes]]:
        return [(h, t, f) for (h, t), f in sorted(self.points.items()) if h.startswith(measurement + b",")]

    def seqs(self, device: str = "labjack") -> list[int]:
        found = []
        for head, _, fields in self.series(b"labjack"):
            if f"device={device},".encode() in head:
                found.append(int(re.search(rb"seq=(\d+)i", fields).group(1)))  # type: ignore[union-attr]
        return sorted(found)


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.clock = Clock()
        self.broker = Broker()
        self.db = Database()
        self.released: list[int] = []
        self.mid = 0
        self.core = Core(
            Settings(**{"consumer": "soclab-bridge/t", **settings}),
            intake=Intake(),
            telemetry=Telemetry("t"),
            broker=self.broker,
            clock=self.clock,
            release=self.released.append,
        )

    def receive(
        self, payload: bytes | dict[str, Any], topic: str = f"soclab/{SITE}/pi-01/labjack/data"
    ) -> int:
        self.mid += 1
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.core.receive(Received(self.mid, 1, topic, body, self.broker.generation, self.clock.time_ns()))
        return self.mid

    def pending_writes(self) -> list[Write]:
        writes = self.core.writes()
        self.core.acknowledge()
        return writes

    def run(self, advance_s: float = 1.0, rounds: int = 1000) -> int:
        """Let time pass and the database answer until nothing is left to write; writes made."""
        made = 0
        for _ in range(rounds):
            self.clock.now += min(advance_s, max(self.core.wait_s(), 0.001))
            writes = self.core.writes()
            for write in writes:
                self.core.done(write, self.db.write(write.body))
                made += 1
            self.core.acknowledge()
            if self.core.idle:
                return made
        raise AssertionError(f"still busy after {rounds} rounds")


def message(first: int, count: int, device: str = "labjack", **values: Any) -> dict[str, Any]:
    return {
        "schema": "soclab.data/1",
        "source": {"site": SITE, "node": "pi-01", "device": device, "kind": "labjack"},
        "samples": [
            {"seq": s, "t_ns": T0 + s * 1000, "values": {"ain0": 1.5, **values.get(str(s), {})}}
            for s in range(first, first + count)
        ],
    }


# --- tests --------------------------------------------------------------------------------------


def test_messages_are_written_in_one_batch_then_acknowledged_in_order() -> None:
    h = Harness()
    mids = [h.receive(message(first, 10)) for first in (0, 10, 20)]
    assert h.pending_writes() == []  # the batch waits for idle_ms or ms
    assert h.broker.acks == []
    h.clock.now += 0.01
    (write,) = h.pending_writes()
    assert h.broker.acks == []  # not before the write succeeded
    h.core.done(write, h.db.write(write.body))
    h.core.acknowledge()
    assert h.broker.acks == mids
    assert h.db.seqs() == list(range(30))
    (confirmation,) = h.broker.on("stored")
    assert confirmation["stored"] == [[0, 29]]
    assert h.core.counters.snapshot()["points_written"] == 30
    assert sorted(h.released) == sorted([len(json.dumps(message(f, 10))) for f in (0, 10, 20)])


def test_a_full_batch_is_cut_at_once_and_the_next_forms_while_it_is_written() -> None:
    h = Harness(batch_points=20)
    h.receive(message(0, 10))
    h.receive(message(10, 10))
    (first,) = h.pending_writes()  # full: no waiting
    h.receive(message(20, 10))
    h.receive(message(30, 10))
    assert h.pending_writes() == []  # one write in flight at a time
    h.core.done(first, h.db.write(first.body))
    (second,) = h.pending_writes()
    h.core.done(second, h.db.write(second.body))
    h.core.acknowledge()
    assert h.broker.acks == [1, 2, 3, 4]
    assert h.db.seqs() == list(range(40))


def test_a_failing_database_is_retried_with_backoff_and_nothing_is_acknowledged_meanwhile() -> None:
    h = Harness(retry_initial_s=0.5, retry_max_s=2.0)
    h.db.down = True
    h.receive(message(0, 10))
    attempts: list[float] = []
    while h.clock.now < 1007.0:
        h.clock.now += 0.01
        for write in h.pending_writes():
            attempts.append(h.clock.now)
            h.core.done(write, h.db.write(write.body))
        if len(attempts) == 2 and h.mid == 1:
            h.receive(message(10, 6))  # more arrives during the outage
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(attempts)]
    assert gaps == [0.5, 1.0, 2.0, 2.0]
    assert h.broker.acks == []
    h.db.down = False
    h.run()
    assert h.broker.acks == [1, 2]
    assert h.db.seqs() == list(range(16))
    assert h.core.counters.snapshot()["write_retries"] >= 5


def test_a_refused_batch_is_split_and_only_the_refused_points_are_dead_lettered() -> None:
    # Sample 57 of the second message has a number where InfluxDB has a boolean (the bridge could
    # not know: another bridge, or this one before its restart, stored the boolean).
    h = Harness()
    h.db.refuse = lambda line: b"load_en=1.0" in line
    h.receive(message(0, 100))
    h.receive(message(100, 100, **{"157": {"load_en": 1.0}}))
    h.receive(message(200, 100))
    writes = h.run()
    assert h.db.seqs() == [s for s in range(300) if s != 157]
    stored = h.broker.on("stored")
    assert {"stored": [[100, 156], [158, 199]], "dead_lettered": [[157, 157]]} in [
        {k: v for k, v in m.items() if k in ("stored", "dead_lettered")} for m in stored
    ]
    (letter,) = h.broker.on("deadletter")
    assert letter["reason"].startswith(
        "InfluxDB refused 1 of 100 points (samples/57); the other 99 are stored"
    )
    assert "field type conflict" in letter["reason"]
    assert h.broker.acks == [1, 2, 3]
    assert writes <= 1 + 3 + 2 * 7 + 2  # batch, split, halves down to one point, telemetry
    assert h.core.counters.snapshot()["points_refused"] == 1


def test_a_message_whose_every_point_is_refused_costs_one_write_not_one_per_point() -> None:
    h = Harness()
    h.db.refuse = lambda line: b"labjack" in line and b"device=bad" in line
    h.receive(message(0, 1000, device="bad"), topic=f"soclab/{SITE}/pi-01/bad/data")
    assert h.run() <= 3  # the message, its telemetry
    (letter,) = h.broker.on("deadletter")
    assert letter["reason"].startswith("InfluxDB refused the points: HTTP 400")
    (confirmation,) = h.broker.on("stored")
    assert confirmation["dead_lettered"] == [[0, 999]]
    assert "stored" not in confirmation


def test_dead_letters_are_counted_once_even_when_a_write_carrying_them_was_partly_refused() -> None:
    h = Harness()
    h.db.refuse = lambda line: b"load_en=1.0" in line
    h.receive(b"not json")  # one dead letter, pending for the next telemetry record
    h.receive(message(0, 10))
    h.run()
    h.receive(message(10, 10, **{"15": {"load_en": 1.0}}))  # refused in part, with the record on it
    h.receive(message(20, 10))
    h.run()
    h.receive(message(30, 10))
    h.run()
    records = h.db.series(b"soclab_bridge")
    dead = sum(int(re.search(rb"dead_letters=(\d+)i", f).group(1)) for _, _, f in records)  # type: ignore[union-attr]
    samples = sum(int(re.search(rb"samples=(\d+)i", f).group(1)) for _, _, f in records)  # type: ignore[union-attr]
    assert dead == 2  # "not json" and the partly refused message
    assert samples == 39
    assert len(h.broker.on("deadletter")) == 2


def test_messages_of_an_earlier_connection_are_not_written_nor_acknowledged() -> None:
    h = Harness()
    h.receive(message(0, 10))
    h.broker.generation += 1  # the connection dropped: the broker will send it again
    h.receive(message(10, 10))
    h.run()
    assert h.db.seqs() == list(range(10, 20))
    assert h.broker.acks == [2]
    assert h.core.counters.snapshot()["redeliveries_expected"] == 1
    assert len(h.released) == 2


def test_a_dead_letter_is_acknowledged_once_the_broker_has_it_and_keeps_the_order() -> None:
    h = Harness()
    h.broker.confirm_publishes = False
    h.receive(b"\xff not json")
    h.receive(message(0, 5))
    h.run()
    assert h.broker.acks == []  # the dead letter is not at the broker yet; the next waits its turn
    h.broker.handles[0].published = True
    h.core.acknowledge()
    assert h.broker.acks == [1, 2]


def test_at_stop_a_failing_write_is_retried_until_the_deadline_then_left_unacknowledged() -> None:
    h = Harness(shutdown_timeout_s=3.0, retry_initial_s=0.5, retry_max_s=0.5)
    h.db.down = True
    h.receive(message(0, 10))
    h.core.stop()
    attempts = 0
    while not h.core.finished():
        for write in h.core.writes():
            attempts += 1
            h.core.done(write, h.db.write(write.body))
        h.clock.now += max(h.core.wait_s(), 0.01)
        assert h.clock.now < 1010, "never finished"
    assert 5 <= attempts <= 8
    assert h.broker.acks == []


def test_at_stop_what_was_received_is_written_at_once() -> None:
    h = Harness(batch_ms=10_000, idle_ms=10_000)
    h.receive(message(0, 10))
    h.core.stop()
    (write,) = h.pending_writes()
    h.core.done(write, h.db.write(write.body))
    for telemetry in h.pending_writes():
        h.core.done(telemetry, h.db.write(telemetry.body))
    h.core.acknowledge()
    assert h.core.finished()
    assert h.broker.acks == [1]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{", "not JSON"),
        (json.dumps(message(0, 1)).encode("utf-16"), "not JSON: not UTF-8"),
        (b"\xef\xbb\xbf" + json.dumps(message(0, 1)).encode(), "not JSON: starts with a byte order mark"),
    ],
)
def test_what_the_intake_refuses_is_dead_lettered_with_its_reason(payload: bytes, reason: str) -> None:
    h = Harness()
    h.receive(payload)
    h.run()
    (letter,) = h.broker.on("deadletter")
    assert letter["reason"].startswith(reason)
    assert h.broker.acks == [1]
    assert h.db.seqs() == []


def test_the_receive_window_holds_bytes_not_only_messages() -> None:
    window = Window(messages=100, size=3000)
    stopping = threading.Event()
    assert window.take(2000, stopping)
    assert window.take(1000, stopping)
    taken = threading.Event()
    waiter = threading.Thread(target=lambda: window.take(10, stopping) and taken.set())
    waiter.start()
    assert not taken.wait(0.3)  # full by bytes, far from full by count
    window.release(2000)
    assert taken.wait(5)
    waiter.join()
    window.release(1000)
    window.release(10)
    assert window.take(10_000, stopping)  # one message always fits when nothing is held
