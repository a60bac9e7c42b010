"""The benchmarks' load generators (bench/loadgen.py) deliver every message once, in order per
topic, and say how many they sent: a benchmark that trusts them must not count what never left."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from soclab.dev.localservices import Mosquitto
from soclab.wire import DATA_SCHEMA, validate
from soclab.wire.mqtt import MqttSettings

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from loadgen import fleet, mosquitto_pub, paho_workers


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


def test_paho_workers_send_a_fleet_with_sequence_numbers_and_time_stamps(
    mosquitto: Mosquitto, site: str, mqtt_collector: Any
) -> None:
    collector = mqtt_collector(mosquitto, f"soclab/{site}/#")
    source = fleet(site, devices=20, hz=10, seconds=0.5)
    result = paho_workers(MqttSettings(host=mosquitto.host, port=mosquitto.port), source, workers=2)
    assert (result.messages, result.processes) == (100, 2)
    messages = [validate(json.loads(m.payload), DATA_SCHEMA) for m in collector.wait_for(100)]
    seqs = Counter((m["source"]["device"], m["samples"][0]["seq"]) for m in messages)
    assert set(seqs) == {(f"d{d}", s) for d in range(20) for s in range(5)}
    assert set(seqs.values()) == {1}
