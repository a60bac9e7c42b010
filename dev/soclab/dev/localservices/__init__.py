"""Real Mosquitto, InfluxDB and NATS processes, and the v2 write shim, for development and tests."""

from soclab.dev.localservices.influxdb import InfluxDB1, InfluxQLError
from soclab.dev.localservices.mosquitto import Mosquitto
from soclab.dev.localservices.nats import NatsCluster, NatsNode
from soclab.dev.localservices.ports import free_port, free_ports
from soclab.dev.localservices.process import LocalServiceError
from soclab.dev.localservices.v2shim import V2WriteShim

__all__ = [
    "InfluxDB1",
    "InfluxQLError",
    "LocalServiceError",
    "Mosquitto",
    "NatsCluster",
    "NatsNode",
    "V2WriteShim",
    "free_port",
    "free_ports",
]
