"""The bridge against a real Mosquitto and a real InfluxDB (1.6.7, through the v2 write shim).

Publishers here are plain paho clients, so that each test controls exactly what is on the wire.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from soclab.cloud.bridge import BatchConfig, RetryConfig
from soclab.dev.localservices import Mosquitto
from soclab.wire import DEADLETTER_SCHEMA, Topic, encode, validate

T0 = (time.time_ns() // 10**9 - 3600) * 10**9  # an hour ago: inside the bridge's live window
WAIT_S = 15.0
# Fixture types (defined in tests/conftest.py, which is not imported).
InfluxTarget = Any
Collector = Any


def data_message(
    site: str, node: str, device: str, kind: str, samples: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "schema": "soclab.data/1",
        "source": {"site": site, "node": node, "device": device, "kind": kind},
        "samples": samples,
    }


def publish(client: Any, message: dict[str, Any] | bytes, topic: str | None = None) -> None:
    """Publish with QoS 1 and wait for the broker's PUBACK."""
    if isinstance(message, dict):
        s = message["source"]
        topic = topic or str(Topic(s["site"], s["node"], s["device"]))
        message = encode(message)
    assert topic is not None
    client.publish(topic, message, qos=1).wait_for_publish(WAIT_S)


def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout} s: {what}")
        time.sleep(0.02)


def labjack_samples(first_seq: int, count: int) -> list[dict[str, Any]]:
    return [
        {"seq": first_seq + i, "t_ns": T0 + (first_seq + i) * 1_000_000, "values": {"ain0": 1.0 + i / 1000}}
        for i in range(count)
    ]


def test_every_sample_is_stored_with_its_values_tags_and_time(
    mosquitto: Mosquitto, influxdb: InfluxTarget, site: str, start_bridge: Any, mqtt_client: Any
) -> None:
    bridge = start_bridge(mosquitto, influxdb, site)
    publisher = mqtt_client(mosquitto)
    mppt = data_message(
        site,
        "pi-01",
        "mppt",
        "mppt",
        [{"seq": 7, "t_ns": T0 + 123, "values": {"bat_v": 13, "bat_a": -1.25, "load_en": True}}],
    )
    labjack = data_message(site, "pi-01", "labjack", "labjack", labjack_samples(0, 100))
    labjack["samples"][3]["flags"] = ["skipped:ain1"]
    publish(publisher, mppt)
    publish(publisher, labjack)

    rows = influxdb.wait_for_rows("SELECT * FROM mppt GROUP BY *", 1)
    assert rows == [
        {
            "time": T0 + 123,
            "site": site,
            "node": "pi-01",
            "device": "mppt",
            "bat_v": 13.0,
            "bat_a": -1.25,
            "load_en": True,
            "seq": 7,
        }
    ]
    rows = influxdb.wait_for_rows("SELECT * FROM labjack GROUP BY *", 100)
    assert [r["time"] for r in rows] == [s["t_ns"] for s in labjack["samples"]]
    assert [r["seq"] for r in rows] == list(range(100))
    assert [r["ain0"] for r in rows] == [s["values"]["ain0"] for s in labjack["samples"]]
    assert [(r["seq"], r["flags"]) for r in rows if r["flags"] is not None] == [(3, "skipped:ain1")]
    assert {(r["site"], r["node"], r["device"]) for r in rows} == {(site, "pi-01", "labjack")}

    fields = influxdb.query("SHOW FIELD KEYS FROM mppt, labjack")  # not the bridge's telemetry
    types = {(s["name"], v[0]): v[1] for s in fields for v in s["values"]}
    assert types == {
        ("mppt", "bat_v"): "float",
        ("mppt", "bat_a"): "float",
        ("mppt", "load_en"): "boolean",
        ("mppt", "seq"): "integer",
        ("labjack", "ain0"): "float",
        ("labjack", "seq"): "integer",
        ("labjack", "flags"): "string",
    }
    eventually(lambda: bridge.counters()["acked"] == 2, "both messages acknowledged")
    counters = bridge.counters()
    assert counters["messages_received"] == 2
    assert counters["points_written"] == 101
    assert counters["messages_invalid"] == 0


def test_a_message_delivered_twice_is_stored_once(
    mosquitto: Mosquitto, influxdb: InfluxTarget, site: str, start_bridge: Any, mqtt_client: Any
) -> None:
    bridge = start_bridge(mosquitto, influxdb, site)
    publisher = mqtt_client(mosquitto)
    message = data_message(site, "pi-01", "labjack", "labjack", labjack_samples(0, 10))
    publish(publisher, message)
    publish(publisher, message)
    eventually(lambda: bridge.counters()["acked"] == 2, "both copies acknowledged")
    assert influxdb.rows("SELECT count(seq) FROM labjack")[0]["count"] == 10
    assert bridge.counters()["points_written"] == 20


def test_invalid_messages_are_dead_lettered_and_valid_ones_around_them_stored(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Callable[[Mosquitto, str], Collector],
) -> None:
    bridge = start_bridge(mosquitto, influxdb, site)
    dead = mqtt_collector(mosquitto, f"soclab/{site}/+/+/deadletter")
    publisher = mqtt_client(mosquitto)
    topic = str(Topic(site, "pi-01", "labjack"))
    not_json = b"bat_v=12.5 \xff"
    wrong = json.dumps(data_message(site, "pi-01", "labjack", "labjack", [{"seq": -1, "t_ns": T0}])).encode()

    publish(publisher, data_message(site, "pi-01", "labjack", "labjack", labjack_samples(0, 5)))
    publish(publisher, not_json, topic)
    publish(publisher, data_message(site, "pi-01", "labjack", "labjack", labjack_samples(5, 5)))
    publish(publisher, wrong, topic)
    publish(publisher, data_message(site, "pi-01", "labjack", "labjack", labjack_samples(10, 5)))

    letters = [json.loads(m.payload) for m in dead.wait_for(2)]
    for letter, message in zip(letters, dead.seen, strict=True):
        validate(letter, DEADLETTER_SCHEMA)
        assert message.topic == f"soclab/{site}/pi-01/labjack/deadletter"
        assert letter["topic"] == topic
        assert letter["consumer"] == f"soclab-bridge/{site}"
    assert letters[0]["encoding"] == "base64"
    assert base64.b64decode(letters[0]["payload"]) == not_json
    assert letters[0]["reason"].startswith("not JSON")
    assert letters[1]["encoding"] == "utf-8"
    assert letters[1]["payload"] == wrong.decode()
    assert "samples/0" in letters[1]["reason"]

    rows = influxdb.wait_for_rows("SELECT seq FROM labjack", 15)
    assert [r["seq"] for r in rows] == list(range(15))
    eventually(lambda: bridge.counters()["acked"] == 5, "all five messages acknowledged")
    assert bridge.counters()["messages_invalid"] == 2

    publish(publisher, data_message(site, "pi-01", "labjack", "labjack", labjack_samples(15, 1)))
    influxdb.wait_for_rows("SELECT seq FROM labjack", 16)  # still running


def test_a_source_that_does_not_match_its_topic_is_dead_lettered(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Callable[[Mosquitto, str], Collector],
) -> None:
    bridge = start_bridge(mosquitto, influxdb, site)
    dead = mqtt_collector(mosquitto, f"soclab/{site}/+/+/deadletter")
    publisher = mqtt_client(mosquitto)
    impostor = data_message(site, "pi-02", "mppt", "mppt", labjack_samples(0, 1))
    publish(publisher, impostor, str(Topic(site, "pi-01", "mppt")))

    (message,) = dead.wait_for(1)
    assert message.topic == f"soclab/{site}/pi-01/mppt/deadletter"
    reason = json.loads(message.payload)["reason"]
    assert reason == f"source {site}/pi-02/mppt does not match topic soclab/{site}/pi-01/mppt/data"
    eventually(lambda: bridge.counters()["acked"] == 1, "the impostor acknowledged")
    assert influxdb.query("SELECT * FROM mppt") == []


def test_a_message_influxdb_refuses_is_dead_lettered_alone(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Callable[[Mosquitto, str], Collector],
) -> None:
    # load_en is a boolean; the second message sends a number: a field type conflict in InfluxDB.
    bridge = start_bridge(mosquitto, influxdb, site, batch=BatchConfig(points=1000, ms=300))
    dead = mqtt_collector(mosquitto, f"soclab/{site}/+/+/deadletter")
    publisher = mqtt_client(mosquitto)
    for seq, load_en in enumerate([True, 1, False]):
        sample = {"seq": seq, "t_ns": T0 + seq, "values": {"load_en": load_en, "bat_v": 12.0}}
        publish(publisher, data_message(site, "pi-01", "mppt", "mppt", [sample]))

    (message,) = dead.wait_for(1)
    letter = json.loads(message.payload)
    assert json.loads(letter["payload"])["samples"][0]["seq"] == 1
    assert letter["reason"].startswith("InfluxDB refused the points: HTTP 400")
    assert "field type conflict" in letter["reason"]
    rows = influxdb.wait_for_rows("SELECT seq, load_en FROM mppt", 2)
    assert [(r["seq"], r["load_en"]) for r in rows] == [(0, True), (2, False)]
    eventually(lambda: bridge.counters()["acked"] == 3, "all three acknowledged")


def test_nothing_is_lost_while_the_database_is_down(
    mosquitto: Mosquitto, own_influxdb: InfluxTarget, site: str, start_bridge: Any, mqtt_client: Any
) -> None:
    bridge = start_bridge(mosquitto, own_influxdb, site, retry=RetryConfig(initial_s=0.05, max_s=0.3))
    publisher = mqtt_client(mosquitto)
    publish(publisher, data_message(site, "pi-01", "labjack", "labjack", labjack_samples(0, 10)))
    own_influxdb.wait_for_rows("SELECT seq FROM labjack", 10)
    eventually(lambda: bridge.counters()["acked"] == 1, "the first message acknowledged")

    own_influxdb.server.stop()
    for first in range(10, 60, 10):
        publish(publisher, data_message(site, "pi-01", "labjack", "labjack", labjack_samples(first, 10)))
    eventually(lambda: bridge.counters()["write_retries"] >= 2, "the bridge retrying")
    assert bridge.counters()["acked"] == 1  # nothing acknowledged that is not stored
    own_influxdb.server.start()

    rows = own_influxdb.wait_for_rows("SELECT seq FROM labjack", 60)
    assert [r["seq"] for r in rows] == list(range(60))
    eventually(lambda: bridge.counters()["acked"] == 6, "all messages acknowledged")
    assert bridge.counters()["messages_invalid"] == 0


def test_messages_published_while_the_bridge_is_stopped_arrive_after_its_restart(
    mosquitto: Mosquitto, influxdb: InfluxTarget, site: str, start_bridge: Any, mqtt_client: Any
) -> None:
    publisher = mqtt_client(mosquitto)
    first = start_bridge(mosquitto, influxdb, site)
    publish(publisher, data_message(site, "pi-01", "labjack", "labjack", labjack_samples(0, 10)))
    eventually(lambda: first.counters()["messages_received"] == 1, "the bridge received the message")
    first.stop()  # writes and acknowledges what it received
    assert first.counters()["acked"] == 1
    influxdb.wait_for_rows("SELECT seq FROM labjack", 10, timeout=0)

    publish(publisher, data_message(site, "pi-01", "labjack", "labjack", labjack_samples(10, 10)))
    second = start_bridge(mosquitto, influxdb, site)  # same id: same session
    rows = influxdb.wait_for_rows("SELECT seq FROM labjack", 20)
    assert [r["seq"] for r in rows] == list(range(20))
    eventually(lambda: second.counters()["acked"] == 1, "the queued message acknowledged")
    assert second.counters()["messages_received"] == 1  # the first message was not redelivered


def test_the_broker_restarting_loses_nothing(
    own_mosquitto: Mosquitto, influxdb: InfluxTarget, site: str, start_bridge: Any, mqtt_client: Any
) -> None:
    bridge = start_bridge(own_mosquitto, influxdb, site)
    publisher = mqtt_client(own_mosquitto, client_id=f"{site}-pub", clean_session=False)
    publish(publisher, data_message(site, "pi-01", "labjack", "labjack", labjack_samples(0, 10)))
    influxdb.wait_for_rows("SELECT seq FROM labjack", 10)

    own_mosquitto.stop()
    own_mosquitto.start()
    bridge.wait_subscribed(WAIT_S)  # reconnected
    eventually(publisher.is_connected, "the publisher reconnected")
    publish(publisher, data_message(site, "pi-01", "labjack", "labjack", labjack_samples(10, 10)))
    rows = influxdb.wait_for_rows("SELECT seq FROM labjack", 20)
    assert [r["seq"] for r in rows] == list(range(20))
    assert bridge.counters()["reconnects"] >= 1


def test_messages_held_across_a_broker_restart_during_a_database_outage_are_stored_once(
    own_mosquitto: Mosquitto, own_influxdb: InfluxTarget, site: str, start_bridge: Any, mqtt_client: Any
) -> None:
    # The bridge holds unacknowledged messages when its connection drops; their packet ids die with
    # the connection, the broker redelivers them, and each must be written and acknowledged once.
    bridge = start_bridge(own_mosquitto, own_influxdb, site, retry=RetryConfig(initial_s=0.05, max_s=0.2))
    publisher = mqtt_client(own_mosquitto, client_id=f"{site}-pub", clean_session=False)
    own_influxdb.server.stop()
    for first in range(0, 30, 10):
        publish(publisher, data_message(site, "pi-01", "labjack", "labjack", labjack_samples(first, 10)))
    eventually(lambda: bridge.counters()["messages_received"] == 3, "the bridge holding three messages")
    eventually(lambda: bridge.counters()["write_retries"] >= 1, "the bridge retrying")

    own_mosquitto.stop()
    own_mosquitto.start()
    bridge.wait_subscribed(WAIT_S)
    own_influxdb.server.start()

    rows = own_influxdb.wait_for_rows("SELECT seq FROM labjack", 30)
    assert [r["seq"] for r in rows] == list(range(30))
    eventually(lambda: bridge.counters()["acked"] == 3, "each message acknowledged once")
    counters = bridge.counters()
    assert counters["redeliveries_expected"] == 3
    assert counters["messages_received"] == 6


def test_status_is_published_retained_and_says_offline_after_stop(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_collector: Callable[[Mosquitto, str], Collector],
) -> None:
    bridge = start_bridge(mosquitto, influxdb, site)
    status = mqtt_collector(mosquitto, bridge.status_topic)
    (online,) = status.wait_for(1)
    assert online.retain
    assert json.loads(online.payload)["state"] == "online"
    assert set(json.loads(online.payload)["counters"]) == set(bridge.counters())
    bridge.stop()
    deadline = time.monotonic() + WAIT_S
    while json.loads(status.seen[-1].payload)["state"] != "offline":
        assert time.monotonic() < deadline, "no offline status"
        status.wait_for(len(status.seen) + 1)
    assert json.loads(status.seen[-1].payload)["reason"] == "stopped"


def test_the_command_line_bridge_runs_until_sigterm(
    mosquitto: Mosquitto, influxdb: InfluxTarget, site: str, mqtt_client: Any, tmp_path: Path
) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(
        f"""
[bridge]
id = "{site}"
site = "{site}"
[mqtt]
host = "{mosquitto.host}"
port = {mosquitto.port}
[influx]
url = "{influxdb.url}"
org = "{influxdb.org}"
bucket = "{influxdb.bucket}"
""",
        encoding="utf-8",
    )
    env = {**os.environ, "SOCLAB_BRIDGE_INFLUX_TOKEN": influxdb.token}
    process = subprocess.Popen(
        [sys.executable, "-m", "soclab.cloud.bridge", "--config", str(config)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        publisher = mqtt_client(mosquitto)
        # The subscription exists once the bridge announced itself; retry until it has.
        deadline = time.monotonic() + WAIT_S
        seq = 0
        while not influxdb.rows("SELECT seq FROM labjack"):
            assert time.monotonic() < deadline, "the bridge stored nothing"
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            publish(publisher, data_message(site, "pi-01", "labjack", "labjack", labjack_samples(seq, 1)))
            seq += 1
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    assert process.returncode == 0, stderr
    events = [json.loads(line)["msg"].split()[0] for line in stderr.splitlines()]
    assert events[0] == "event=starting"
    assert "event=subscribed" in events
    assert events[-1] == "event=stopped"


def test_stored_samples_are_confirmed_to_their_device(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Any,
) -> None:
    confirmations = mqtt_collector(mosquitto, f"soclab/{site}/pi-01/labjack/stored")
    start_bridge(mosquitto, influxdb, site)
    publisher = mqtt_client(mosquitto)
    for first in (0, 100, 300):  # 200..299 never sent: it must not be confirmed
        publish(publisher, data_message(site, "pi-01", "labjack", "labjack", labjack_samples(first, 100)))
    expected = set(range(0, 200)) | set(range(300, 400))
    covered: set[int] = set()

    def confirmed_all() -> bool:
        while not confirmations.inbox.empty():
            body = validate(json.loads(confirmations.inbox.get().payload), "soclab.stored/1")
            assert "dead_lettered" not in body
            for first, last in body["stored"]:
                assert covered.isdisjoint(range(first, last + 1)), "a sample confirmed twice"
                covered.update(range(first, last + 1))
        return covered >= expected

    eventually(confirmed_all, "every stored sample confirmed")
    assert covered == expected
    assert len(influxdb.rows("SELECT seq FROM labjack")) == 300


def test_confirmations_held_back_for_paho_are_all_sent_later(
    mosquitto: Mosquitto,
    influxdb: InfluxTarget,
    site: str,
    start_bridge: Any,
    mqtt_client: Any,
    mqtt_collector: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """paho drops a publish when 65,535 are unacknowledged; the bridge holds its own back beyond
    ``MAX_UNACKED_PUBLISHES`` and sends them as acknowledgements come, in order, none lost. Here
    the bound is 1: each write's confirmations (one per device) go out one by one."""
    from soclab.cloud.bridge import connection

    held: list[connection.Later] = []

    class CountedLater(connection.Later):
        def __init__(self) -> None:
            super().__init__()
            held.append(self)

    monkeypatch.setattr(connection, "MAX_UNACKED_PUBLISHES", 1)
    monkeypatch.setattr(connection, "Later", CountedLater)
    confirmations = mqtt_collector(mosquitto, f"soclab/{site}/+/+/stored")
    start_bridge(mosquitto, influxdb, site)
    publisher = mqtt_client(mosquitto)
    devices = [f"dev{i}" for i in range(40)]
    for round_ in range(3):
        for device in devices:
            samples = labjack_samples(round_ * 10, 10)
            publisher.publish(
                str(Topic(site, "pi-01", device)),
                encode(data_message(site, "pi-01", device, "labjack", samples)),
                qos=1,
            )
    covered: dict[str, set[int]] = {device: set() for device in devices}

    def confirmed_all() -> bool:
        while not confirmations.inbox.empty():
            message = confirmations.inbox.get()
            body = validate(json.loads(message.payload), "soclab.stored/1")
            seqs = covered[message.topic.split("/")[3]]
            for first, last in body["stored"]:
                assert seqs.isdisjoint(range(first, last + 1)), "a sample confirmed twice"
                seqs.update(range(first, last + 1))
        return all(len(seqs) == 30 for seqs in covered.values())

    eventually(confirmed_all, "every device's 30 samples confirmed")
    assert held, "no confirmation was held back: the test did not test the bound"
    assert all(later.is_published() for later in held)
    assert len(influxdb.rows("SELECT seq FROM labjack")) == 40 * 30
