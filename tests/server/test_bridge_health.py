"""The bridge stores the pipeline's health (publishers' status, its own per-batch telemetry) and
answers its container's health check; real broker, real bridge, real database."""

from __future__ import annotations

import json
import time
from typing import Any

import paho.mqtt.client as mqtt

from soclab.cloud.bridge import MqttConfig, healthcheck
from soclab.cloud.bridge.sink import InfluxSink
from soclab.dev.localservices import Mosquitto

InfluxTarget = Any  # tests/conftest.py
WAIT_S = 15.0


def status(site: str, device: str, t_ns: int, spool_depth: int) -> dict[str, Any]:
    return {
        "schema": "soclab.status/1",
        "source": {"site": site, "node": "pi-01", "device": device, "kind": "mppt"},
        "state": "online",
        "t_ns": t_ns,
        "counters": {"samples_read": 10},
        "gauges": {"spool_depth": spool_depth, "spool_oldest_age_s": None},
    }


def data(site: str, device: str, seq: int, t_ns: int) -> dict[str, Any]:
    return {
        "schema": "soclab.data/1",
        "source": {"site": site, "node": "pi-01", "device": device, "kind": "mppt"},
        "samples": [{"seq": seq, "t_ns": t_ns, "values": {"bat_v": 12.5}}],
    }


def send(client: mqtt.Client, topic: str, message: dict[str, Any] | bytes, retain: bool = False) -> None:
    payload = message if isinstance(message, bytes) else json.dumps(message).encode()
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT_S)


def test_the_bridge_stores_status_lag_samples_and_dead_letters(
    mosquitto: Mosquitto, influxdb: InfluxTarget, site: str, start_bridge: Any, mqtt_client: Any
) -> None:
    publisher = mqtt_client(mosquitto)
    now = time.time_ns()
    send(publisher, f"soclab/{site}/pi-01/mppt/status", status(site, "mppt", now - 10**9, 3), retain=True)
    start_bridge(mosquitto, influxdb, site)  # after the status: it arrives as a retained message
    send(publisher, f"soclab/{site}/pi-01/mppt/data", data(site, "mppt", 0, now - 2 * 10**9))
    send(publisher, f"soclab/{site}/pi-01/mppt/data", b"not json")
    send(publisher, f"soclab/{site}/pi-01/mppt/data", data(site, "mppt", 1, now - 10**9))

    (row,) = influxdb.wait_for_rows('SELECT * FROM "soclab_status" GROUP BY *', 1)
    assert row["time"] == now - 10**9
    assert (row["device"], row["kind"], row["online"], row["state"]) == ("mppt", "mppt", True, "online")
    assert (row["spool_depth"], row["samples_read"]) == (3.0, 10)
    deadline = time.monotonic() + WAIT_S
    while True:
        rows = influxdb.rows('SELECT * FROM "soclab_bridge" GROUP BY *')
        totals = {k: sum(r[k] or 0 for r in rows) for k in ("messages", "samples", "dead_letters")}
        if totals == {"messages": 2, "samples": 2, "dead_letters": 1} or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert totals == {"messages": 2, "samples": 2, "dead_letters": 1}, rows
    assert {(r["bridge"], r["site"], r["node"], r["device"]) for r in rows} == {(site, site, "pi-01", "mppt")}
    lags = [r["lag_max_s"] for r in rows if r["lag_max_s"] is not None]
    assert lags
    assert all(1.0 <= lag < 10.0 for lag in lags), lags  # sent 1 and 2 s after their sample time


def test_the_health_check_reads_the_bridges_own_status(
    mosquitto: Mosquitto, influxdb: InfluxTarget, site: str, start_bridge: Any
) -> None:
    env = {
        "SOCLAB_BRIDGE_ID": site,
        "SOCLAB_BRIDGE_SITE": site,
        "SOCLAB_BRIDGE_STATUS_INTERVAL_S": "0.5",
        "SOCLAB_BRIDGE_MQTT_HOST": mosquitto.host,
        "SOCLAB_BRIDGE_MQTT_PORT": str(mosquitto.port),
        "SOCLAB_BRIDGE_INFLUX_URL": influxdb.url,
        "SOCLAB_BRIDGE_INFLUX_ORG": influxdb.org,
        "SOCLAB_BRIDGE_INFLUX_BUCKET": influxdb.bucket,
        "SOCLAB_BRIDGE_INFLUX_TOKEN": influxdb.token,
    }
    assert healthcheck.main(["--timeout", "0.5"], env) == 1  # no bridge yet: no status
    bridge = start_bridge(mosquitto, influxdb, site)
    assert healthcheck.main(["--timeout", "5"], env) == 0
    bridge.stop()
    assert healthcheck.main(["--timeout", "5"], env) == 1  # "offline (stopped)"
    assert healthcheck.main([], {**env, "SOCLAB_BRIDGE_INFLUX_URL": ""}) == 2


def test_a_stale_or_unreadable_status_is_unhealthy() -> None:
    now = 1_700_000_000_000_000_000
    fresh = json.dumps({"state": "online", "t_ns": now - 10**9, "gauges": {"connected": True}}).encode()
    assert healthcheck.judge(fresh, 20, now) is None
    assert "old" in (healthcheck.judge(fresh, 0.5, now) or "")
    cut_off = json.dumps({"state": "online", "t_ns": now, "gauges": {"connected": False}}).encode()
    assert "not connected" in (healthcheck.judge(cut_off, 20, now) or "")
    assert "unreadable" in (healthcheck.judge(b"{", 20, now) or "")


def test_a_write_refused_for_its_telemetry_still_stores_the_data(
    mosquitto: Mosquitto, influxdb: InfluxTarget, site: str, start_bridge: Any, mqtt_client: Any
) -> None:
    # Another writer made soclab_bridge's "samples" a string in this shard: InfluxDB now refuses
    # every write that carries the bridge's telemetry (samples=...i).
    sink = InfluxSink(influxdb.url, influxdb.token, influxdb.org, influxdb.bucket)
    try:
        sink.write(f'soclab_bridge,bridge=other samples="many" {time.time_ns()}'.encode())
    finally:
        sink.close()
    bridge = start_bridge(mosquitto, influxdb, site)
    publisher = mqtt_client(mosquitto)
    send(publisher, f"soclab/{site}/pi-01/mppt/data", data(site, "mppt", 0, time.time_ns()))
    (row,) = influxdb.wait_for_rows('SELECT * FROM "mppt"', 1)
    assert row["seq"] == 0
    assert bridge.counters()["messages_invalid"] == 0  # the data was not taken for the culprit


def test_on_the_production_broker_the_check_has_its_own_account(
    secure_broker: Mosquitto, accounts: dict[str, Any], influxdb: InfluxTarget, start_bridge: Any
) -> None:
    """The production broker gives each account one connection (client id = user name): the
    check as soclab-health leaves the bridge connected; as the bridge's own user it would end
    the bridge's connection (the control), which is why compose gives it its own account."""
    bridge_account, health = accounts["soclab-bridge"], accounts["soclab-health"]
    tls = {"tls_ca": str(bridge_account.certs / "ca.crt")}
    bridge = start_bridge(
        secure_broker,
        influxdb,
        "lab9",
        mqtt=MqttConfig(
            host=secure_broker.host,
            port=secure_broker.port,
            username=bridge_account.user,
            password=bridge_account.password,
            tls_cert=str(bridge_account.certs / "client.crt"),
            tls_key=str(bridge_account.certs / "client.key"),
            reconnect_min_s=1,
            reconnect_max_s=2,
            **tls,
        ),
    )
    password_file = secure_broker.folder / "health-password"
    password_file.write_text(health.password)
    env = {
        "SOCLAB_BRIDGE_ID": "lab9",
        "SOCLAB_BRIDGE_MQTT_HOST": secure_broker.host,
        "SOCLAB_BRIDGE_MQTT_PORT": str(secure_broker.port),
        "SOCLAB_BRIDGE_MQTT_USERNAME": bridge_account.user,
        "SOCLAB_BRIDGE_MQTT_PASSWORD": bridge_account.password,
        "SOCLAB_BRIDGE_MQTT_TLS_CA": tls["tls_ca"],
        "SOCLAB_BRIDGE_MQTT_TLS_CERT": str(bridge_account.certs / "client.crt"),
        "SOCLAB_BRIDGE_MQTT_TLS_KEY": str(bridge_account.certs / "client.key"),
        "SOCLAB_BRIDGE_INFLUX_URL": influxdb.url,
        "SOCLAB_BRIDGE_INFLUX_ORG": influxdb.org,
        "SOCLAB_BRIDGE_INFLUX_BUCKET": influxdb.bucket,
        "SOCLAB_BRIDGE_INFLUX_TOKEN": influxdb.token,
    }
    own = ["--username", health.user, "--password-file", str(password_file)]
    own += ["--tls-cert", str(health.certs / "client.crt"), "--tls-key", str(health.certs / "client.key")]
    for _ in range(3):
        assert healthcheck.main(["--timeout", "5", *own], env) == 0
    assert bridge.counters()["reconnects"] == 0
    assert healthcheck.main(["--timeout", "5", "--username", health.user], env) == 1  # no password
    healthcheck.main(["--timeout", "5"], env)  # as soclab-bridge: the control
    deadline = time.monotonic() + WAIT_S
    while bridge.counters()["reconnects"] == 0:
        assert time.monotonic() < deadline, "a second connection as soclab-bridge left the bridge's alone"
        time.sleep(0.05)
    bridge.wait_subscribed(WAIT_S)
