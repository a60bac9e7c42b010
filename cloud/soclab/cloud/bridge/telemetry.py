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

``soclab_bridge``: one point per device and written batch, from ``Telemetry.batch()``:

===============  ==========================================================================
tags             ``bridge`` (its id), ``site``, ``node``, ``device`` (the topic's levels;
                 absent for a dead letter whose topic names no device)
fields           ``messages`` and ``samples`` (**integer**, the device's data messages and
                 samples in this write), ``dead_letters`` (**integer**, its messages
                 dead-lettered since its previous point), ``lag_min_s``, ``lag_mean_s``,
                 ``lag_max_s`` (**float**, from each sample's ``t_ns`` to the message's arrival
                 at the bridge; absent when the point only counts dead letters)
time             when the batch was written (the bridge's clock, ns)
===============  ==========================================================================

Samples per device and interval are ``sum("samples")``; lag is ``max("lag_max_s")``; dead
letters are ``sum("dead_letters")``. Dead letters are counted when they happen and written with
the next write (data or status of any device): they never delay an acknowledgement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
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


@dataclass
class _Device:
    messages: int = 0
    samples: int = 0
    dead_letters: int = 0
    lag_min_ns: int = 0
    lag_max_ns: int = 0
    lag_sum_ns: int = 0

    def add(self, t_ns: int, received_ns: int) -> None:
        lag = received_ns - t_ns
        first = self.samples == 0
        self.samples += 1
        self.lag_sum_ns += lag
        self.lag_min_ns = lag if first else min(self.lag_min_ns, lag)
        self.lag_max_ns = lag if first else max(self.lag_max_ns, lag)


@dataclass(frozen=True)
class Batch:
    """The telemetry lines of one write, and the dead letters they report."""

    lines: list[str]
    dead_letters: Counter[tuple[str, str, str] | None] = field(default_factory=Counter)


class Telemetry:
    """Per-device counts and lags of each write (``batch()``), dead letters in between.

    The writer calls ``dead_lettered()`` for each dead letter, ``batch()`` with the data
    messages of a write (before every attempt), and ``written()`` once the write succeeded:
    the dead letters it reported are then no longer pending.
    """

    def __init__(self, bridge_id: str) -> None:
        self.bridge_id = bridge_id
        self._dead_letters: Counter[tuple[str, str, str] | None] = Counter()

    def dead_lettered(self, topic: str) -> None:
        self._dead_letters[_device_of(topic)] += 1

    def batch(self, messages: Iterable[tuple[str, bytes, int]], now_ns: int) -> Batch:
        """Lines for a write of ``messages``: (topic, their line protocol, arrival ns) each.

        Messages on other topics than ``.../data`` (status) are not counted.
        """
        devices: dict[tuple[str, str, str] | None, _Device] = {}
        for topic, body, received_ns in messages:
            if not topic.endswith("/data") or not body:
                continue
            key = _device_of(topic)
            device = devices.setdefault(key, _Device())
            device.messages += 1
            for line in body.split(b"\n"):
                device.add(int(line.rsplit(b" ", 1)[1]), received_ns)
        pending = Counter({k: n for k, n in self._dead_letters.items() if n})
        for key, count in pending.items():
            devices.setdefault(key, _Device()).dead_letters = count
        lines = [self._line(key, device, now_ns) for key, device in sorted(devices.items(), key=_order)]
        return Batch(lines, pending)

    def written(self, batch: Batch) -> None:
        self._dead_letters.subtract(batch.dead_letters)
        self._dead_letters = +self._dead_letters

    @property
    def pending_dead_letters(self) -> int:
        return sum(self._dead_letters.values())

    def _line(self, key: tuple[str, str, str] | None, device: _Device, now_ns: int) -> str:
        tags = {"bridge": self.bridge_id}
        if key is not None:
            tags.update(zip(("site", "node", "device"), key, strict=True))
        fields = {
            "messages": f"{device.messages}i",
            "samples": f"{device.samples}i",
            "dead_letters": f"{device.dead_letters}i",
        }
        if device.samples:
            fields["lag_min_s"] = _float("lag_min_s", device.lag_min_ns / 1e9)
            fields["lag_mean_s"] = _float("lag_mean_s", device.lag_sum_ns / device.samples / 1e9)
            fields["lag_max_s"] = _float("lag_max_s", device.lag_max_ns / 1e9)
        return _line(BRIDGE_MEASUREMENT, tags, fields, now_ns)


def _device_of(topic: str) -> tuple[str, str, str] | None:
    try:
        where = Topic.parse(topic)
    except TopicError:
        return None
    return where.site, where.node, where.device


def _order(item: tuple[tuple[str, str, str] | None, Any]) -> tuple[str, str, str]:
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
