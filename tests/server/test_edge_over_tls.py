"""The pipeline through the server's locked-down broker: a publisher with its device's password
and certificate, the bridge with its own, over TLS, into InfluxDB, and the bridge's storage
confirmations back to the device, which then empties its spool."""

from __future__ import annotations

import threading
import time

from serverkit import BRIDGE

from soclab.cloud.bridge import Bridge, BridgeConfig, InfluxConfig, MqttConfig
from soclab.dev.sim.steady import SteadyInstrument
from soclab.edge.publisher.config import load
from soclab.edge.publisher.service import Publisher


def test_device_to_database_over_tls_with_acl(tmp_path, secure_broker, accounts, influxdb):
    device = accounts["lab1/pi-01/mppt"]
    bridge_account = accounts[BRIDGE]
    secret = tmp_path / "mqtt-password"
    secret.write_text(device.password)
    config = load(None, env={
        "SOCLAB_SOURCE_SITE": "lab1", "SOCLAB_SOURCE_NODE": "pi-01",
        "SOCLAB_SOURCE_DEVICE": "mppt", "SOCLAB_SOURCE_KIND": "mppt",
        "SOCLAB_MQTT_HOST": "localhost", "SOCLAB_MQTT_PORT": str(secure_broker.port),
        "SOCLAB_MQTT_USERNAME": device.user, "SOCLAB_MQTT_PASSWORD_FILE": str(secret),
        "SOCLAB_MQTT_TLS_CA": str(device.certs / "ca.crt"),
        "SOCLAB_MQTT_TLS_CERT": str(device.certs / "client.crt"),
        "SOCLAB_MQTT_TLS_KEY": str(device.certs / "client.key"),
        "SOCLAB_SPOOL_PATH": str(tmp_path / "spool.sqlite"),
    })  # fmt: skip
    bridge = Bridge(
        BridgeConfig(
            mqtt=MqttConfig(
                host="localhost",
                port=secure_broker.port,
                username=bridge_account.user,
                password=bridge_account.password,
                tls_ca=str(bridge_account.certs / "ca.crt"),
                tls_cert=str(bridge_account.certs / "client.crt"),
                tls_key=str(bridge_account.certs / "client.key"),
            ),
            influx=InfluxConfig(
                url=influxdb.url, org=influxdb.org, bucket=influxdb.bucket, token=influxdb.token
            ),
            id="tls-test",
            site="lab1",
        )
    ).start()
    publisher = Publisher(config, SteadyInstrument(20, kind="mppt"))
    thread = threading.Thread(target=publisher.run, daemon=True)
    try:
        bridge.wait_subscribed(15)
        thread.start()
        rows = influxdb.wait_for_rows("SELECT seq FROM mppt WHERE device = 'mppt'", 40, timeout=30)
        assert sorted(r["seq"] for r in rows)[:40] == list(range(40))
        deadline = time.monotonic() + 15
        while publisher.ledger.confirmed_samples < 40:  # the confirmations came back through the ACL
            assert time.monotonic() < deadline, "no storage confirmations reached the device"
            time.sleep(0.05)
    finally:
        publisher.stop()
        thread.join(timeout=30)
        bridge.stop()
    assert bridge.failure is None
    assert publisher.counters["connects"] >= 1
