"""Who touches what in the publisher: paho's thread hands typed events over and touches nothing of
the sender's; the instrument's health is read as a snapshot while other threads extend it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from soclab.dev.sim.steady import SteadyInstrument
from soclab.edge.instruments.base import Health
from soclab.edge.publisher.config import load
from soclab.edge.publisher.service import Connected, Disconnected, PubAck, Publisher, Stored


class Watched:
    """Wraps an object and records the thread of every attribute read."""

    def __init__(self, target: Any) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "threads", set())

    def __getattr__(self, name: str) -> Any:
        self.threads.add(threading.current_thread().name)
        return getattr(self._target, name)


@pytest.fixture
def publisher(tmp_path: Path) -> Iterator[Publisher]:
    env = {
        "SOCLAB_SOURCE_SITE": "lab1",
        "SOCLAB_SOURCE_NODE": "pi-01",
        "SOCLAB_SOURCE_DEVICE": "labjack",
        "SOCLAB_SOURCE_KIND": "labjack",
        "SOCLAB_SPOOL_PATH": str(tmp_path / "spool.sqlite"),
    }
    made = Publisher(load(None, env=env), SteadyInstrument(10))
    yield made
    made.spool.close()


def test_pahos_callbacks_hand_typed_events_to_the_sender_and_touch_nothing_else(publisher: Publisher) -> None:
    """Before, on_connect built the 'online' status (reading the ledger, which only the sender may
    use) on paho's thread."""
    publisher.ledger = Watched(publisher.ledger)  # type: ignore[assignment]
    publisher.client = Watched(publisher.client)  # type: ignore[assignment]
    client = SimpleNamespace(subscribe=lambda *a, **k: None)
    flags, ok = SimpleNamespace(session_present=False), SimpleNamespace(is_failure=False)
    message = SimpleNamespace(payload=b'{"schema":"soclab.stored/1"}')

    def network_thread() -> None:  # what paho calls, in its thread
        publisher._on_connect(client, None, flags, ok, None)  # type: ignore[arg-type]
        publisher._on_publish(client, None, 7, ok, None)  # type: ignore[arg-type]
        publisher._on_message(client, None, message)  # type: ignore[arg-type]
        publisher._on_disconnect(client, None, flags, ok, None)  # type: ignore[arg-type]

    paho = threading.Thread(target=network_thread, name="paho")
    paho.start()
    paho.join()
    assert publisher.ledger.threads == set()  # type: ignore[attr-defined]
    assert publisher.client.threads == set()  # type: ignore[attr-defined]
    events = [publisher._events.get_nowait() for _ in range(4)]
    assert [type(e) for e in events] == [Connected, PubAck, Stored, Disconnected]
    for event in events:
        publisher._events.put(event)
    publisher._handle_events()  # the sender: the ledger, the counters, the 'online' status
    assert publisher.ledger.threads == {threading.current_thread().name}  # type: ignore[attr-defined]
    assert publisher.counters["connects"] == 1


def test_the_status_reads_health_while_another_thread_extends_it(publisher: Publisher) -> None:
    """The status copies the driver's health under its lock: iterating a dict that acquisition
    extends with a new name can raise 'dictionary changed size during iteration'."""
    health: Health = publisher.instrument.health
    stop = threading.Event()

    def extend() -> None:
        for i in range(30_000):  # bounded: each one a new name
            if stop.is_set():
                return
            health.count(f"name_{i}")
            health.set_gauge(f"gauge_{i % 97}", float(i))

    writer = threading.Thread(target=extend)
    writer.start()
    try:
        for _ in range(100):
            status = publisher.status()
            assert all(isinstance(v, int) for v in status["counters"].values())
    finally:
        stop.set()
        writer.join()
