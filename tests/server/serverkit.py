"""Helpers of the server tests: accounts, the CA script, TLS clients for the secured broker.

``TlsClient`` connects to the secured broker with a certificate and credentials and says what
came back (the CONNACK's reason code, or None when the connection ended without one); every wait
is bounded by ``WAIT_S``. ``make_certs`` runs ``compose/mosquitto/make-certs.sh``.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from soclab.dev.localservices import Mosquitto

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO_CONFIG = REPO / "compose" / "mosquitto" / "config"
MAKE_CERTS = REPO / "compose" / "mosquitto" / "make-certs.sh"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
WAIT_S = 10.0  # bound of every wait for something that should happen
QUIET_S = 0.5  # how long to wait for something that should not happen, after a positive control

DEVICES = ("lab1/pi-01/mppt", "lab1/pi-01/eload")
BRIDGE = "soclab-bridge"
LABJACK = "lab1/pi-01/labjack"  # the third device of the simulated lab (test_watch_tls)
# Monitor accounts, granted by mqtt-user.sh (broker_with_monitor). One per connection that may be
# open at the same time: the broker may bind a connection to its account (one each).
MONITOR_NAMES = ("watch", "lab", "reader", "script")
MONITORS = tuple(f"monitor/{name}" for name in MONITOR_NAMES)
MONITOR = MONITORS[0]
MQTT_USER_SH = REPO / "compose" / "mosquitto" / "mqtt-user.sh"


@dataclass(frozen=True)
class Account:
    user: str
    password: str
    certs: Path  # ca.crt, client.crt, client.key

    @property
    def prefix(self) -> str:
        """soclab/<site>/<node>/<device> for a device account."""
        return f"soclab/{self.user}"


def make_certs(pki: Path, *args: str) -> None:
    command = ["bash", str(MAKE_CERTS), "-d", str(pki), *args]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


class TlsClient:
    """A paho client for the secured broker; ``connect()`` waits for the CONNACK (bounded)."""

    def __init__(
        self,
        broker: Mosquitto,
        account: Account | None,
        *,
        user: str | None = None,
        password: str | None = None,
        ca: Path | None = None,
        client_cert: bool = True,
    ) -> None:
        self.broker = broker
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        certs = account.certs if account else None
        self.client.tls_set(
            ca_certs=str(ca or (certs / "ca.crt" if certs else broker_ca(broker))),
            certfile=str(certs / "client.crt") if certs and client_cert else None,
            keyfile=str(certs / "client.key") if certs and client_cert else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        user = user if user is not None else (account.user if account else None)
        password = password if password is not None else (account.password if account else None)
        if user is not None:
            self.client.username_pw_set(user, password)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()  # ("connack" | "disconnect", reason)
        self.subacks: queue.Queue[Any] = queue.Queue()
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client.on_connect = lambda c, u, flags, reason, props: self.events.put(("connack", reason))
        self.client.on_disconnect = lambda c, u, flags, reason, props: self.events.put(("disconnect", reason))
        self.client.on_subscribe = lambda c, u, mid, reasons, props: self.subacks.put(reasons)
        self.client.on_message = lambda c, u, message: self.inbox.put(message)

    def connect(self) -> Any:
        """The CONNACK's reason code, or None if the connection ended without one."""
        return connack(self.client, self.broker, self.events)

    def subscribe(self, topic: str) -> Any:
        """The SUBACK's reason code for ``topic`` (QoS 1 requested)."""
        self.client.subscribe(topic, qos=1)
        try:
            (reason,) = self.subacks.get(timeout=WAIT_S)
        except queue.Empty:
            pytest.fail(f"no SUBACK for {topic} after {WAIT_S} s")
        return reason

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish with QoS 1 and wait for the PUBACK (which Mosquitto sends even when it drops)."""
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT_S)

    def received(self, timeout: float = WAIT_S) -> mqtt.MQTTMessage | None:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connack(client: mqtt.Client, broker: Mosquitto, events: queue.Queue[tuple[str, Any]]) -> Any:
    """Connect; the CONNACK's reason code, or None if the connection ended first (bounded wait).

    A TLS failure the client itself detects (an untrusted server) raises ``ssl.SSLError``.
    """
    client.reconnect_delay_set(60, 60)  # no quick retry hiding the first outcome
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        kind, reason = events.get(timeout=WAIT_S)
    except queue.Empty:
        pytest.fail(f"neither CONNACK nor disconnection from {broker} after {WAIT_S} s")
    return reason if kind == "connack" else None


@contextlib.contextmanager
def broker_with_monitor(folder: Path, pki: Path, passwd_dir: Path) -> Iterator[Mosquitto]:
    """The secured broker, its ACL the committed one after ``mqtt-user.sh acl-monitor`` granted
    the ``MONITORS`` (as on a server), running in ``folder``."""
    compose = folder / "compose"
    shutil.copytree(MOSQUITTO_CONFIG, compose / "mosquitto" / "config")
    shutil.copy(MQTT_USER_SH, compose / "mosquitto" / "mqtt-user.sh")
    script = compose / "mosquitto" / "mqtt-user.sh"
    for name in MONITOR_NAMES:
        grant = ["sh", str(script), "acl-monitor", name]
        subprocess.run(grant, check=True, capture_output=True, timeout=30)
    broker = Mosquitto.from_project_config(
        folder / "mosquitto",
        config_dir=compose / "mosquitto" / "config",
        passwd_dir=passwd_dir,
        certs_dir=pki / "server",
    )
    with broker:
        yield broker


def broker_ca(broker: Mosquitto) -> Path:
    text = broker.conf_path.read_text(encoding="utf-8")
    (line,) = [line for line in text.splitlines() if line.startswith("cafile ")]
    return Path(line.split(maxsplit=1)[1])
