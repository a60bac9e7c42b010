"""Real Mosquitto and InfluxDB processes, and the v2 write shim, for development and tests."""

from soclab.cloud.localservices.influxdb import InfluxDB1, InfluxQLError
from soclab.cloud.localservices.mosquitto import Mosquitto
from soclab.cloud.localservices.ports import free_port, free_ports
from soclab.cloud.localservices.process import LocalServiceError
from soclab.cloud.localservices.v2shim import V2WriteShim

__all__ = [
    "InfluxDB1",
    "InfluxQLError",
    "LocalServiceError",
    "Mosquitto",
    "V2WriteShim",
    "free_port",
    "free_ports",
]
