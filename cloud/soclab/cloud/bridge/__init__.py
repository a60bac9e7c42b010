"""The MQTT -> InfluxDB bridge: stores every valid data message, dead-letters the rest."""

from soclab.cloud.bridge.config import (
    BatchConfig,
    BridgeConfig,
    ConfigError,
    InfluxConfig,
    MqttConfig,
    RetryConfig,
    load,
)
from soclab.cloud.bridge.service import Bridge

__all__ = [
    "BatchConfig",
    "Bridge",
    "BridgeConfig",
    "ConfigError",
    "InfluxConfig",
    "MqttConfig",
    "RetryConfig",
    "load",
]
