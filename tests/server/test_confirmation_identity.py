"""Whose storage confirmation a publisher acts on, on the production broker (issue 11, finding 7).

An MQTT 3.1.1 message does not say who sent it, and a confirmation's ``consumer`` is whatever its
sender wrote. What makes a confirmation the bridge's is the broker's ACL: only the bridge's
account may write ``soclab/+/+/+/stored``. Here every other account of the committed ACL (the
other devices, the monitors) sends a device a confirmation of everything in the bridge's name;
none reaches the device's publisher, whose spool keeps every sample; the bridge's own does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serverkit import BRIDGE, QUIET_S, WAIT_S, Account, TlsClient

from soclab.dev.localservices import Mosquitto
from soclab.dev.sim.steady import SteadyInstrument
from soclab.edge.publisher.config import load
from soclab.edge.publisher.service import Publisher
from soclab.wire import STORED_SCHEMA

DEVICE = "lab1/pi-01/mppt"


def forged_confirmation() -> bytes:
    message = {"schema": STORED_SCHEMA, "consumer": "soclab-bridge/server", "t_ns": time.time_ns()}
    return json.dumps({**message, "stored": [[0, 10**9]]}).encode()


def test_only_the_bridges_account_can_confirm_to_a_device(
    tmp_path: Path,
    monitor_broker: Mosquitto,
    accounts: dict[str, Account],
    tls_client: Callable[..., TlsClient],
) -> None:
    device = accounts[DEVICE]
    secret = tmp_path / "mqtt-password"
    secret.write_text(device.password)
    config = load(None, env={
        "SOCLAB_SOURCE_SITE": "lab1", "SOCLAB_SOURCE_NODE": "pi-01",
        "SOCLAB_SOURCE_DEVICE": "mppt", "SOCLAB_SOURCE_KIND": "mppt",
        "SOCLAB_MQTT_HOST": "localhost", "SOCLAB_MQTT_PORT": str(monitor_broker.port),
        "SOCLAB_MQTT_USERNAME": device.user, "SOCLAB_MQTT_PASSWORD_FILE": str(secret),
        "SOCLAB_MQTT_TLS_CA": str(device.certs / "ca.crt"),
        "SOCLAB_MQTT_TLS_CERT": str(device.certs / "client.crt"),
        "SOCLAB_MQTT_TLS_KEY": str(device.certs / "client.key"),
        "SOCLAB_SPOOL_PATH": str(tmp_path / "spool.sqlite"),
    })  # fmt: skip
    publisher = Publisher(config, SteadyInstrument(20, kind="mppt"))
    thread = threading.Thread(target=publisher.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while publisher.counters["samples_published"] < 20:  # published, never confirmed: no bridge runs
            assert time.monotonic() < deadline, "the publisher did not publish"
            time.sleep(0.05)
        forgers = sorted(set(accounts) - {DEVICE, BRIDGE})
        assert len(forgers) >= 3, forgers  # other devices and the monitors
        for user in forgers:
            forger = tls_client(monitor_broker, accounts[user])
            assert not forger.connect().is_failure, user
            forger.publish(f"soclab/{DEVICE}/stored", forged_confirmation())
        time.sleep(QUIET_S)
        assert publisher.counters["confirmations"] == 0  # positive control below
        assert publisher.ledger.confirmed_samples == 0
        assert publisher.spool.count(0, 19) == 20  # the first samples, published, still spooled

        bridge = tls_client(monitor_broker, accounts[BRIDGE])
        assert not bridge.connect().is_failure
        bridge.publish(f"soclab/{DEVICE}/stored", forged_confirmation())
        while publisher.counters["confirmations"] < 1:
            assert time.monotonic() < deadline + WAIT_S, "the bridge's confirmation did not arrive"
            time.sleep(0.05)
        time.sleep(QUIET_S)
        counters = publisher.counters
        assert (counters["confirmations"], counters["confirmations_invalid"]) == (1, 0)
        assert publisher.ledger.confirmed_samples > 0  # what it had published, and only that
    finally:
        publisher.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
