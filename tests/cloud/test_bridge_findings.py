"""The bridge's findings of the hardening campaign (issue 11: 1, 3, 4, 9, 10), each against a real
Mosquitto and a real InfluxDB: what a hostile or broken device sent, and what the bridge does now.

Each test failed on the bridge before its fix (the finding's number is in the test's docstring).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from soclab.cloud.bridge import RetryConfig
from soclab.cloud.bridge.config import IntakeConfig, MqttConfig
from soclab.cloud.bridge.sink import InfluxSink
from soclab.dev.localservices import Mosquitto
from soclab.wire import DEADLETTER_SCHEMA, Topic, validate

WAIT_S = 15.0
DAY_NS = 86400 * 10**9
InfluxTarget = Any  # tests/conftest.py
Collector = Any


def now_s() -> int:
    return time.time_ns() // 10**9 * 10**9


def data(site: str, device: str, kind: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema": "soclab.data/1",
        "source": {"site": site, "node": "pi-01", "device": device, "kind": kind},
        "samples": samples,
    }


def send(client: Any, topic: str, message: dict[str, Any] | bytes) -> None:
    payload = message if isinstance(message, bytes) else json.dumps(message).encode()
    client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)


def letters(collector: Collector, count: int) -> list[dict[str, Any]]:
    return [validate(json.loads(m.payload), DEADLETTER_SCHEMA) for m in collector.wait_for(count)]


def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not true after {timeout} s: {what}"
        time.sleep(0.05)


def test_a_huge_payload_of_control_characters_makes_a_small_dead_letter_and_data_goes_on(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Any,
) -> None:
    """Finding 1: the dead letter escaped each byte and outgrew the broker's packet limit."""
    start_bridge(mosquitto, influxdb, site)
    dead = mqtt_collector(mosquitto, f"soclab/{site}/+/+/deadletter")
    publisher = mqtt_client(mosquitto)
    topic = str(Topic(site, "pi-01", "mppt"))
    junk = b"\x01" * 2_900_000
    send(publisher, topic, junk)
    t = now_s()
    send(publisher, topic, data(site, "mppt", "mppt", [{"seq": 0, "t_ns": t, "values": {"bat_v": 12.5}}]))

    (message,) = dead.wait_for(1)
    assert len(message.payload) < 512 * 1024  # was 17 MB
    (letter,) = letters(dead, 1)
    assert letter["truncated"] is True
    assert letter["size"] == len(junk)
    assert letter["sha256"] == hashlib.sha256(junk).hexdigest()
    assert letter["reason"].startswith("not JSON")
    influxdb.wait_for_rows("SELECT bat_v FROM mppt", 1)


def test_a_payload_over_the_bridges_limit_is_dead_lettered_unread(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Any,
) -> None:
    """Finding 9: a payload limit below the broker's."""
    start_bridge(mosquitto, influxdb, site, intake=IntakeConfig(max_payload_bytes=100_000))
    dead = mqtt_collector(mosquitto, f"soclab/{site}/+/+/deadletter")
    publisher = mqtt_client(mosquitto)
    t = now_s()
    samples = [{"seq": i, "t_ns": t - i * 10**6, "values": {"ain0": 1.0}} for i in range(5000)]
    send(publisher, str(Topic(site, "pi-01", "labjack")), data(site, "labjack", "labjack", samples))
    (letter,) = letters(dead, 1)
    assert letter["reason"].startswith("payload of ")
    assert letter["reason"].endswith("is over the bridge's limit of 100000 bytes")


def test_future_booleans_a_device_changing_kind_and_a_field_changing_type_are_refused(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Any,
) -> None:
    """Finding 3: booleans 8 days ahead in mppt were stored and would have made a week of real
    MPPT samples fail as field type conflicts."""
    start_bridge(mosquitto, influxdb, site)
    dead = mqtt_collector(mosquitto, f"soclab/{site}/+/+/deadletter")
    publisher = mqtt_client(mosquitto)
    t = now_s()
    forged = {"bat_v": True, "bat_a": True, "soc_pct": True}
    send(
        publisher,
        f"soclab/{site}/pi-01/evil/data",
        data(site, "evil", "mppt", [{"seq": 0, "t_ns": t + 8 * DAY_NS, "values": forged}]),
    )
    (letter,) = letters(dead, 1)
    assert re.fullmatch(
        r"samples/0/t_ns is 691(1[0-9][0-9]|200) s ahead of the bridge's clock \(at most 300 s\)",
        letter["reason"],
    )

    mppt = str(Topic(site, "pi-01", "mppt"))
    send(publisher, mppt, data(site, "mppt", "mppt", [{"seq": 0, "t_ns": t, "values": {"bat_v": 12.5}}]))
    influxdb.wait_for_rows("SELECT bat_v FROM mppt", 1)
    send(publisher, mppt, data(site, "mppt", "eload", [{"seq": 1, "t_ns": t + 1, "values": {"bat_v": 12.5}}]))
    send(
        publisher,
        f"soclab/{site}/pi-01/evil/data",
        data(site, "evil", "mppt", [{"seq": 1, "t_ns": t + 2, "values": forged}]),
    )
    later = letters(dead, 3)[1:]
    assert (
        later[0]["reason"] == f"kind 'eload': device {site}/pi-01/mppt is a 'mppt' (a device keeps its kind)"
    )
    assert (
        later[1]["reason"]
        == "samples/0/values/bat_v is a boolean: mppt stores bat_v as float (a field keeps its type)"
    )
    assert [r["bat_v"] for r in influxdb.rows("SELECT bat_v FROM mppt")] == [12.5]


def test_one_message_cannot_spread_over_years_of_shards(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Any,
) -> None:
    """Finding 4: one sample per week since 2001 created 5,160 InfluxDB shards."""
    start_bridge(mosquitto, influxdb, site)
    dead = mqtt_collector(mosquitto, f"soclab/{site}/+/+/deadletter")
    publisher = mqtt_client(mosquitto)
    t = now_s()
    samples = [{"seq": i, "t_ns": t - (20 - i) * 7 * DAY_NS, "values": {"bat_v": 12.5}} for i in range(21)]
    send(publisher, f"soclab/{site}/pi-01/mppt/replay", data(site, "mppt", "mppt", samples))  # even a replay
    (letter,) = letters(dead, 1)
    assert letter["reason"] == "samples span 12096000 s (one message at most 86400 s)"
    assert influxdb.query("SELECT * FROM mppt") == []


def test_memory_is_bounded_by_bytes_held_not_by_messages(
    mosquitto: Mosquitto, own_influxdb: InfluxTarget, site: str, start_bridge: Any, mqtt_client: Any
) -> None:
    """Finding 9: 60 messages of 10 MB made the bridge hold 1.5 GB; the window counted messages."""
    window = MqttConfig(host=mosquitto.host, port=mosquitto.port, max_pending_bytes=2_000_000)
    bridge = start_bridge(
        mosquitto,
        own_influxdb,
        site,
        mqtt=window,
        retry=RetryConfig(initial_s=0.05, max_s=0.2),
        intake=IntakeConfig(max_payload_bytes=1_000_000),
    )
    own_influxdb.server.stop()
    publisher = mqtt_client(mosquitto)
    t = now_s()
    for first in range(0, 80_000, 10_000):  # 8 messages of about 550 kB
        samples = [
            {"seq": s, "t_ns": t - (80_000 - s) * 10**6, "values": {"ain0": 1.0}}
            for s in range(first, first + 10_000)
        ]
        send(publisher, str(Topic(site, "pi-01", "labjack")), data(site, "labjack", "labjack", samples))
    eventually(lambda: bridge.counters()["write_retries"] >= 3, "the bridge retrying")
    assert bridge.counters()["messages_received"] <= 4  # 2 MB of room: 3 messages, and the one waiting
    assert bridge.gauges()["pending_bytes"] <= 2_000_000
    own_influxdb.server.start()
    own_influxdb.wait_for_rows("SELECT count(seq) FROM labjack", 1)
    eventually(
        lambda: own_influxdb.rows("SELECT count(seq) FROM labjack")[0]["count"] == 80_000, "all stored", 60
    )


def partly_refused(site: str, influxdb: InfluxTarget) -> tuple[int, dict[str, Any]]:
    """A message of 100 samples whose sample 57 InfluxDB refuses (a type conflict the bridge
    cannot know: the boolean was written by someone else)."""
    t = now_s() - 60 * 10**9
    sink = InfluxSink(influxdb.url, influxdb.token, influxdb.org, influxdb.bucket)
    sink.write(f"mppt,device=other,node=pi-01,site={site} load_en=true {t - 10**9}".encode())
    sink.close()
    samples = [{"seq": i, "t_ns": t + i * 10**6, "values": {"bat_v": 12.5}} for i in range(100)]
    samples[57]["values"]["load_en"] = 1  # a number where the database has a boolean
    return t, data(site, "mppt", "mppt", samples)


def test_a_partly_refused_message_is_confirmed_sample_by_sample(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Any,
) -> None:
    """Finding 10: InfluxDB stored 99 of 100 points, the bridge dead-lettered the message and
    confirmed all 100 samples as dead letters (the publisher then forgot 99 stored ones)."""
    _, message = partly_refused(site, influxdb)
    start_bridge(mosquitto, influxdb, site)
    confirmations = mqtt_collector(mosquitto, f"soclab/{site}/pi-01/mppt/stored")
    dead = mqtt_collector(mosquitto, f"soclab/{site}/+/+/deadletter")
    send(mqtt_client(mosquitto), str(Topic(site, "pi-01", "mppt")), message)

    (body,) = [json.loads(m.payload) for m in confirmations.wait_for(1)]
    assert (body["stored"], body["dead_lettered"]) == ([[0, 56], [58, 99]], [[57, 57]])
    (letter,) = letters(dead, 1)
    assert letter["reason"].startswith(
        "InfluxDB refused 1 of 100 points (samples/57); the other 99 are stored: HTTP 400"
    )
    assert "field type conflict" in letter["reason"]
    assert len(influxdb.rows("SELECT bat_v FROM mppt WHERE device = 'mppt'")) == 99


def test_dead_letters_are_counted_once_in_the_bridges_telemetry(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Any,
) -> None:
    """Finding 10: a write refused in part had stored the telemetry on it, which the bridge then
    wrote again: the dashboard counted its dead letters twice."""
    t, message = partly_refused(site, influxdb)
    start_bridge(mosquitto, influxdb, site)
    confirmations = mqtt_collector(mosquitto, f"soclab/{site}/pi-01/mppt/stored")
    publisher = mqtt_client(mosquitto)
    topic = str(Topic(site, "pi-01", "mppt"))
    send(publisher, topic, b"not json")  # a dead letter that the next write's telemetry carries
    send(publisher, topic, message)  # refused in part: the second dead letter
    for n, seq in enumerate((100, 101), start=2):  # two more writes, each with telemetry
        time.sleep(0.3)
        send(
            publisher,
            topic,
            data(site, "mppt", "mppt", [{"seq": seq, "t_ns": t + seq * 10**7, "values": {"bat_v": 1.0}}]),
        )
        confirmations.wait_for(n)
    time.sleep(0.5)
    query = f"SELECT sum(dead_letters) FROM soclab_bridge WHERE site = '{site}'"
    eventually(lambda: (influxdb.rows(query) or [{"sum": 0}])[0]["sum"] >= 2, "two dead letters counted")
    assert influxdb.rows(query)[0]["sum"] == 2


def test_two_samples_at_the_same_time_are_refused_not_silently_merged(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Any,
) -> None:
    """Finding 10: one overwrote the other in InfluxDB and both were confirmed as stored."""
    start_bridge(mosquitto, influxdb, site)
    dead = mqtt_collector(mosquitto, f"soclab/{site}/+/+/deadletter")
    confirmations = mqtt_collector(mosquitto, f"soclab/{site}/pi-01/mppt/stored")
    publisher = mqtt_client(mosquitto)
    t = now_s()
    samples = [{"seq": s, "t_ns": t + (s // 2) * 10**6, "values": {"bat_v": float(s)}} for s in range(4)]
    send(publisher, str(Topic(site, "pi-01", "mppt")), data(site, "mppt", "mppt", samples))
    (letter,) = letters(dead, 1)
    assert letter["reason"] == f"samples/0 and samples/1 have the same t_ns {t} (one would be lost)"
    time.sleep(0.3)
    assert confirmations.inbox.empty()
    assert influxdb.query("SELECT * FROM mppt") == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_json_that_is_not_utf8_is_refused(
    encoding: str,
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Any,
) -> None:
    """Finding 10: UTF-16 and BOM-prefixed JSON were accepted; the contract is UTF-8."""
    start_bridge(mosquitto, influxdb, site)
    dead = mqtt_collector(mosquitto, f"soclab/{site}/+/+/deadletter")
    publisher = mqtt_client(mosquitto)
    message = data(site, "mppt", "mppt", [{"seq": 0, "t_ns": now_s(), "values": {"bat_v": 12.5}}])
    send(publisher, str(Topic(site, "pi-01", "mppt")), json.dumps(message).encode(encoding))
    (letter,) = letters(dead, 1)
    assert letter["reason"].startswith("not JSON: ")
    assert influxdb.query("SELECT * FROM mppt") == []


def test_recorded_data_is_stored_through_the_replay_path_only_and_kept_out_of_live_lag(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Any,
) -> None:
    """Finding 3 and 11: old data is refused on the live path, stored through the deliberate one."""
    start_bridge(mosquitto, influxdb, site)
    dead = mqtt_collector(mosquitto, f"soclab/{site}/+/+/deadletter")
    replayed = mqtt_collector(mosquitto, f"soclab/{site}/pi-01/mppt/replay/stored")
    publisher = mqtt_client(mosquitto)
    t_2021 = 1_622_238_915_000_000_000
    message = data(
        site,
        "mppt",
        "mppt",
        [{"seq": i, "t_ns": t_2021 + i * 10**9, "values": {"bat_v": 12.5}} for i in range(10)],
    )
    send(publisher, f"soclab/{site}/pi-01/mppt/data", message)
    (letter,) = letters(dead, 1)
    assert "s old (live data at most 7776000 s; recorded data goes through a replay)" in letter["reason"]

    send(publisher, f"soclab/{site}/pi-01/mppt/replay", message)
    (confirmation,) = replayed.wait_for(1)
    assert json.loads(confirmation.payload)["stored"] == [[0, 9]]
    assert [r["time"] for r in influxdb.rows("SELECT bat_v FROM mppt")] == [
        t_2021 + i * 10**9 for i in range(10)
    ]
    query = (
        f"SELECT sum(replayed), max(lag_max_s) FROM soclab_bridge WHERE site = '{site}' AND device = 'mppt'"
    )
    eventually(
        lambda: bool(influxdb.rows(query)) and influxdb.rows(query)[0]["sum"] == 10,
        "replayed samples counted",
    )
    assert influxdb.rows(query)[0]["max"] is None  # no lag of years on the health dashboard
