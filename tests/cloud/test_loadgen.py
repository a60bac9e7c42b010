"""The benchmarks' load generators (bench/loadgen.py) deliver every message once, in order per
topic, and say how many they sent: a benchmark that trusts them must not count what never left.
The fleet generator also counts the confirmations each device gets from a real bridge."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

from soclab.dev.localservices import Mosquitto
from soclab.wire.mqtt import MqttSettings

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from loadgen import Swarm, SwarmPlan, mosquitto_pub, split


def test_mosquitto_pub_sends_each_topics_payloads_once_in_order(
    mosquitto: Mosquitto, site: str, mqtt_collector: Any
) -> None:
    collector = mqtt_collector(mosquitto, f"soclab/{site}/#")
    streams = {f"soclab/{site}/pi-01/d{d}/data": [b'{"n":%d}' % i for i in range(50)] for d in range(2)}
    result = mosquitto_pub(MqttSettings(host=mosquitto.host, port=mosquitto.port), streams)
    assert (result.messages, result.processes) == (100, 2)
    received = collector.wait_for(100)
    for topic, payloads in streams.items():
        assert [m.payload for m in received if m.topic == topic] == payloads


def test_a_swarm_sends_every_device_its_samples_and_counts_the_bridges_confirmations(
    mosquitto: Mosquitto, influxdb: Any, site: str, start_bridge: Any
) -> None:
    start_bridge(mosquitto, influxdb, f"{site}0")
    settings = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    plans = [
        SwarmPlan(settings, first, count, 1, 10.0, 1.0, 10.0, prefix=site) for first, count in split(20, 2)
    ]
    swarm = Swarm(plans)
    start_at = swarm.start(timeout=60)
    results = swarm.results(timeout=60)
    published = [n for r in results for n in r.published]
    assert published == [10] * 20
    assert [n for r in results for n in r.confirmed] == published
    assert sum(r.acked for r in results) == 200
    lags = [lag for r in results for lag in r.lag_ns]
    assert len(lags) == 200
    assert all(0 < lag < 10 * 10**9 for lag in lags)
    acquired = sorted(t for r in results for t in r.acquired_ns)
    assert start_at * 1e9 <= acquired[0] < (start_at + 0.1) * 1e9  # 10 Hz, spread over the period
    assert (start_at + 0.9) * 1e9 <= acquired[-1] < (start_at + 1.1) * 1e9
    rows = influxdb.rows(f"SELECT seq FROM mppt WHERE site = '{site}0'")
    seqs = Counter(
        (row["device"], row["seq"])
        for row in influxdb.rows(f"SELECT seq, device FROM mppt WHERE site = '{site}0'")
    )
    assert len(rows) == 200
    assert set(seqs) == {(f"dev{d}", s) for d in range(20) for s in range(10)}
