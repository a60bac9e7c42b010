"""The bridge's settings: a TOML file (see ``bridge.example.toml``), then environment variables.

Every setting ``[section] key`` can be overridden by ``SOCLAB_BRIDGE_<SECTION>_<KEY>`` (upper
case), e.g. ``SOCLAB_BRIDGE_MQTT_HOST``. The two secrets come only from the environment
(``SOCLAB_BRIDGE_INFLUX_TOKEN``, ``SOCLAB_BRIDGE_MQTT_PASSWORD``) or from a file the
configuration names (``token_file``, ``password_file``: a Docker or systemd credential), never
from the TOML itself and never from a default.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from soclab.wire.mqtt import MqttSettings
from soclab.wire.settings import ConfigError, load_section, load_sections, read_toml

__all__ = ["BridgeConfig", "ConfigError", "load"]

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


@dataclass(frozen=True)
class MqttConfig(MqttSettings):
    """``client_id`` defaults to ``soclab-bridge-<bridge id>``: fixed, so the broker keeps the session."""

    # Messages received but not yet written or dead-lettered: the bridge's window. The broker's
    # max_inflight_messages was meant to be it, but Mosquitto 2.0.11 sends more once
    # acknowledgements come (connection.py); when this is full the bridge stops reading.
    max_pending_messages: int = 1000
    # The same for bytes: payloads held, whatever their number (a few huge messages are as bad as
    # many small ones). One message is always let in, so keep it above [intake] max_payload_bytes.
    max_pending_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class InfluxConfig:
    url: str = ""
    org: str = ""
    bucket: str = ""
    token: str = field(default="", repr=False)  # SOCLAB_BRIDGE_INFLUX_TOKEN or token_file
    token_file: str = ""
    timeout_ms: int = 10_000
    gzip: bool = False


@dataclass(frozen=True)
class BatchConfig:
    points: int = 5000  # write when this many points are pending,
    ms: int = 100  # or when the oldest pending point has waited this long,
    idle_ms: int = 5  # or when no message has come for this long (the broker's window may be full)


@dataclass(frozen=True)
class IntakeConfig:
    """What the bridge accepts (see ``intake``); the replay tool sizes its messages by these."""

    max_payload_bytes: int = 4 * 1024 * 1024  # larger: dead-lettered unread (broker's limit: 16 MiB)
    past_s: float = 90 * 86400.0  # live samples at most this old (a spool after a long outage)
    future_s: float = 300.0  # samples at most this far ahead of the bridge's clock (replays too)
    max_spread_s: float = 86400.0  # from a message's first to its last sample (replays too)
    excerpt_bytes: int = 64 * 1024  # a dead letter keeps at most this much of the payload


@dataclass(frozen=True)
class RetryConfig:
    initial_s: float = 0.5  # first pause after a failed write, doubled each time
    max_s: float = 30.0


@dataclass(frozen=True)
class _TopLevel:
    """The ``[bridge]`` table (``SOCLAB_BRIDGE_<KEY>``)."""

    id: str = "bridge"  # names the status topic soclab-bridge/<id>/status and the dead letters' consumer
    site: str = "+"  # subscribe to soclab/<site>/+/+/data (and replay, status); "+" is every site
    share: str = ""  # replicas' group on one Mosquitto: subscribe via $share/<share>/..., clean session
    status_interval_s: float = 5.0
    shutdown_timeout_s: float = 10.0  # at stop, how long to keep retrying a write before leaving it
    log_level: str = "INFO"


@dataclass(frozen=True)
class BridgeConfig:
    mqtt: MqttConfig
    influx: InfluxConfig
    id: str = _TopLevel.id
    site: str = _TopLevel.site
    share: str = _TopLevel.share
    status_interval_s: float = _TopLevel.status_interval_s
    shutdown_timeout_s: float = _TopLevel.shutdown_timeout_s
    log_level: str = _TopLevel.log_level
    batch: BatchConfig = field(default_factory=BatchConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"soclab-bridge-{self.id}"

    def check(self) -> BridgeConfig:
        """Raise ConfigError for what cannot work; return self."""
        if not _NAME.fullmatch(self.id):
            raise ConfigError(f"[bridge] id {self.id!r} must match {_NAME.pattern}")
        if self.site != "+" and not _NAME.fullmatch(self.site):
            raise ConfigError(f"[bridge] site {self.site!r} must be '+' or match {_NAME.pattern}")
        if self.share and not _NAME.fullmatch(self.share):
            raise ConfigError(f"[bridge] share {self.share!r} must be empty or match {_NAME.pattern}")
        for name in ("url", "org", "bucket"):
            if not getattr(self.influx, name):
                raise ConfigError(f"[influx] {name} is required")
        if not self.influx.token:
            raise ConfigError("InfluxDB token missing: set SOCLAB_BRIDGE_INFLUX_TOKEN or [influx] token_file")
        if self.mqtt.password and not self.mqtt.username:
            raise ConfigError("an MQTT password without [mqtt] username")
        self.mqtt.check()
        positive = {
            "[batch] points": self.batch.points,
            "[batch] ms": self.batch.ms,
            "[batch] idle_ms": self.batch.idle_ms,
            "[mqtt] max_pending_messages": self.mqtt.max_pending_messages,
            "[mqtt] max_pending_bytes": self.mqtt.max_pending_bytes,
            "[intake] max_payload_bytes": self.intake.max_payload_bytes,
            "[intake] past_s": self.intake.past_s,
            "[intake] future_s": self.intake.future_s,
            "[intake] max_spread_s": self.intake.max_spread_s,
            "[intake] excerpt_bytes": self.intake.excerpt_bytes,
            "[retry] initial_s": self.retry.initial_s,
            "[retry] max_s": self.retry.max_s,
            "status_interval_s": self.status_interval_s,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value!r}")
        if self.mqtt.max_pending_bytes < self.intake.max_payload_bytes:
            raise ConfigError("[mqtt] max_pending_bytes must be at least [intake] max_payload_bytes")
        return self


_SECTIONS: dict[str, type] = {
    "mqtt": MqttConfig,
    "influx": InfluxConfig,
    "batch": BatchConfig,
    "retry": RetryConfig,
    "intake": IntakeConfig,
}
_SECRETS = {("mqtt", "password"): "password_file", ("influx", "token"): "token_file"}  # refused in the file
_ENV = "SOCLAB_BRIDGE_"


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> BridgeConfig:
    """Read the TOML file (if any), apply ``SOCLAB_BRIDGE_*`` variables, read secrets, check."""
    env = dict(os.environ if env is None else env)
    raw = read_toml(path)
    bridge_table = raw.pop("bridge", {})
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; known: bridge, {', '.join(_SECTIONS)}")
    _check_variables(env)
    # [bridge] shares the prefix with every section's variables: those are checked above.
    top = load_section(
        _TopLevel, bridge_table, where="bridge", env=env, prefix=_ENV, ignore_unknown_variables=True
    )
    sections = load_sections(raw, _SECTIONS, env=env, prefix=_ENV, refused=_refused)
    sections["mqtt"] = sections["mqtt"].with_password(env, f"{_ENV}MQTT_PASSWORD")
    sections["influx"] = replace(
        sections["influx"], token=_secret(env, "influx", "token", sections["influx"])
    )
    return BridgeConfig(**vars(top), **sections).check()


def _check_variables(env: dict[str, str]) -> None:
    """A ``SOCLAB_BRIDGE_*`` variable that names no setting is an error: a typo would pass unseen."""
    top = {f"{_ENV}{name.upper()}" for name in _TopLevel.__dataclass_fields__}
    sections = tuple(f"{_ENV}{name.upper()}_" for name in _SECTIONS)
    for variable in sorted(env):
        if variable.startswith(_ENV) and variable not in top and not variable.startswith(sections):
            raise ConfigError(
                f"{variable} names no setting of the bridge; known: {', '.join(sorted(top))} "
                f"and {_ENV}<SECTION>_<KEY> for the sections {', '.join(_SECTIONS)}"
            )


def _refused(name: str) -> dict[str, str]:
    return {
        key: f"secrets are not read from the config file; set {_ENV}{name.upper()}_{key.upper()} "
        f"or [{name}] {file_key}"
        for (sec, key), file_key in _SECRETS.items()
        if sec == name
    }


def _secret(env: dict[str, str], section: str, key: str, config: Any) -> str:
    variable = f"{_ENV}{section.upper()}_{key.upper()}"
    value = env.get(variable, "")
    file_name = getattr(config, _SECRETS[section, key])
    if value and file_name:
        raise ConfigError(f"{variable} and [{section}] {_SECRETS[section, key]} are both set: set only one")
    if file_name:
        try:
            value = Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"[{section}] {_SECRETS[section, key]}: {exc}") from None
    return value
