"""The run controller's settings: a TOML file (``run.example.toml`` beside this module), then
``SOCLAB_<SECTION>_<KEY>`` variables over it, as for the publishers (``soclab.wire.settings``).
The broker password comes from ``SOCLAB_MQTT_PASSWORD`` or ``[mqtt] password_file`` only."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soclab.wire import Topic, TopicError
from soclab.wire.mqtt import MqttSettings
from soclab.wire.settings import ConfigError, load_sections, read_toml

__all__ = ["EXAMPLE", "ConfigError", "ControllerConfig", "load"]

EXAMPLE = Path(__file__).with_name("run.example.toml")


@dataclass(frozen=True)
class SourceConfig:
    """The node whose runs this controller executes; its topics are ``soclab/<site>/<node>/run/...``."""

    site: str
    node: str


@dataclass(frozen=True)
class RunConfig:
    """How runs are executed (see the README's "Runs").

    ``socket``: where each instrument's publisher serves its control (``{device}`` replaced).
    ``lease_ttl_s``: a publisher makes its instrument safe when the lease is not renewed within
    this (renewed every third of it). The guard each publisher judges on its own readings is the
    run's limits widened by ``guard_margin_v`` and ``guard_margin_a`` (an instrument reads a little
    differently from the reference). ``confirm_s``: an end condition must hold this long.
    ``command_expiry_s``: a command to an instrument not executed by then is refused.
    ``status_interval_s``: the retained run status, besides every transition.
    ``startup_wait_s``: how long a controller that found an unfinished run at its start tries to
    reach the instruments to make them safe (they also make themselves safe when they open).
    """

    socket: str = "/run/soclab/{device}.sock"
    lease_ttl_s: float = 3.0
    guard_margin_v: float = 0.2
    guard_margin_a: float = 0.5
    confirm_s: float = 2.0
    command_expiry_s: float = 5.0
    status_interval_s: float = 5.0
    startup_wait_s: float = 30.0
    tick_s: float = 0.1

    def socket_path(self, device: str) -> str:
        return self.socket.format(device=device)


@dataclass(frozen=True)
class JournalConfig:
    """``path``: the durable journal; ``resend_s``: records unconfirmed this long are sent again."""

    path: str = "/var/lib/soclab/run/journal.sqlite"
    resend_s: float = 10.0


@dataclass(frozen=True)
class ControllerConfig:
    source: SourceConfig
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    run: RunConfig = field(default_factory=RunConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    log_level: str = "INFO"

    @property
    def topic(self) -> Topic:
        """``soclab/<site>/<node>/run/cmd``; ``with_kind`` gives the others."""
        return Topic(self.source.site, self.source.node, "run", "cmd")

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"soclab-{self.source.site}-{self.source.node}-run"


_SECTIONS = {"source": SourceConfig, "mqtt": MqttSettings, "run": RunConfig, "journal": JournalConfig}
_REFUSED = {"mqtt": {"password": "secrets are not read from the config file; set SOCLAB_MQTT_PASSWORD or "
                     "[mqtt] password_file"}}  # fmt: skip


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> ControllerConfig:
    env = dict(os.environ if env is None else env)
    raw = read_toml(path)
    unknown = set(raw) - set(_SECTIONS) - {"log_level"}
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; known: {sorted(_SECTIONS)}")
    sections: dict[str, Any] = load_sections(raw, _SECTIONS, env=env, prefix="SOCLAB_", refused=_REFUSED.get)
    sections["mqtt"] = sections["mqtt"].with_password(env, "SOCLAB_MQTT_PASSWORD")
    sections["mqtt"].check()
    run = sections["run"]
    if not 0 < run.lease_ttl_s <= 60:
        raise ConfigError(f"[run] lease_ttl_s must be in (0, 60], got {run.lease_ttl_s}")
    config = ControllerConfig(log_level=env.get("SOCLAB_LOG_LEVEL", raw.get("log_level", "INFO")), **sections)
    try:
        config.topic  # noqa: B018 - validates site and node as topic levels
    except TopicError as exc:
        raise ConfigError(f"[source]: {exc}") from None
    return config
