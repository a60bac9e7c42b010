"""The production configuration of the NATS broker tier (``compose/nats/``): nats-server accepts
the node's file as committed (only its paths changed), and the example users file grants what
the Mosquitto ACL grants: a device publishes only its own data and status and reads only its own
confirmations; the bridge reads every device and confirms to it; a monitor reads and publishes
nothing; a wrong password is refused."""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from soclab.dev.localservices import NatsCluster

COMPOSE = Path(__file__).parents[2] / "compose"
NATS_CONF = COMPOSE / "nats" / "nats.conf"
USERS = COMPOSE / "nats" / "users.example.conf"
MAKE_CERTS = COMPOSE / "mosquitto" / "make-certs.sh"
WAIT_S = 15.0
PASSWORDS = {
    "lab1/pi-01/mppt": "SOCLAB_NATS_PASSWORD_LAB1_PI01_MPPT",
    "soclab-bridge": "SOCLAB_NATS_PASSWORD_BRIDGE",
    "monitor/grafana": "SOCLAB_NATS_PASSWORD_MONITOR",
}


def test_nats_server_accepts_the_node_configuration(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    for args in (["ca"], ["server", "nats-1.lab.example", "127.0.0.1"]):
        subprocess.run(
            ["bash", str(MAKE_CERTS), "-d", str(pki), *args], check=True, capture_output=True, timeout=60
        )
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("ca.crt", "server.crt", "server.key"):
        found = next(pki.rglob(name))
        shutil.copy(found, certs / name)
    text = NATS_CONF.read_text(encoding="utf-8")
    assert text.count("/etc/nats/certs/") == 6
    text = text.replace("/etc/nats/certs/", f"{certs}/").replace("/var/lib/nats", str(tmp_path / "js"))
    (tmp_path / "nats.conf").write_text(text, encoding="utf-8")
    shutil.copy(USERS, tmp_path / "users.conf")
    env = {**os.environ, "SOCLAB_NATS_NAME": "nats-1", **{v: "x" for v in PASSWORDS.values()}}
    result = subprocess.run(
        ["nats-server", "-t", "-c", str(tmp_path / "nats.conf")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


class Client:
    def __init__(self, cluster: NatsCluster, user: str, password: str, client_id: str) -> None:
        node = cluster.nodes[0]
        self.events: queue.Queue[Any] = queue.Queue()
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.paho.username_pw_set(user, password)
        self.paho.on_connect = lambda c, u, f, reason, p: self.events.put(("connect", reason))
        self.paho.on_subscribe = lambda c, u, mid, reasons, p: self.events.put(("suback", reasons[0]))
        self.paho.on_message = lambda c, u, m: self.events.put(("message", (m.topic, m.payload)))
        self.paho.connect_async(node.host, node.port)
        self.paho.loop_start()
        self.reason = self.next("connect")

    def next(self, kind: str, timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got, value = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {kind} after {timeout} s")
            if got == kind:
                return value

    def subscribe(self, topic: str) -> bool:
        """True if granted."""
        self.paho.subscribe(topic, qos=1)
        return not self.next("suback").is_failure

    def messages(self, settle_s: float = 1.0) -> list[tuple[str, bytes]]:
        out = []
        while True:
            try:
                kind, value = self.events.get(timeout=settle_s)
            except queue.Empty:
                return out
            if kind == "message":
                out.append(value)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.mark.slow
def test_the_example_users_get_what_the_mosquitto_acl_grants(tmp_path: Path) -> None:
    passwords = {user: secrets.token_urlsafe(16) for user in PASSWORDS}
    env = {**os.environ, **{PASSWORDS[user]: pw for user, pw in passwords.items()}}
    with NatsCluster(tmp_path / "nats", nodes=1, users=USERS, env=env) as cluster:
        clients: list[Client] = []

        def login(user: str, password: str | None = None) -> Client:
            client = Client(cluster, user, password or passwords[user], f"c{len(clients)}")
            clients.append(client)
            return client

        try:
            bridge = login("soclab-bridge")
            assert not bridge.reason.is_failure
            assert bridge.subscribe("soclab/+/+/+/data")
            monitor = login("monitor/grafana")
            assert monitor.subscribe("soclab/#")
            device = login("lab1/pi-01/mppt")
            assert device.subscribe("soclab/lab1/pi-01/mppt/stored")
            assert not device.subscribe("soclab/+/+/+/data"), "a device read other devices' data"

            device.paho.publish("soclab/lab1/pi-01/mppt/data", b"own", qos=1)
            device.paho.publish("soclab/lab1/pi-01/eload/data", b"forged", qos=1)
            assert bridge.messages() == [("soclab/lab1/pi-01/mppt/data", b"own")]
            bridge.paho.publish("soclab/lab1/pi-01/mppt/stored", b"confirmed", qos=1)
            assert device.messages() == [("soclab/lab1/pi-01/mppt/stored", b"confirmed")]
            monitor.paho.publish("soclab/lab1/pi-01/mppt/stored", b"from-monitor", qos=1)
            assert device.messages() == [], "a monitor published"
            seen = monitor.messages()
            assert ("soclab/lab1/pi-01/mppt/data", b"own") in seen
            assert ("soclab/lab1/pi-01/eload/data", b"forged") not in seen

            intruder = login("lab1/pi-01/mppt", "wrong")
            assert intruder.reason.is_failure
        finally:
            for client in clients:
                client.close()
