"""The publisher's paho-mqtt client: identity, last will, in-flight window (``soclab.wire.mqtt``
sets up the rest, as for every soclab client)."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from soclab.edge.publisher.config import PublisherConfig
from soclab.wire.mqtt import Will
from soclab.wire.mqtt import make_client as make_mqtt_client


def make_client(config: PublisherConfig, will_payload: bytes) -> mqtt.Client:
    """A client that has not connected yet; the caller sets callbacks and calls ``connect_async``.

    MQTT 3.1.1 with a persistent session (fixed client id, ``clean_session=False``): the bridge's
    storage confirmations for this device wait at the broker while the publisher is away.
    """
    will = Will(str(config.topic.with_kind("status")), will_payload)
    client = make_mqtt_client(config.mqtt, config.client_id, clean_session=False, will=will)
    client.enable_logger()
    client.max_inflight_messages_set(config.mqtt.max_inflight)
    client.max_queued_messages_set(0)  # the sender bounds what it hands over; the spool holds the rest
    return client
