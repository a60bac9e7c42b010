"""How every soclab MQTT client connects and proves who it is, in one place, so that the
publisher, the bridge, its health check and the operator's tools cannot drift apart.

``MqttSettings`` is the ``[mqtt]`` table every process shares (a process adds its own keys by
subclassing it); ``with_password`` reads the one secret; ``make_client`` builds the paho client:
MQTT 3.1.1, callback API 2, user name and password, TLS with the project's CA (and a client
certificate where the broker asks for one), reconnect backoff, and failover across the nodes of
a clustered broker.

Failover. ``failover`` names the other nodes of a clustered broker (NATS's MQTT tier, see the
README), ``host:port`` separated by commas, tried after ``host``/``port``. Every reconnection
attempt goes to the next node in that ring, with paho's usual backoff between attempts, so a
client whose node dies is on the next one after one ``reconnect_min_s``. A client's persistent
session lives in the cluster, not in the node, so it carries on where it stopped. Clients of one
Mosquitto leave ``failover`` empty: a second Mosquitto would not have their session.

The password never comes from the TOML file. It comes from the environment variable the process
names (``SOCLAB_MQTT_PASSWORD`` for a publisher, ``SOCLAB_BRIDGE_MQTT_PASSWORD`` for the bridge)
or from the file that ``password_file`` names (a Docker or systemd credential); setting both is
an error, because which one wins would be a guess.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt

from soclab.wire.settings import ConfigError


@dataclass(frozen=True)
class MqttSettings:
    host: str = "localhost"
    port: int = 1883
    failover: str = ""  # other nodes of the same cluster: "host:port,host:port" (see above)
    client_id: str = ""  # empty: the process's own default
    username: str = ""
    password_file: str = ""  # or the process's password variable; never the TOML itself
    tls_ca: str = ""  # CA file: enables TLS
    tls_cert: str = ""  # client certificate (optional)
    tls_key: str = ""
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    password: str = field(default="", repr=False)  # filled in by with_password()

    def with_password(self, env: dict[str, str], variable: str, where: str = "[mqtt]") -> Self:
        """These settings with the password from ``variable`` in ``env`` or from ``password_file``."""
        from_env = env.get(variable, "")
        if from_env and self.password_file:
            raise ConfigError(f"{variable} and {where} password_file are both set: set only one")
        password = from_env
        if self.password_file:
            try:
                password = Path(self.password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{where} password_file {self.password_file!r}: {exc.strerror}") from None
            if not password:
                raise ConfigError(f"{where} password_file {self.password_file!r} is empty")
        if password and not self.username:
            raise ConfigError(f"an MQTT password without {where} username")
        return replace(self, password=password)

    def check(self, where: str = "[mqtt]") -> None:
        """Raise ConfigError for settings that cannot work."""
        if not 0 < self.port < 65536:
            raise ConfigError(f"{where} port must be 1..65535, got {self.port}")
        if (self.tls_cert or self.tls_key) and not self.tls_ca:
            raise ConfigError(f"{where} tls_cert and tls_key need tls_ca (the broker's CA)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(f"{where} tls_cert and tls_key go together")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError(f"{where} needs 0 < reconnect_min_s <= reconnect_max_s")
        if self.keepalive_s <= 0:
            raise ConfigError(f"{where} keepalive_s must be positive")
        self.brokers(where)

    def brokers(self, where: str = "[mqtt]") -> list[tuple[str, int]]:
        """``(host, port)`` of every broker to try, ``host``/``port`` first, then ``failover``."""
        brokers = [(self.host, self.port)]
        for entry in self.failover.split(","):
            entry = entry.strip()
            if not entry:
                continue
            host, colon, port = entry.rpartition(":")
            if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"{where} failover entry {entry!r} is not host:port")
            brokers.append((host.strip("[]"), int(port)))
        if len(set(brokers)) != len(brokers):
            raise ConfigError(f"{where} failover names a broker twice: {brokers}")
        return brokers


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for a client that vanishes (retained, QoS 1 by default)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def make_client(
    settings: MqttSettings,
    client_id: str,
    *,
    clean_session: bool = True,
    manual_ack: bool = False,
    will: Will | None = None,
) -> FailoverClient:
    """A paho client that has not connected yet; the caller sets callbacks and connects.

    ``clean_session=False`` with a fixed ``client_id`` keeps the session (subscriptions and
    QoS 1 messages) at the broker while the client is away. Connect it with
    ``connect_async(settings.host, settings.port, ...)``; with ``failover`` set, its reconnections
    go round the other nodes (``FailoverClient``).
    """
    client = FailoverClient(
        settings.brokers(),
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    secure(
        client,
        username=settings.username,
        password=settings.password or None,
        tls_ca=settings.tls_ca,
        tls_cert=settings.tls_cert,
        tls_key=settings.tls_key,
    )
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    client.reconnect_delay_set(
        min_delay=max(1, round(settings.reconnect_min_s)), max_delay=max(1, round(settings.reconnect_max_s))
    )
    return client


class FailoverClient(mqtt.Client):
    """A paho client whose every reconnection attempt goes to the next broker of ``brokers``.

    paho reconnects (from its network thread, after its backoff) by calling ``reconnect()``; the
    first call connects to where ``connect_async`` pointed, every later one moves to the next
    broker of the ring first. With one broker this is paho's own behaviour.
    """

    def __init__(self, brokers: list[tuple[str, int]], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.brokers = list(brokers)
        self._attempts = 0

    def connect_first(self, keepalive: int = 60) -> None:
        """Connect now (blocking, for a command-line tool) to the first broker of the ring that
        accepts the connection; OSError naming each broker tried and why, if none does."""
        errors = []
        for host, port in self.brokers:
            self._attempts = 0  # this very broker, not the next one
            try:
                self.connect(host, port, keepalive=keepalive)
                return
            except OSError as exc:
                errors.append(f"{host}:{port}: {exc.strerror or exc}")
        raise OSError("; ".join(errors))

    def reconnect(self) -> mqtt.MQTTErrorCode:
        if self._attempts and len(self.brokers) > 1:
            current = (self.host, self.port)
            i = self.brokers.index(current) if current in self.brokers else -1
            host, port = self.brokers[(i + 1) % len(self.brokers)]
            self.connect_async(host, port, self.keepalive)  # paho's way to change host and port
        self._attempts += 1
        return super().reconnect()


def secure(
    client: Any,
    *,
    username: str = "",
    password: str | None = None,
    tls_ca: str = "",
    tls_cert: str = "",
    tls_key: str = "",
) -> None:
    """Set credentials and TLS on a paho ``Client`` that has not connected yet."""
    if username:
        client.username_pw_set(username, password or None)
    if tls_ca:
        client.tls_set(
            ca_certs=tls_ca,
            certfile=tls_cert or None,
            keyfile=tls_key or None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
