"""Local Mosquitto and InfluxDB: restarts keep port and data; failures say why."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from soclab.dev.localservices import InfluxDB1, LocalServiceError, Mosquitto

WAIT_S = 15.0


def test_mosquitto_restarts_on_its_port_with_its_retained_messages(
    own_mosquitto: Mosquitto, mqtt_client: Any, mqtt_collector: Any
) -> None:
    port, pid = own_mosquitto.port, own_mosquitto.pid
    publisher = mqtt_client(own_mosquitto)
    publisher.publish("soclab/t/n/d/status", b"kept", qos=1, retain=True).wait_for_publish(WAIT_S)
    publisher.disconnect()
    own_mosquitto.stop()
    assert not own_mosquitto.running
    own_mosquitto.start()
    assert (own_mosquitto.port, own_mosquitto.running) == (port, True)
    assert own_mosquitto.pid != pid
    (message,) = mqtt_collector(own_mosquitto, "soclab/t/n/d/status").wait_for(1)
    assert message.payload == b"kept"


def test_mosquitto_killed_is_gone_at_once(own_mosquitto: Mosquitto) -> None:
    pid = own_mosquitto.pid
    own_mosquitto.kill()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    with pytest.raises(ConnectionRefusedError):
        client.connect(own_mosquitto.host, own_mosquitto.port)


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = Mosquitto(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(LocalServiceError) as error:
            broker.start()
    assert "mosquitto exited with code" in str(error.value)
    assert "Address already in use" in str(error.value)  # the log's tail
    assert not broker.running


def test_influxdb_keeps_its_data_and_port_across_a_kill(tmp_path: Path) -> None:
    with InfluxDB1(tmp_path) as server:
        server.create_database("db")
        url = server.url
        server.query("CREATE RETENTION POLICY week ON db DURATION 7d REPLICATION 1")
        server.kill()
        assert not server.ping()
        server.start()
        assert server.url == url
        assert [v[0] for v in server.query("SHOW RETENTION POLICIES", db="db")[0]["values"]] == [
            "autogen",
            "week",
        ]
    assert not server.running
