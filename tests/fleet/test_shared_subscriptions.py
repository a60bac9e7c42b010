"""Mosquitto's shared subscriptions (``$share/<group>/<filter>``) with plain paho clients: what
bridge replicas sharing the data can rely on, and the trap they must design around.

Mosquitto hands each message to one member of the group, in turn. A member with a persistent
session (``clean_session=False``) that dies stays a member: Mosquitto keeps giving it its turn
and queues those messages in its session, never to the others, until a client with its id comes
back. A member with a clean session stops being one as soon as Mosquitto sees its connection
gone, and the others get everything from then on. Hence the design (README, "Bridge replicas"):
replicas that share a subscription use clean sessions, and what the broker held for a dead one
(in flight, unacknowledged) is recovered by the edge, which resends every batch the bridge has
not confirmed.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from soclab.dev.localservices import Mosquitto

WAIT_S = 15.0


class Member:
    def __init__(self, broker: Mosquitto, client_id: str, group_filter: str, *, clean: bool) -> None:
        self.got: queue.Queue[bytes] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        subscribed: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(group_filter, qos=1)
        self.client.on_subscribe = lambda c, u, mid, reasons, p: subscribed.put(reasons)
        self.client.on_message = lambda c, u, m: self.got.put(m.payload)
        self.client.connect(broker.host, broker.port, keepalive=60)
        self.client.loop_start()
        assert not subscribed.get(timeout=WAIT_S)[0].is_failure

    def die(self) -> None:
        """Vanish as a killed process does: the socket closes without a DISCONNECT."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert sock is not None
        sock.close()

    def leave(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drain(self, settle_s: float = 0.5) -> list[bytes]:
        """What arrived until nothing more came for ``settle_s``."""
        out = []
        while True:
            try:
                out.append(self.got.get(timeout=settle_s))
            except queue.Empty:
                return out


def publish(
    broker: Mosquitto, topic: str, payloads: list[bytes], mqtt_client: Callable[..., mqtt.Client]
) -> None:
    client = mqtt_client(broker)
    for info in [client.publish(topic, p, qos=1) for p in payloads]:
        info.wait_for_publish(WAIT_S)


@pytest.mark.parametrize("clean", [False, True], ids=["persistent-members", "clean-members"])
def test_a_dead_members_share(own_mosquitto: Mosquitto, mqtt_client: Any, site: str, clean: bool) -> None:
    group = f"$share/bridges/soclab/{site}/+/+/data"
    topic = f"soclab/{site}/pi/d/data"
    members = [Member(own_mosquitto, f"{site}-member{i}", group, clean=clean) for i in range(3)]
    first = [str(i).encode() for i in range(30)]
    publish(own_mosquitto, topic, first, mqtt_client)
    shares = [m.drain() for m in members]
    assert sorted(p for share in shares for p in share) == sorted(first)
    assert all(shares), f"round robin left a member out: {[len(s) for s in shares]}"

    members[2].die()
    time.sleep(0.5)  # Mosquitto has seen the connection close
    second = [str(i).encode() for i in range(30, 60)]
    publish(own_mosquitto, topic, second, mqtt_client)
    alive = sorted(p for m in members[:2] for p in m.drain())
    if clean:
        # The dead member's session ended with its connection: the others get everything.
        assert alive == sorted(second)
    else:
        # The dead member's session keeps its turn: a third of the messages wait there, and only
        # a client with its id ever gets them.
        assert 0 < len(alive) < len(second), f"live members got {len(alive)} of {len(second)}"
        back = Member(own_mosquitto, f"{site}-member2", group, clean=False)
        queued = back.drain()
        assert sorted(alive + queued) == sorted(second)
        back.leave()
    for m in members[:2]:
        m.leave()
