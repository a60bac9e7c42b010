"""The publisher's settings: a TOML file, then environment variables over it.

Every setting ``[section] key`` can be overridden by ``SOCLAB_<SECTION>_<KEY>`` (upper case),
e.g. ``SOCLAB_MQTT_HOST``; ``__`` reaches into a sub-table (``SOCLAB_INSTRUMENT_STANDIN__BATTERY_FILE``).
The MQTT password comes only from ``SOCLAB_MQTT_PASSWORD`` or from the file ``password_file``
names, never from the TOML itself (``soclab.wire.mqtt``).

``[instrument]`` becomes the typed options of ``source.kind``'s driver (the registry in
``soclab.edge.instruments``), through the same settings path; a publisher file without
``[instrument]`` (and no ``SOCLAB_INSTRUMENT_*``) has no options, for a caller that brings its own
instrument. ``[control]`` (or any ``SOCLAB_CONTROL_*``) makes the publisher host its instrument's
control (``soclab.edge.runs.hosting``). ``publisher.example.toml`` beside this module is a
complete example.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soclab.edge.instruments import UnknownKind, kind, kinds
from soclab.edge.instruments.kinds import Options
from soclab.edge.runs.hosting import ControlConfig
from soclab.wire import Topic, TopicError
from soclab.wire.mqtt import MqttSettings
from soclab.wire.settings import ConfigError, load_section, load_sections, read_toml

__all__ = ["EXAMPLE", "ConfigError", "PublisherConfig", "load"]

EXAMPLE = Path(__file__).with_name("publisher.example.toml")


@dataclass(frozen=True)
class SourceConfig:
    site: str
    node: str
    device: str
    kind: str


@dataclass(frozen=True)
class MqttConfig(MqttSettings):
    """``client_id`` defaults to ``soclab-<site>-<node>-<device>``."""

    max_inflight: int = 20  # messages awaiting PUBACK
    resend_grace_s: float = 10.0  # see publisher.ledger: when an unconfirmed batch counts as lost


@dataclass(frozen=True)
class BatchConfig:
    max_samples: int = 500  # samples per message at most
    max_delay_s: float = 0.0  # wait this long for more samples before sending a short batch


@dataclass(frozen=True)
class SpoolConfig:
    path: str = "/var/lib/soclab/spool/{device}.sqlite"
    max_samples: int = 10_000_000
    sync: str = "full"
    hold_max_samples: int = 100_000  # readings kept in memory while the disk refuses (publisher.intake)


@dataclass(frozen=True)
class StatusConfig:
    interval_s: float = 10.0


@dataclass(frozen=True)
class ClockConfig:
    """``check_sync``: flag samples stamped while the kernel says the clock is not synchronised
    (``clock_unsynced``; see ``soclab.edge.instruments.clock``)."""

    check_sync: bool = True


@dataclass(frozen=True)
class PublisherConfig:
    source: SourceConfig
    instrument: Options | None = None  # the typed options of source.kind's driver
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    control: ControlConfig | None = None  # hosts the instrument's control (commands, safe state)
    log_level: str = "INFO"

    @property
    def topic(self) -> Topic:
        return Topic(self.source.site, self.source.node, self.source.device, "data")

    @property
    def client_id(self) -> str:
        s = self.source
        return self.mqtt.client_id or f"soclab-{s.site}-{s.node}-{s.device}"

    @property
    def spool_path(self) -> Path:
        return Path(self.spool.path.format(device=self.source.device, node=self.source.node))


_SECTIONS = {
    "source": SourceConfig,
    "mqtt": MqttConfig,
    "batch": BatchConfig,
    "spool": SpoolConfig,
    "status": StatusConfig,
    "clock": ClockConfig,
}


_REFUSED = {
    "mqtt": {"password": "secrets are not read from the config file; set SOCLAB_MQTT_PASSWORD or "
             "[mqtt] password_file"}
}  # fmt: skip


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> PublisherConfig:
    """Read the TOML file (if any), apply ``SOCLAB_*`` variables, check everything."""
    env = dict(os.environ if env is None else env)
    raw = read_toml(path)
    unknown = set(raw) - set(_SECTIONS) - {"instrument", "control", "log_level"}
    if unknown:
        raise ConfigError(
            f"unknown section(s) {sorted(unknown)}; known: {sorted(_SECTIONS)}, instrument, control"
        )
    sections: dict[str, Any] = load_sections(raw, _SECTIONS, env=env, prefix="SOCLAB_", refused=_REFUSED.get)
    sections["mqtt"] = sections["mqtt"].with_password(env, "SOCLAB_MQTT_PASSWORD")
    sections["mqtt"].check()
    source = sections["source"]
    try:
        instrument_kind = kind(source.kind)
    except UnknownKind:
        raise ConfigError(f"[source] kind {source.kind!r} is not one of {', '.join(kinds())}") from None
    instrument = None
    if "instrument" in raw or any(name.startswith("SOCLAB_INSTRUMENT_") for name in env):
        instrument = instrument_kind.load_options(raw.get("instrument", {}), env)
    control = None
    if "control" in raw or any(name.startswith("SOCLAB_CONTROL_") for name in env):
        control = load_section(ControlConfig, raw.get("control", {}), where="control", env=env,
                               prefix="SOCLAB_CONTROL_")  # fmt: skip
    config = PublisherConfig(
        instrument=instrument,
        control=control,
        log_level=env.get("SOCLAB_LOG_LEVEL", raw.get("log_level", "INFO")),
        **sections,
    )
    try:
        config.topic  # noqa: B018 - validates site/node/device as topic levels
    except TopicError as exc:
        raise ConfigError(f"[source]: {exc}") from None
    return config
