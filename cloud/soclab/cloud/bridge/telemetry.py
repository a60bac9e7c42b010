"""The pipeline's own health as InfluxDB points: what the pipeline-health dashboard reads.

Two measurements beside the instruments' (``points``), written by the bridge into the same bucket:

``soclab_status``: one point per ``soclab.status/1`` message (retained on
``soclab/<site>/<node>/<device>/status``), from ``status_lines()``:

===============  ==========================================================================
tags             ``site``, ``node``, ``device`` from ``source`` (which must equal the topic's
                 levels), ``kind`` (``source.kind``)
fields           ``online`` (**bool**, ``state == "online"``), ``state`` (**string**), every
                 counter as an **integer** field of its own name (``samples_read``...), every
                 gauge that is not null as a **float** field of its own name (``spool_depth``,
                 ``spool_oldest_age_s``, ``seq_next``...), ``last_error`` and ``reason``
                 (**string**) when present and not null
time             the message's ``t_ns`` (the publisher's clock)
===============  ==========================================================================

A retained status delivered again (a reconnect, the bridge's restart) is the same point and
overwrites itself. Refused (``Rejected``, so the bridge dead-letters it): an invalid status, a
``source`` that does not match the topic, a counter and a gauge of the same name, a counter or
gauge named like one of the fixed fields, a counter beyond int64 or a gauge that is not finite.

``soclab_bridge``: one point per device and record, from ``Telemetry.take()``:

===============  ==========================================================================
tags             ``bridge`` (its id), ``site``, ``node``, ``device`` (the topic's levels;
                 absent for a dead letter whose topic names no device)
fields           ``messages`` and ``samples`` (**integer**, the device's live data messages
                 and samples stored since its previous point), ``dead_letters`` (**integer**,
                 its messages dead-lettered since then), ``replayed`` (**integer**, samples
                 stored from replays, which count nowhere else; absent when 0), ``lag_min_s``,
                 ``lag_mean_s``, ``lag_max_s`` (**float**, from each live sample's ``t_ns``
                 to the message's arrival at the bridge; absent without live samples)
time             when the record was taken (the bridge's clock, ns; strictly increasing)
===============  ==========================================================================

Samples per device and interval are ``sum("samples")``; lag is ``max("lag_max_s")``; dead
letters are ``sum("dead_letters")``. A record counts what InfluxDB has confirmed (stored
messages) and dead letters; the bridge writes it with its next data write, or alone when no data
follows. Its lines are fixed once taken: written again after a failed or refused write they are
the same points (same time), so nothing is counted twice, not even after a partial write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# influxdb-client's escaping, as in points.py (private names; the version is pinned).
from influxdb_client.client.write.point import (
    _ESCAPE_MEASUREMENT,
    _escape_key,
    _escape_string,
    _escape_tag_value,
)

from soclab.cloud.bridge.intake import Rejected
from soclab.cloud.bridge.points import float_text
from soclab.wire import STATUS_SCHEMA, InvalidMessage, Topic, TopicError, decode

STATUS_MEASUREMENT = "soclab_status"
BRIDGE_MEASUREMENT = "soclab_bridge"
Device = tuple[str, str, str]  # site, node, device
STATUS_FIELDS = frozenset({"online", "state", "last_error", "reason"})
_INT64_MAX = 2**63 - 1


# --- soclab_status ---------------------------------------------------------------------------


def status_lines(topic: str, payload: bytes) -> list[str]:
    """The ``soclab_status`` line of a status message, or Rejected with the reason."""
    try:
        message = decode(payload, STATUS_SCHEMA)
    except InvalidMessage as exc:
        raise Rejected(exc.reason) from None
    try:
        where = Topic.parse(topic)
    except TopicError as exc:
        raise Rejected(f"topic: {exc}") from None
    source = message["source"]
    if where.kind != "status":
        raise Rejected(f"topic {topic!r} is not a status topic")
    if (source["site"], source["node"], source["device"]) != (where.site, where.node, where.device):
        raise Rejected(
            f"source {source['site']}/{source['node']}/{source['device']} does not match topic {topic}"
        )
    fields: dict[str, str] = {"online": "true" if message["state"] == "online" else "false"}
    fields["state"] = _string(message["state"])
    for name in ("last_error", "reason"):
        if message.get(name) is not None:
            fields[name] = _string(message[name])
    counters = message.get("counters", {})
    gauges = {k: v for k, v in message.get("gauges", {}).items() if v is not None}
    for name in sorted(set(counters) & set(gauges)):
        raise Rejected(f"{name!r} is both a counter and a gauge")
    for name, value in counters.items():
        _own_name(name)
        if value > _INT64_MAX:
            raise Rejected(f"counter {name}={value} does not fit an int64")
        fields[name] = f"{int(value)}i"
    for name, value in gauges.items():
        _own_name(name)
        fields[name] = _float(name, value)
    tags = {
        "device": source["device"],
        "kind": source["kind"],
        "node": source["node"],
        "site": source["site"],
    }
    return [_line(STATUS_MEASUREMENT, tags, fields, int(message["t_ns"]))]


def _own_name(name: str) -> None:
    if name in STATUS_FIELDS:
        raise Rejected(
            f"{name!r} is a field of its own in {STATUS_MEASUREMENT}; a counter or gauge cannot use it"
        )


# --- soclab_bridge ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    """What telemetry counts of one stored data message."""

    device: Device
    samples: int
    replay: bool
    lag_min_ns: int
    lag_max_ns: int
    lag_sum_ns: int


@dataclass
class _Device:
    messages: int = 0
    samples: int = 0
    dead_letters: int = 0
    replayed: int = 0
    lag_min_ns: int = 0
    lag_max_ns: int = 0
    lag_sum_ns: int = 0

    def add(self, d: Delivered) -> None:
        if d.replay:
            self.replayed += d.samples
            return
        first = self.samples == 0
        self.messages += 1
        self.samples += d.samples
        self.lag_sum_ns += d.lag_sum_ns
        self.lag_min_ns = d.lag_min_ns if first else min(self.lag_min_ns, d.lag_min_ns)
        self.lag_max_ns = d.lag_max_ns if first else max(self.lag_max_ns, d.lag_max_ns)


class Telemetry:
    """Per-device counts and lags since the last record. Owned by one thread (the writer)."""

    def __init__(self, bridge_id: str) -> None:
        self.bridge_id = bridge_id
        self._devices: dict[Device | None, _Device] = {}
        self._last_ns = 0

    def dead_lettered(self, device: Device | None) -> None:
        self._device(device).dead_letters += 1

    def stored(self, delivered: Delivered) -> None:
        self._device(delivered.device).add(delivered)

    @property
    def pending(self) -> bool:
        return bool(self._devices)

    def take(self, now_ns: int) -> list[bytes]:
        """The record of everything counted since the last one, as lines; counting starts afresh."""
        t_ns = max(now_ns, self._last_ns + 1)  # a record is never rewritten by the next one
        self._last_ns = t_ns
        devices, self._devices = self._devices, {}
        return [self._line(key, device, t_ns) for key, device in sorted(devices.items(), key=_order)]

    def _device(self, key: Device | None) -> _Device:
        device = self._devices.get(key)
        if device is None:
            device = self._devices[key] = _Device()
        return device

    def _line(self, key: Device | None, device: _Device, t_ns: int) -> bytes:
        tags = {"bridge": self.bridge_id}
        if key is not None:
            tags.update(zip(("site", "node", "device"), key, strict=True))
        fields = {
            "messages": f"{device.messages}i",
            "samples": f"{device.samples}i",
            "dead_letters": f"{device.dead_letters}i",
        }
        if device.replayed:
            fields["replayed"] = f"{device.replayed}i"
        if device.samples:
            fields["lag_min_s"] = _float("lag_min_s", device.lag_min_ns / 1e9)
            fields["lag_mean_s"] = _float("lag_mean_s", device.lag_sum_ns / device.samples / 1e9)
            fields["lag_max_s"] = _float("lag_max_s", device.lag_max_ns / 1e9)
        return _line(BRIDGE_MEASUREMENT, tags, fields, t_ns).encode()


def device_of(topic: str) -> Device | None:
    """The device a topic names, if it names one."""
    try:
        where = Topic.parse(topic)
    except TopicError:
        return None
    return where.site, where.node, where.device


def _order(item: tuple[Device | None, Any]) -> tuple[str, str, str]:
    return item[0] or ("", "", "")


# --- line protocol ---------------------------------------------------------------------------


def _line(measurement: str, tags: dict[str, str], fields: dict[str, str], t_ns: int) -> str:
    tag_text = "".join(f",{_escape_key(k)}={_escape_tag_value(v)}" for k, v in sorted(tags.items()) if v)
    field_text = ",".join(f"{_escape_key(k)}={v}" for k, v in sorted(fields.items()))
    return f"{_escape_key(measurement, _ESCAPE_MEASUREMENT)}{tag_text} {field_text} {t_ns}"


def _string(value: str) -> str:
    return f'"{_escape_string(value)}"'


def _float(name: str, value: float) -> str:
    text = float_text(value)
    if text is None:
        raise Rejected(f"{name}={value!r} is not a finite number")
    return text
