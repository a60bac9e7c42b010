"""Fixtures shared by the whole suite: real services on free loopback ports, nothing mocked.

Servers
- ``mosquitto``: one broker for the session. Tests stay apart by topic: use ``site``.
- ``own_mosquitto``: a broker of the test's own, to stop, kill and start again.
- ``influxdb``: a fresh database (``InfluxTarget``) on the session's InfluxDB 1.6.7, written
  through the v2 write shim as production's InfluxDB 2 is.
- ``own_influxdb``: the same on a server of the test's own, to stop, kill and start again.

Clients
- ``site``: a topic level unique to the test (``soclab/<site>/...``).
- ``mqtt_client``: factory of connected paho clients; ``mqtt_collector``: of subscribers that
  collect messages and wait for them with a time limit.
- ``start_bridge``: factory of running, subscribed ``Bridge`` instances, stopped at teardown.
"""

from __future__ import annotations

import itertools
import queue
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from soclab.cloud.bridge import Bridge, BridgeConfig, InfluxConfig, MqttConfig
from soclab.dev.localservices import InfluxDB1, Mosquitto, V2WriteShim

WAIT_S = 15.0  # upper bound of every wait for something to arrive; passing tests take far less

_names = itertools.count()


# --- servers -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@dataclass
class InfluxTarget:
    """One database on an InfluxDB 1.x server, and the v2 write API in front of it.

    Writers use ``url``, ``org``, ``bucket`` and ``token`` exactly as for InfluxDB 2 (the server
    has no authentication, so any ``user:password`` token passes); readers use ``query()``.
    """

    server: InfluxDB1
    shim: V2WriteShim
    db: str
    org: str = "soclab"
    token: str = "soclab:unused"

    @property
    def url(self) -> str:
        return self.shim.url

    @property
    def bucket(self) -> str:
        return self.db

    def query(self, q: str, epoch: str = "ns") -> list[dict[str, Any]]:
        return self.server.query(q, db=self.db, epoch=epoch)

    def rows(self, q: str) -> list[dict[str, Any]]:
        """The answer as one dict per row (column -> value), tags included for GROUP BY *."""
        rows = []
        for series in self.query(q):
            for values in series["values"]:
                rows.append({**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))})
        return rows

    def wait_for_rows(self, q: str, count: int, timeout: float = WAIT_S) -> list[dict[str, Any]]:
        """Poll until the query returns at least ``count`` rows; fail with what it returned."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows(q)
            if len(rows) >= count or time.monotonic() > deadline:
                assert len(rows) >= count, f"{q!r}: {len(rows)} rows after {timeout} s, expected {count}"
                return rows
            time.sleep(0.05)


@pytest.fixture(scope="session")
def _influx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InfluxDB1, V2WriteShim]]:
    with InfluxDB1(tmp_path_factory.mktemp("influxdb")) as server, V2WriteShim(server.url) as shim:
        yield server, shim


@pytest.fixture
def influxdb(_influx_server: tuple[InfluxDB1, V2WriteShim]) -> Iterator[InfluxTarget]:
    server, shim = _influx_server
    target = InfluxTarget(server, shim, f"test{next(_names)}")
    server.create_database(target.db)
    yield target
    server.drop_database(target.db)


@pytest.fixture
def own_influxdb(tmp_path: Path) -> Iterator[InfluxTarget]:
    with InfluxDB1(tmp_path / "influxdb") as server, V2WriteShim(server.url) as shim:
        target = InfluxTarget(server, shim, "soclab")
        server.create_database(target.db)
        yield target


# --- clients -------------------------------------------------------------------------------------


@pytest.fixture
def site(request: pytest.FixtureRequest) -> str:
    """A topic level naming this test, unique in the session."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return f"t{next(_names)}-{name}".rstrip("-")


@dataclass
class Collector:
    """Messages arriving on a subscription, in order."""

    client: mqtt.Client
    inbox: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)
    seen: list[mqtt.MQTTMessage] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = WAIT_S) -> list[mqtt.MQTTMessage]:
        """The first ``count`` messages; fail if they have not all arrived within ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.seen) < count:
            try:
                self.seen.append(self.inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"{len(self.seen)} messages after {timeout} s, expected {count}")
        return self.seen[:count]


@pytest.fixture
def mqtt_client() -> Iterator[Callable[..., mqtt.Client]]:
    """``mqtt_client(broker, client_id="")``: a connected client with its network loop running."""
    clients: list[mqtt.Client] = []

    def connect(broker: Mosquitto, client_id: str = "", **kwargs: Any) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, **kwargs)
        connected = queue.Queue[Any]()
        client.on_connect = lambda c, u, flags, reason, props: connected.put(reason)
        client.connect(broker.host, broker.port)
        client.loop_start()
        clients.append(client)
        try:
            reason = connected.get(timeout=WAIT_S)
        except queue.Empty:
            pytest.fail(f"no CONNACK from {broker} after {WAIT_S} s")
        assert not reason.is_failure, f"connect refused: {reason}"
        return client

    yield connect
    for client in clients:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def mqtt_collector(mqtt_client: Callable[..., mqtt.Client]) -> Callable[[Mosquitto, str], Collector]:
    """``mqtt_collector(broker, topic_filter)``: subscribed (SUBACK received) when it returns."""

    def subscribe(broker: Mosquitto, topic: str) -> Collector:
        client = mqtt_client(broker)
        collector = Collector(client)
        subscribed = queue.Queue[Any]()
        client.on_message = lambda c, u, message: collector.inbox.put(message)
        client.on_subscribe = lambda c, u, mid, reasons, props: subscribed.put(reasons)
        client.subscribe(topic, qos=1)
        try:
            reasons = subscribed.get(timeout=WAIT_S)
        except queue.Empty:
            pytest.fail(f"no SUBACK for {topic} after {WAIT_S} s")
        assert not reasons[0].is_failure, f"subscription to {topic} refused"
        return collector

    return subscribe


def bridge_config(broker: Mosquitto, target: InfluxTarget, site: str, **overrides: Any) -> BridgeConfig:
    """A bridge for one test: its own id (so its own MQTT session) and only its site's topics."""
    settings: dict[str, Any] = {
        "mqtt": MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=1, reconnect_max_s=2),
        "influx": InfluxConfig(url=target.url, org=target.org, bucket=target.bucket, token=target.token),
        "id": site,
        "site": site,
        "status_interval_s": 0.5,
        "shutdown_timeout_s": 5.0,
    }
    settings.update(overrides)
    return BridgeConfig(**settings)


@pytest.fixture
def start_bridge() -> Iterator[Callable[..., Bridge]]:
    """``start_bridge(broker, influx_target, site, **BridgeConfig overrides)``: running and subscribed."""
    bridges: list[Bridge] = []

    def start(broker: Mosquitto, target: InfluxTarget, site: str, **overrides: Any) -> Bridge:
        bridge = Bridge(bridge_config(broker, target, site, **overrides)).start()
        bridges.append(bridge)
        bridge.wait_subscribed(WAIT_S)
        return bridge

    yield start
    for bridge in bridges:
        bridge.stop()
        assert bridge.failure is None, f"bridge failed: {bridge.failure!r}"
