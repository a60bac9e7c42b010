"""How every ``soclab`` command finds and reaches the broker, as the publisher and the bridge do.

Settings come from a TOML file (``--config``, its ``[mqtt]`` table: ``soclab.wire.mqtt``'s keys),
then ``SOCLAB_MQTT_*`` environment variables, then command-line flags; the password only from
``SOCLAB_MQTT_PASSWORD`` or ``password_file`` (``--password-file``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import queue
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from soclab.wire.mqtt import MqttSettings, make_client
from soclab.wire.settings import ConfigError, read_toml, section

_FLAGS = {  # flag -> [mqtt] key
    "host": "host",
    "port": "port",
    "username": "username",
    "password_file": "password_file",
    "tls_ca": "tls_ca",
    "tls_cert": "tls_cert",
    "tls_key": "tls_key",
}
_REFUSED = {
    "password": "secrets are not read from the config file; set SOCLAB_MQTT_PASSWORD or password_file"
}


def add_mqtt_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker (over --config [mqtt] and SOCLAB_MQTT_* variables)")
    group.add_argument("--config", help="TOML file with an [mqtt] table (host, port, username, tls_ca, ...)")
    group.add_argument("--host", help="broker host (default localhost)")
    group.add_argument("--port", type=int, help="broker port (default 1883)")
    group.add_argument("--username")
    group.add_argument("--password-file", help="file holding the MQTT password (or SOCLAB_MQTT_PASSWORD)")
    group.add_argument("--tls-ca", help="the broker's CA certificate: enables TLS")
    group.add_argument("--tls-cert", help="client certificate (where the broker asks for one)")
    group.add_argument("--tls-key", help="the client certificate's key")


def mqtt_settings(args: argparse.Namespace, env: dict[str, str] | None = None) -> MqttSettings:
    """The broker settings these arguments, the environment and the config file give; ConfigError."""
    env = dict(os.environ if env is None else env)
    raw = read_toml(args.config) if getattr(args, "config", None) else {}
    settings: MqttSettings = section(
        "mqtt", MqttSettings, raw.get("mqtt", {}), env, "SOCLAB_", refused=_REFUSED
    )
    flags = {
        key: getattr(args, flag) for flag, key in _FLAGS.items() if getattr(args, flag, None) is not None
    }
    settings = dataclasses.replace(settings, **flags).with_password(env, "SOCLAB_MQTT_PASSWORD")
    settings.check()
    return settings


def connect(
    settings: MqttSettings,
    name: str,
    *,
    timeout_s: float = 10.0,
    setup: Callable[[mqtt.Client], None] | None = None,
    **options: Any,
) -> mqtt.Client:
    """A connected client (network loop running) named ``soclab-<name>-<random>``, or ConnectionError
    saying why the broker could not be reached or refused it. ``setup`` is called before connecting
    (callbacks, in-flight window); ``options`` go to ``make_client``."""
    client = make_client(settings, settings.client_id or f"soclab-{name}-{uuid.uuid4().hex[:8]}", **options)
    if setup is not None:
        setup(client)
    user_on_connect: Any = client.on_connect
    answers: queue.Queue[Any] = queue.Queue()

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        answers.put(reason)
        if user_on_connect is not None:
            user_on_connect(c, userdata, flags, reason, props)

    client.on_connect = on_connect
    try:
        client.connect_first(keepalive=settings.keepalive_s)  # host:port, then [mqtt] failover
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"cannot reach the broker at {exc}") from None
    client.loop_start()
    try:
        reason = answers.get(timeout=timeout_s)
    except queue.Empty:
        reason = None
    if reason is None or reason.is_failure:
        client.loop_stop()
        why = f"refused: {reason}" if reason is not None else f"no answer within {timeout_s:.0f} s"
        raise ConnectionError(f"broker {client.host}:{client.port} {why}")
    return client


__all__ = ["ConfigError", "add_mqtt_arguments", "connect", "mqtt_settings"]
