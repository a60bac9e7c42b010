"""``python -m soclab.cloud.bridge.healthcheck``: exit 0 if the bridge says it is online and recent.

The container's health check. It reads the bridge's own settings (``--config`` and the
``SOCLAB_BRIDGE_*`` variables, as the bridge does), connects to the broker as the bridge's user
with another client id (``<client id>-health``, clean session: the bridge's session is not
touched), and reads the bridge's retained status on ``soclab-bridge/<id>/status``. Healthy: the
status is ``online``, the bridge is connected, and the status is younger than three status
intervals (plus ``--slack``). Otherwise it prints why and exits 1; 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import json
import queue
import ssl
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt

from soclab.cloud.bridge import config as config_module
from soclab.cloud.bridge.config import BridgeConfig
from soclab.wire.mqtt import make_client
from soclab.wire.topics import bridge_topic


def check(config: BridgeConfig, *, timeout_s: float = 5.0, slack_s: float = 5.0) -> str | None:
    """None if the bridge is healthy, else the reason."""
    topic = bridge_topic(config.id, "status")
    statuses: queue.Queue[Any] = queue.Queue()
    client = _client(config, statuses, topic)
    try:
        try:
            client.connect(config.mqtt.host, config.mqtt.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            return f"broker {config.mqtt.host}:{config.mqtt.port} unreachable: {exc}"
        client.loop_start()
        try:
            kind, value = statuses.get(timeout=timeout_s)
        except queue.Empty:
            return f"no status on {topic} within {timeout_s} s"
    finally:
        client.disconnect()
        client.loop_stop()
    if kind == "error":
        return str(value)
    return judge(value, config.status_interval_s * 3 + slack_s, time.time_ns())


def judge(payload: bytes, max_age_s: float, now_ns: int) -> str | None:
    try:
        status = json.loads(payload)
        state, t_ns = status["state"], int(status["t_ns"])
        connected = status.get("gauges", {}).get("connected")
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"unreadable status: {payload[:200]!r}"
    if state != "online":
        return f"bridge {state} ({status.get('reason') or 'no reason given'})"
    if connected is False:
        return "bridge not connected to the broker"
    age = (now_ns - t_ns) / 1e9
    if age > max_age_s:
        return f"last status {age:.0f} s old (limit {max_age_s:.0f} s): the bridge is stuck"
    return None


def _client(config: BridgeConfig, statuses: queue.Queue[Any], topic: str) -> mqtt.Client:
    client = make_client(config.mqtt, f"{config.client_id}-health")

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            statuses.put(("error", f"broker refused the connection: {reason}"))
        else:
            c.subscribe(topic, qos=1)

    def on_subscribe(c: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if any(r.is_failure for r in reasons):
            statuses.put(("error", f"subscription to {topic} refused"))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = lambda c, u, message: statuses.put(("status", message.payload))
    return client


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soclab.cloud.bridge.healthcheck", description=__doc__)
    parser.add_argument("--config", help="the bridge's TOML file, if it uses one")
    parser.add_argument("--timeout", type=float, default=5.0, help="wait this long for the status (s)")
    parser.add_argument("--slack", type=float, default=5.0, help="added to three status intervals (s)")
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.config, env)
    except config_module.ConfigError as exc:
        print(f"unhealthy: configuration error: {exc}")
        return 2
    reason = check(config, timeout_s=args.timeout, slack_s=args.slack)
    print(f"unhealthy: {reason}" if reason else "healthy")
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main())
