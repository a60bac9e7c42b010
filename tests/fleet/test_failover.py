"""``[mqtt] failover``: the list of brokers every soclab client tries in turn (soclab.wire.mqtt)."""

from __future__ import annotations

import queue
import re
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from soclab.dev.localservices import Mosquitto, free_ports
from soclab.edge.publisher import config as publisher_config
from soclab.tools import connection
from soclab.wire.mqtt import FailoverClient, MqttSettings, make_client
from soclab.wire.settings import ConfigError

WAIT_S = 15.0


def test_brokers_are_host_port_first_then_the_failover_nodes_in_order() -> None:
    settings = MqttSettings(host="nats-1", port=1883, failover=" nats-2:1883, 10.0.0.3:8883,[::1]:1884")
    assert settings.brokers() == [("nats-1", 1883), ("nats-2", 1883), ("10.0.0.3", 8883), ("::1", 1884)]
    assert MqttSettings().brokers() == [("localhost", 1883)]


@pytest.mark.parametrize(
    ("failover", "message"),
    [
        ("nats-2.lab", "'nats-2.lab' is not host:port"),
        ("nats-2.lab:", "'nats-2.lab:' is not host:port"),
        (":1883", "':1883' is not host:port"),
        ("nats-2.lab:99999", "'nats-2.lab:99999' is not host:port"),
        ("localhost:1883", "names a broker twice"),
        ("a:1,a:1", "names a broker twice"),
    ],
)
def test_a_failover_entry_that_cannot_work_is_a_configuration_error(failover: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        MqttSettings(failover=failover).check()


def test_the_publisher_reads_failover_from_its_file_and_its_environment(tmp_path: Any) -> None:
    path = tmp_path / "publisher.toml"
    path.write_text(
        '[source]\nsite = "lab1"\nnode = "pi-01"\ndevice = "mppt"\nkind = "mppt"\n'
        '[mqtt]\nhost = "nats-1"\nfailover = "nats-2:1883"\n',
        encoding="utf-8",
    )
    assert publisher_config.load(path, env={}).mqtt.brokers() == [("nats-1", 1883), ("nats-2", 1883)]
    env = {"SOCLAB_MQTT_FAILOVER": "nats-3:1883,nats-2:1883"}
    assert publisher_config.load(path, env=env).mqtt.brokers()[1:] == [("nats-3", 1883), ("nats-2", 1883)]
    with pytest.raises(ConfigError, match="failover"):
        publisher_config.load(path, env={"SOCLAB_MQTT_FAILOVER": "nats-3"})


def test_each_reconnection_attempt_goes_to_the_next_broker_of_the_ring() -> None:
    ports = free_ports(3)  # nothing listens: every attempt fails at once
    others = f"127.0.0.1:{ports[1]},127.0.0.1:{ports[2]}"
    settings = MqttSettings(host="127.0.0.1", port=ports[0], failover=others)
    client = make_client(settings, "ring")
    assert isinstance(client, FailoverClient)
    client.connect_async(settings.host, settings.port)
    tried = []
    for _ in range(4):
        with pytest.raises(ConnectionRefusedError):
            client.reconnect()
        tried.append(client.port)
    assert tried == [ports[0], ports[1], ports[2], ports[0]]


def test_a_client_whose_broker_is_down_connects_to_the_next_one(own_mosquitto: Mosquitto) -> None:
    (dead,) = free_ports(1)
    settings = MqttSettings(
        host="127.0.0.1", port=dead, failover=f"{own_mosquitto.host}:{own_mosquitto.port}", reconnect_min_s=1
    )
    client = make_client(settings, "failover-test")
    connected: queue.Queue[Any] = queue.Queue()
    client.on_connect = lambda c, u, flags, reason, props: connected.put((reason, c.port))
    client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
    client.loop_start()
    try:
        reason, port = connected.get(timeout=WAIT_S)
        assert not reason.is_failure
        assert port == own_mosquitto.port
    finally:
        client.disconnect()
        client.loop_stop()


def test_without_failover_a_client_stays_on_its_one_broker() -> None:
    (dead,) = free_ports(1)
    client = make_client(MqttSettings(host="127.0.0.1", port=dead), "single")
    client.connect_async("127.0.0.1", dead)
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            client.reconnect()
        assert client.port == dead
    assert isinstance(client, mqtt.Client)


def test_a_command_line_tool_connects_to_the_first_broker_that_answers(own_mosquitto: Mosquitto) -> None:
    dead = free_ports(2)
    settings = MqttSettings(
        host="127.0.0.1",
        port=dead[0],
        failover=f"{own_mosquitto.host}:{own_mosquitto.port},127.0.0.1:{dead[1]}",
    )
    client = connection.connect(settings, "failover-test")
    try:
        assert client.port == own_mosquitto.port
    finally:
        client.disconnect()
        client.loop_stop()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{dead[0]}: .*; 127.0.0.1:{dead[1]}: "):
        connection.connect(MqttSettings(host="127.0.0.1", port=dead[0], failover=f"127.0.0.1:{dead[1]}"), "x")
