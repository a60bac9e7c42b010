"""The publisher's paho-mqtt client: identity, TLS, credentials, last will, reconnect backoff."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from soclab.edge.publisher.config import PublisherConfig
from soclab.wire.mqtt import secure


def make_client(config: PublisherConfig, will_payload: bytes) -> mqtt.Client:
    """A client that has not connected yet; the caller sets callbacks and calls ``connect_async``.

    MQTT 3.1.1 with a persistent session (fixed client id, ``clean_session=False``): the bridge's
    storage confirmations for this device wait at the broker while the publisher is away.
    """
    m = config.mqtt
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=config.client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    client.enable_logger()
    secure(client, username=m.username, password=m.password() if m.username else None,
           tls_ca=m.tls_ca, tls_cert=m.tls_cert, tls_key=m.tls_key)  # fmt: skip
    status_topic = str(config.topic.with_kind("status"))
    client.will_set(status_topic, will_payload, qos=1, retain=True)
    client.reconnect_delay_set(min_delay=max(1, int(m.reconnect_min_s)), max_delay=int(m.reconnect_max_s))
    client.max_inflight_messages_set(m.max_inflight)
    client.max_queued_messages_set(0)  # the sender bounds what it hands over; the spool holds the rest
    return client
