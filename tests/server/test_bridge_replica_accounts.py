"""Bridge replicas on the server's broker: each its own account ``soclab-bridge-<n>``.

The broker runs the committed configuration after ``mqtt-user.sh acl-bridge <n>`` added the
replicas' blocks to the committed ACL, as on a server (the production broker binds a client id to
its user name, so two replicas cannot share one account). Two real bridges share the data through
``$share/soclab-bridges/...`` over TLS, a real publisher sends through them, and the
confirmations come back through the ACL; a replica writes only its own status.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from serverkit import (
    BRIDGE,
    DEVICES,
    MOSQUITTO_CONFIG,
    MOSQUITTO_PASSWD,
    MQTT_USER_SH,
    QUIET_S,
    Account,
    TlsClient,
)

from soclab.cloud.bridge import Bridge, BridgeConfig, InfluxConfig, MqttConfig
from soclab.dev.localservices import Mosquitto
from soclab.dev.sim.steady import SteadyInstrument
from soclab.edge.publisher.config import load
from soclab.edge.publisher.service import Publisher

MPPT = DEVICES[0]
REPLICAS = ("1", "2")


def mqtt_user_sh(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(script), *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def replicas(accounts: dict[str, Account], passwd_dir: Path, tmp_path: Path) -> dict[str, Account]:
    """The replicas' accounts (the bridge's client certificate: the broker does not take the user
    name from it), in a copy of the session's password file."""
    own = tmp_path / "passwd"
    own.mkdir()
    shutil.copy(passwd_dir / "passwd", own / "passwd")
    made = {}
    for n in REPLICAS:
        account = Account(f"soclab-bridge-{n}", secrets.token_urlsafe(24), accounts[BRIDGE].certs)
        command = [MOSQUITTO_PASSWD, "-b", str(own / "passwd"), account.user, account.password]
        subprocess.run(command, check=True, capture_output=True, timeout=30)
        made[n] = account
    return made


@pytest.fixture
def replica_broker(tmp_path: Path, pki: Path, replicas: dict[str, Account]) -> Iterator[Mosquitto]:
    """The committed configuration after ``mqtt-user.sh acl-bridge`` granted the replicas."""
    compose = tmp_path / "compose"
    shutil.copytree(MOSQUITTO_CONFIG, compose / "mosquitto" / "config")
    script = compose / "mosquitto" / "mqtt-user.sh"
    shutil.copy(MQTT_USER_SH, script)
    for n in REPLICAS:
        assert mqtt_user_sh(script, "acl-bridge", n).returncode == 0
    broker = Mosquitto.from_project_config(
        tmp_path / "mosquitto",
        config_dir=compose / "mosquitto" / "config",
        passwd_dir=tmp_path / "passwd",
        certs_dir=pki / "server",
    )
    with broker:
        yield broker


def test_mqtt_user_sh_grants_a_replica_once_below_the_acls_replicas_line(tmp_path: Path) -> None:
    acl = tmp_path / "mosquitto" / "config" / "acl"
    acl.parent.mkdir(parents=True)
    committed = (MOSQUITTO_CONFIG / "acl").read_text(encoding="utf-8")
    acl.write_text(committed, encoding="utf-8")
    script = tmp_path / "mosquitto" / "mqtt-user.sh"
    shutil.copy(MQTT_USER_SH, script)

    assert mqtt_user_sh(script, "acl-bridge", "7").returncode == 0
    again = mqtt_user_sh(script, "acl-bridge", "7")
    assert again.returncode == 0
    assert "already" in again.stdout
    bad = mqtt_user_sh(script, "acl-bridge", "Seven/../x")
    assert bad.returncode == 2
    assert "must be" in bad.stderr
    text = acl.read_text(encoding="utf-8")
    assert text.count("user soclab-bridge-7\n") == 1
    block = text.split("# bridge replicas:\n", 1)[1].split("\n\n", 1)[0]
    assert block.splitlines() == [
        "user soclab-bridge-7",
        "topic read soclab/+/+/+/data",
        "topic read soclab/+/+/+/status",
        "topic read soclab/+/+/+/journal",
        "topic read soclab/+/+/+/cmd/result",
        "topic read soclab/+/+/+/replay",
        "topic write soclab/+/+/+/deadletter",
        "topic write soclab/+/+/+/stored",
        "topic write soclab/+/+/+/replay/stored",
        "topic write soclab-bridge/7/#",
    ]
    # The soclab-bridge block grants the same topics (and its own status tree).
    single = committed.split("user soclab-bridge\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert {line for line in single if line.startswith("topic") and "soclab-bridge/" not in line} == {
        line for line in block.splitlines() if "soclab-bridge/" not in line and line.startswith("topic")
    }


def test_two_replicas_share_the_data_each_with_its_own_account(
    tmp_path: Path,
    replica_broker: Mosquitto,
    accounts: dict[str, Account],
    replicas: dict[str, Account],
    influxdb,
) -> None:
    device = accounts[MPPT]
    secret = tmp_path / "mqtt-password"
    secret.write_text(device.password)
    config = load(None, env={
        "SOCLAB_SOURCE_SITE": "lab1", "SOCLAB_SOURCE_NODE": "pi-01",
        "SOCLAB_SOURCE_DEVICE": "mppt", "SOCLAB_SOURCE_KIND": "mppt",
        "SOCLAB_MQTT_HOST": "localhost", "SOCLAB_MQTT_PORT": str(replica_broker.port),
        "SOCLAB_MQTT_USERNAME": device.user, "SOCLAB_MQTT_PASSWORD_FILE": str(secret),
        "SOCLAB_MQTT_TLS_CA": str(device.certs / "ca.crt"),
        "SOCLAB_MQTT_TLS_CERT": str(device.certs / "client.crt"),
        "SOCLAB_MQTT_TLS_KEY": str(device.certs / "client.key"),
        "SOCLAB_BATCH_MAX_SAMPLES": "5", "SOCLAB_BATCH_MAX_DELAY_S": "0.05",
        "SOCLAB_SPOOL_PATH": str(tmp_path / "spool.sqlite"),
    })  # fmt: skip
    bridges = [
        Bridge(
            BridgeConfig(
                mqtt=MqttConfig(
                    host="localhost",
                    port=replica_broker.port,
                    username=account.user,
                    password=account.password,
                    tls_ca=str(account.certs / "ca.crt"),
                    tls_cert=str(account.certs / "client.crt"),
                    tls_key=str(account.certs / "client.key"),
                ),
                influx=InfluxConfig(
                    url=influxdb.url, org=influxdb.org, bucket=influxdb.bucket, token=influxdb.token
                ),
                id=n,  # client id soclab-bridge-<n>: its user name
                share="soclab-bridges",
                status_interval_s=0.5,
            )
        ).start()
        for n, account in replicas.items()
    ]
    publisher = Publisher(config, SteadyInstrument(50, kind="mppt"))
    thread = threading.Thread(target=publisher.run, daemon=True)
    try:
        for bridge in bridges:
            bridge.wait_subscribed(15)
        thread.start()
        rows = influxdb.wait_for_rows("SELECT seq FROM mppt WHERE device = 'mppt'", 100, timeout=30)
        assert sorted(r["seq"] for r in rows)[:100] == list(range(100))
        deadline = time.monotonic() + 15
        while publisher.ledger.confirmed_samples < 100:  # the confirmations came back through the ACL
            assert time.monotonic() < deadline, "no storage confirmations reached the device"
            time.sleep(0.05)
    finally:
        publisher.stop()
        thread.join(timeout=30)
        for bridge in bridges:
            bridge.stop()
    for bridge in bridges:
        assert bridge.failure is None
        counters = bridge.counters()
        assert counters["reconnects"] == 0, "a replica's connection was ended (by the other?)"
        assert counters["messages_received"] > 0, "one replica got no share"
        assert counters["confirmations_published"] > 0
        assert counters["messages_invalid"] == 0


def test_a_replica_writes_only_its_own_status(
    replica_broker: Mosquitto,
    accounts: dict[str, Account],
    replicas: dict[str, Account],
    tls_client: Callable[..., TlsClient],
) -> None:
    reader = tls_client(replica_broker, accounts[BRIDGE])  # soclab-bridge reads soclab-bridge/#
    assert not reader.connect().is_failure
    assert not reader.subscribe("soclab-bridge/#").is_failure
    assert not reader.subscribe("soclab/#").is_failure
    one = tls_client(replica_broker, replicas["1"])
    assert not one.connect().is_failure
    for topic in ("soclab-bridge/2/status", "soclab-bridge/bridge/status", f"soclab/{MPPT}/data"):
        one.publish(topic, b"forbidden " + topic.encode())
    one.publish("soclab-bridge/1/status", b"allowed")
    first = reader.received()
    assert first is not None, "the allowed message did not arrive"
    assert (first.topic, first.payload) == ("soclab-bridge/1/status", b"allowed"), f"{first.topic} came first"
    assert reader.received(QUIET_S) is None
