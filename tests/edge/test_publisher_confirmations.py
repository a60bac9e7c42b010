"""Storage confirmations come from the network: a publisher survives any, and removes from its
spool only what it published and the bridge has not confirmed yet (issue 11, findings 5 and 7).

A real broker, bridge and database; the publisher in a thread; a hostile client publishing on the
device's ``stored`` topic, which the development broker (``make lab``'s) lets anyone do.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from soclab.dev.localservices import Mosquitto
from soclab.dev.sim.steady import SteadyInstrument
from soclab.edge.publisher.config import load
from soclab.edge.publisher.service import Publisher
from soclab.edge.spool import Spool
from soclab.wire import STORED_SCHEMA

WAIT_S = 30.0


def eventually(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not true after {timeout} s: {what}"
        time.sleep(0.05)


def confirmation(**fields: Any) -> bytes:
    return json.dumps({"schema": STORED_SCHEMA, "consumer": "soclab-bridge/x", "t_ns": 1, **fields}).encode()


class Running:
    """A publisher of a 20 Hz instrument in a thread; its status read from the broker."""

    def __init__(self, tmp_path: Path, broker: Mosquitto, site: str, status, **env: str) -> None:
        config = load(None, env={
            "SOCLAB_SOURCE_SITE": site, "SOCLAB_SOURCE_NODE": "pi-01",
            "SOCLAB_SOURCE_DEVICE": "eload", "SOCLAB_SOURCE_KIND": "eload",
            "SOCLAB_MQTT_HOST": broker.host, "SOCLAB_MQTT_PORT": str(broker.port),
            "SOCLAB_SPOOL_PATH": str(tmp_path / "eload.sqlite"), "SOCLAB_STATUS_INTERVAL_S": "0.2",
            **env,
        })  # fmt: skip
        self.publisher = Publisher(config, SteadyInstrument(20, kind="eload"))
        self._status = status
        self.thread = threading.Thread(target=self.publisher.run, daemon=True)
        self.thread.start()

    def status(self) -> dict[str, Any]:
        while not self._status.inbox.empty():
            self._status.seen.append(self._status.inbox.get())
        return json.loads(self._status.seen[-1].payload) if self._status.seen else {}

    def counter(self, name: str) -> int:
        return int(self.status().get("counters", {}).get(name, 0))

    def gauge(self, name: str) -> float:
        return float(self.status().get("gauges", {}).get(name) or 0)

    def until(self, check: Callable[[], Any], what: str) -> None:
        """Wait for ``check()``; fail with the publisher's last status."""
        deadline = time.monotonic() + WAIT_S
        while not check():
            assert time.monotonic() < deadline, f"not true after {WAIT_S} s: {what}; {self.status()}"
            time.sleep(0.05)

    def stop(self) -> None:
        self.publisher.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@pytest.fixture
def run_publisher(tmp_path, mosquitto, site, mqtt_collector) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(**env: str) -> Running:
        status = mqtt_collector(mosquitto, f"soclab/{site}/pi-01/eload/status")
        running.append(Running(tmp_path, mosquitto, site, status, **env))
        return running[-1]

    yield start
    for r in running:
        if r.thread.is_alive():
            r.stop()


def none_lost_or_doubled(influxdb, spool_path: Path) -> int:
    """Every sample the publisher numbered is in the database exactly once, or still in its spool
    (not confirmed yet); returns how many are stored."""
    spool = Spool(spool_path)
    try:
        numbered, waiting = spool.next_seq, {row[0] for row in spool.peek(-1, 10**9)}
    finally:
        spool.close()
    rows = influxdb.wait_for_rows("SELECT seq FROM eload", numbered - len(waiting), timeout=WAIT_S)
    stored = sorted(int(r["seq"]) for r in rows)
    assert len(stored) == len(set(stored)), "a sample stored twice"
    assert set(stored) | waiting == set(range(numbered)), "a sample lost"
    return len(stored)


BAD_CONFIRMATIONS = {
    "integer of 5000 digits": confirmation(stored=[[0, 0]]).replace(b"0]]", b"9" * 5000 + b"]]"),
    "not JSON": b"stored everything",
    "not UTF-8": b'{"schema":"soclab.stored/1","consumer":"\xff"}',
    "nested deeply": b"[" * 100_000 + b"]" * 100_000,
    "fields missing": b'{"schema":"soclab.stored/1"}',
    "ranges as strings": confirmation(stored=[["0", "1000"]]),
    "a range of three": confirmation(stored=[[0, 5, 9]]),
    "5 MiB": confirmation(stored=[[0, 0]] * 700_000),
}


def test_bad_confirmations_are_counted_and_ignored_and_the_publisher_goes_on(
    run_publisher, mosquitto, site, mqtt_client, influxdb, start_bridge
):
    """Finding 5: a confirmation holding a 5000-digit integer made the e-load publisher exit
    (Python's integer-string limit raised out of decoding). Every bad confirmation is counted and
    ignored, removes nothing, and the good samples around them are all stored, once."""
    start_bridge(mosquitto, influxdb, site)
    running = run_publisher()
    eventually(lambda: running.counter("samples_confirmed") >= 20, "samples confirmed by the bridge")
    hostile = mqtt_client(mosquitto)
    for payload in BAD_CONFIRMATIONS.values():
        hostile.publish(f"soclab/{site}/pi-01/eload/stored", payload, qos=1).wait_for_publish(WAIT_S)
    forged = confirmation(stored=[[0, 10**6]]).replace(b"soclab-bridge/x", b"someone-else")
    hostile.publish(f"soclab/{site}/pi-01/eload/stored", forged, qos=1).wait_for_publish(WAIT_S)
    running.until(
        lambda: (
            running.counter("confirmations_invalid") == len(BAD_CONFIRMATIONS)
            and running.counter("confirmations_refused") == 1
        ),
        "every bad confirmation counted",
    )
    confirmed = running.counter("samples_confirmed")
    eventually(lambda: running.counter("samples_confirmed") >= confirmed + 20, "confirmations after them")
    assert running.thread.is_alive()
    running.stop()
    assert running.publisher.counters["confirmations_invalid"] == len(BAD_CONFIRMATIONS)
    assert none_lost_or_doubled(influxdb, running.publisher.config.spool_path) >= confirmed + 20


def test_forged_confirmations_remove_nothing_that_was_not_sent(
    run_publisher, mosquitto, site, mqtt_client, influxdb, start_bridge
):
    """Finding 7: forged confirmations deleted 250 LabJack samples before they were sent. Here the
    publisher holds its samples back (a long batching delay); confirmations and dead letters that
    name them, in the bridge's name, remove none; a later run sends them all, and the bridge
    stores each once."""
    running = run_publisher(SOCLAB_BATCH_MAX_DELAY_S="600", SOCLAB_BATCH_MAX_SAMPLES="100000")
    eventually(lambda: running.gauge("seq_next") >= 40, "samples acquired")
    hostile = mqtt_client(mosquitto)
    forged = confirmation(stored=[[0, 10**9]], dead_lettered=[[0, 10**9]])
    hostile.publish(f"soclab/{site}/pi-01/eload/stored", forged, qos=1).wait_for_publish(WAIT_S)
    eventually(lambda: running.counter("confirmations") == 1, "the forged confirmation handled")
    status = running.status()
    assert status["counters"]["samples_confirmed"] == 0
    assert status["counters"]["samples_dead_lettered"] == 0
    running.stop()
    held = Spool(running.publisher.config.spool_path)
    assert held.depth == held.next_seq >= 40  # nothing was removed
    acquired = held.next_seq
    held.close()

    start_bridge(mosquitto, influxdb, site)
    again = run_publisher()
    eventually(lambda: again.counter("samples_confirmed") >= acquired, "the held samples stored")
    again.stop()
    assert none_lost_or_doubled(influxdb, again.publisher.config.spool_path) >= acquired
