"""What a 3-node NATS cluster does as an MQTT broker, with plain paho clients: the semantics that
soclab's clients rely on (sessions, retained status, last will, QoS 1 across nodes and across a
node's death) and the ones where it differs from Mosquitto (no MQTT 5, no ``$share``, redelivery
only after ``ack_wait``, no spaces in topic levels)."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from soclab.dev.localservices import NatsCluster
from soclab.wire.mqtt import MqttSettings, make_client

WAIT_S = 15.0


class Client:
    """A paho client on one node, its events in one queue: ("connect", reason, session_present),
    ("disconnect", reason), ("suback", reasons), or the received ``MQTTMessage``."""

    def __init__(self, client: mqtt.Client) -> None:
        self.paho = client
        self.events: queue.Queue[Any] = queue.Queue()
        client.on_connect = lambda c, u, f, r, p: self.events.put(("connect", r, f.session_present))
        client.on_disconnect = lambda c, u, f, r, p: self.events.put(("disconnect", r))
        client.on_subscribe = lambda c, u, mid, reasons, p: self.events.put(("suback", reasons))
        client.on_message = lambda c, u, message: self.events.put(message)

    def next(self, timeout: float = WAIT_S) -> Any:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"nothing from the broker after {timeout} s")

    def connected(self) -> bool:
        """Wait for the CONNACK; return session_present."""
        kind, reason, session_present = self.next()
        assert kind == "connect"
        assert not reason.is_failure, f"connect refused: {reason}"
        return bool(session_present)

    def subscribe(self, topic: str) -> None:
        self.paho.subscribe(topic, qos=1)
        kind, reasons = self.next()
        assert kind == "suback"
        assert not reasons[0].is_failure, f"subscription to {topic} refused"

    def messages(self, count: int, timeout: float = WAIT_S) -> list[mqtt.MQTTMessage]:
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            event = self.next(max(0.0, deadline - time.monotonic()))
            if isinstance(event, mqtt.MQTTMessage):
                got.append(event)
        return got


@pytest.fixture
def connect(nats_cluster: NatsCluster) -> Iterator[Callable[..., Client]]:
    """``connect(node_index, client_id="", failover=False, **paho_kwargs)``: a soclab client
    (``make_client``) on one node, with the other nodes as failover when asked."""
    clients: list[Client] = []

    def start(node: int, client_id: str = "", *, failover: bool = False, **kwargs: Any) -> Client:
        n = nats_cluster.nodes[node]
        settings = MqttSettings(
            host=n.host,
            port=n.port,
            failover=nats_cluster.failover(node) if failover else "",
            reconnect_max_s=1,
        )
        client = Client(make_client(settings, client_id, **kwargs))
        client.paho.connect_async(n.host, n.port, keepalive=5)
        client.paho.loop_start()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.paho.disconnect()
        client.paho.loop_stop()


def test_a_message_published_on_one_node_reaches_a_subscriber_on_another(
    connect: Callable[..., Client],
) -> None:
    subscriber = connect(1, "sub-across", clean_session=False)
    subscriber.connected()
    subscriber.subscribe("soclab/across/+/+/data")
    publisher = connect(0)
    publisher.connected()
    for i in range(20):
        publisher.paho.publish("soclab/across/pi/d/data", str(i).encode(), qos=1)
    assert [m.payload for m in subscriber.messages(20)] == [str(i).encode() for i in range(20)]


def test_retained_status_and_last_will_are_seen_from_every_node(
    connect: Callable[..., Client], nats_cluster: NatsCluster
) -> None:
    node0 = nats_cluster.nodes[0]
    # A device on node 0 says online (retained), with its will saying offline; then it dies (kill -9).
    device = subprocess.Popen(
        [sys.executable, "-c", _DEVICE_WITH_WILL, node0.host, str(node0.port)], stdout=subprocess.PIPE
    )
    try:
        assert device.stdout is not None
        assert device.stdout.readline().strip() == b"online"
        for node in (1, 2):
            watcher = connect(node)
            watcher.connected()
            watcher.subscribe("soclab/will/pi/d/status")
            (message,) = watcher.messages(1)
            assert (message.payload, message.retain) == (b"online", True)
    finally:
        device.kill()
        device.wait()
    # The will is published (keepalive 2 s: the broker notices within 1.5 keepalives) and kept.
    (message,) = watcher.messages(1)
    assert message.payload == b"offline"
    late = connect(1)
    late.connected()
    late.subscribe("soclab/will/pi/d/status")
    (message,) = late.messages(1)
    assert (message.payload, message.retain) == (b"offline", True)


_DEVICE_WITH_WILL = """
import sys, time, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="will-device")
c.will_set("soclab/will/pi/d/status", b"offline", qos=1, retain=True)
c.connect(sys.argv[1], int(sys.argv[2]), keepalive=2)
c.loop_start()
c.publish("soclab/will/pi/d/status", b"online", qos=1, retain=True).wait_for_publish(10)
print("online", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_persistent_session_survives_the_death_of_its_node(
    connect: Callable[..., Client], nats_cluster: NatsCluster, fleet_report: list[str]
) -> None:
    subscriber = connect(1, "sub-survivor", failover=True, clean_session=False)
    assert subscriber.connected() is False
    subscriber.subscribe("soclab/survive/+/+/data")
    publisher = connect(0)
    publisher.connected()
    killed = time.monotonic()
    nats_cluster.nodes[1].kill()
    try:
        infos = [
            publisher.paho.publish("soclab/survive/pi/d/data", str(i).encode(), qos=1) for i in range(50)
        ]
        # The subscriber's node is gone: it reconnects to the next node and finds its session.
        events = []
        while True:
            event = subscriber.next()
            events.append(event)
            if isinstance(event, tuple) and event[0] == "connect":
                break
        assert not event[1].is_failure, f"connect refused: {events}"
        assert event[2] is True, f"session lost: {events}"
        got = subscriber.messages(50, timeout=30)
        recovered = time.monotonic() - killed
        for info in infos:
            info.wait_for_publish(WAIT_S)
        assert sorted(int(m.payload) for m in got) == list(range(50))
        fleet_report.append(
            f"NATS: a subscriber's node killed -9: session found on another node, the 50 messages "
            f"sent meanwhile received {recovered:.1f} s after the kill"
        )
    finally:
        nats_cluster.nodes[1].start()
        nats_cluster.wait_healthy()


def test_an_unacknowledged_message_comes_back_only_after_ack_wait(
    connect: Callable[..., Client], nats_cluster: NatsCluster
) -> None:
    ack_wait_s = nats_cluster.ack_wait_s
    consumer = connect(1, "sub-unacked", clean_session=False, manual_ack=True)
    consumer.connected()
    consumer.subscribe("soclab/ackwait/+/+/data")
    publisher = connect(0)
    publisher.connected()
    publisher.paho.publish("soclab/ackwait/pi/d/data", b"once", qos=1)
    consumer.messages(1)
    delivered = time.monotonic()
    consumer.paho.disconnect()  # never acknowledged
    consumer.paho.loop_stop()
    again = connect(2, "sub-unacked", clean_session=False, manual_ack=True)
    assert again.connected() is True
    (redelivered,) = again.messages(1, timeout=ack_wait_s + WAIT_S)
    after = time.monotonic() - delivered
    assert (redelivered.payload, redelivered.dup) == (b"once", True)
    # Mosquitto sends it again at once on reconnection; NATS waits for ack_wait to pass.
    assert after >= ack_wait_s * 0.9, f"redelivered after {after:.1f} s, before ack_wait {ack_wait_s} s"
    again.paho.ack(redelivered.mid, 1)


def test_mqtt_5_is_refused(nats_cluster: NatsCluster) -> None:
    node = nats_cluster.nodes[0]
    client = Client(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5))
    client.paho.connect_async(node.host, node.port)
    client.paho.loop_start()
    try:
        kind, reason, _ = client.next()
        assert kind == "connect"
        assert reason.is_failure
        assert "protocol" in str(reason).lower()
    finally:
        client.paho.disconnect()
        client.paho.loop_stop()


def test_share_is_an_ordinary_topic_level_not_a_shared_subscription(connect: Callable[..., Client]) -> None:
    member = connect(1)
    member.connected()
    member.subscribe("$share/bridges/soclab/share/+/+/data")
    plain = connect(2)
    plain.connected()
    plain.subscribe("soclab/share/+/+/data")
    publisher = connect(0)
    publisher.connected()
    publisher.paho.publish("soclab/share/pi/d/data", b"to-the-group", qos=1)
    publisher.paho.publish("$share/bridges/soclab/share/pi/d/data", b"literal", qos=1)
    assert [m.payload for m in plain.messages(1)] == [b"to-the-group"]
    # The "group member" gets only what was published on the literal $share/... topic.
    assert [m.payload for m in member.messages(1)] == [b"literal"]


def test_a_publish_to_a_topic_with_a_space_ends_the_connection(connect: Callable[..., Client]) -> None:
    client = connect(0)
    client.connected()
    client.paho.publish("soclab/lab one/pi/d/data", b"x", qos=1)
    kind, _reason = client.next()
    assert kind == "disconnect", "NATS accepted a topic level with a space"
