"""From one MQTT data message to line protocol, or to the reason it cannot be stored.

A message on ``soclab/<site>/<node>/<device>/data`` (live) or ``.../replay`` (recorded data that
an operator replays, ``soclab replay``) is accepted when:

- its payload is at most ``[intake] max_payload_bytes`` (below the broker's packet limit; a
  larger one is not even parsed);
- it is a valid ``soclab.data/1`` message: decoded by ``soclab.wire.typed`` (fast, and never
  more lenient than the schema), or, where that decoder is stricter than the schema, by the
  reference path ``soclab.wire.decode``, which also gives the reason of every refusal;
- its ``source`` names the same site, node and device as its topic, and the device keeps the
  kind (``source.kind``, the measurement) it was first stored with since the bridge started;
- its time stamps are plausible: live data no older than ``past_s`` and no newer than
  ``future_s`` around the bridge's clock (a replay only the latter), all samples of one message
  within ``max_spread_s`` (so one message cannot touch thousands of InfluxDB shards), and no two
  samples of one message at the same time (they would be one point: one of them lost);
- each value keeps the type (float or boolean) its field of that measurement was first stored
  with since the bridge started (InfluxDB refuses a conflict only within one shard: a device
  writing booleans into a new shard first would make the real samples fail there for weeks).

What the bridge learns (a device's kind, a field's type) it learns from writes InfluxDB accepted
(``learn()``), so a refused message teaches nothing. Anything else is ``Rejected`` with a
one-line reason and becomes a dead letter (``deadletter``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from soclab.cloud.bridge import points
from soclab.cloud.bridge.config import IntakeConfig
from soclab.wire import DATA_SCHEMA, InvalidMessage, Topic, TopicError, decode
from soclab.wire.typed import DataMessage, NotFast, decode_data, from_valid

Device = tuple[str, str, str]  # site, node, device
_NS = 1_000_000_000
_LEARNED_MAX = 100_000  # devices and fields remembered at most (bounded, whatever devices send)


class Rejected(ValueError):
    """A message the bridge will not store; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Where:
    """What a data topic names, and where its storage confirmations go."""

    device: Device
    replay: bool
    confirmations: str  # soclab/<site>/<node>/<device>/stored, or .../replay/stored for a replay


@dataclass(slots=True)
class Accepted:
    """A data message ready to write: its line protocol and what the bridge reports about it."""

    where: Where
    kind: str
    body: bytes  # line protocol, one line per sample, joined by newlines
    ranges: list[list[int]]  # inclusive ranges of the sequence numbers it carries
    seqs: list[int]  # the sequence number of each sample (of each line)
    t_min: int
    t_max: int
    t_sum: int
    names: set[tuple[str, ...]]  # the sets of value names its samples use
    samples: int
    booleans: dict[str, bool] = field(default_factory=dict)  # name -> is boolean, if any boolean


class Intake:
    """Turns data messages into ``Accepted`` or raises ``Rejected``; remembers kinds and types.

    Owned by one thread (the bridge's writer).
    """

    def __init__(self, config: IntakeConfig | None = None) -> None:
        self.config = config or IntakeConfig()
        self._topics: dict[str, Where] = {}
        self._kinds: dict[Device, str] = {}  # device -> its measurement
        self._types: dict[str, dict[str, bool]] = {}  # measurement -> field -> is boolean
        self._float_names: dict[str, set[tuple[str, ...]]] = {}  # name sets known to be all floats

    def where(self, topic: str) -> Where:
        """The device and kind of message a data or replay topic names, or Rejected."""
        known = self._topics.get(topic)
        if known is not None:
            return known
        try:
            parsed = Topic.parse(topic)
        except TopicError as exc:
            raise Rejected(f"topic: {exc}") from None
        if parsed.kind not in ("data", "replay"):
            raise Rejected(f"topic {topic!r} is not a data or replay topic")
        replay = parsed.kind == "replay"
        where = Where(
            (parsed.site, parsed.node, parsed.device),
            replay,
            str(parsed.with_kind("replay/stored" if replay else "stored")),
        )
        if len(self._topics) >= _LEARNED_MAX:
            self._topics.clear()
        self._topics[topic] = where
        return where

    def accept(self, topic: str, payload: bytes, now_ns: int) -> Accepted:
        """The message's points, checked against the bridge's clock ``now_ns``; or Rejected."""
        where = self.where(topic)
        limit = self.config.max_payload_bytes
        if len(payload) > limit:
            raise Rejected(f"payload of {len(payload)} bytes is over the bridge's limit of {limit} bytes")
        message = self.decode(payload)
        source = message.source
        if (source.site, source.node, source.device) != where.device:
            raise Rejected(f"source {source.site}/{source.node}/{source.device} does not match topic {topic}")
        kind = self._kinds.get(where.device)
        if kind is not None and kind != source.kind:
            raise Rejected(
                f"kind {source.kind!r}: device {'/'.join(where.device)} is a {kind!r} "
                "(a device keeps its kind)"
            )
        rendered = points.line_protocol(message)
        times = rendered.times
        t_min, t_max = min(times), max(times)
        self._check_times(times, t_min, t_max, now_ns, where.replay)
        seqs, body = rendered.seqs, rendered.body
        accepted = Accepted(
            where,
            source.kind,
            body,
            seq_ranges(seqs),
            seqs,
            t_min,
            t_max,
            sum(times),
            rendered.names,
            len(seqs),
        )
        if rendered.booleans:
            accepted.booleans = self._check_booleans(message)
        else:
            self._check_floats(message, rendered.names)
        return accepted

    def decode(self, payload: bytes) -> DataMessage:
        """The valid data message in ``payload``, or Rejected with ``soclab.wire``'s reason."""
        try:
            return decode_data(payload)
        except NotFast:
            pass  # the reference path decides, and says why
        try:
            message = decode(payload, DATA_SCHEMA)
            points.check_finite(message)
            return from_valid(message)
        except InvalidMessage as exc:
            raise Rejected(exc.reason) from None
        except points.PointError as exc:
            raise Rejected(str(exc)) from None
        except NotFast as exc:  # valid for the schema, not representable: say so
            raise Rejected(f"not representable as points: {exc}") from None

    def learn(self, accepted: Accepted) -> None:
        """InfluxDB stored this message: its device's kind and its fields' types are now fixed."""
        if accepted.where.device not in self._kinds and len(self._kinds) < _LEARNED_MAX:
            self._kinds[accepted.where.device] = accepted.kind
        known = self._float_names.setdefault(accepted.kind, set())
        if not accepted.booleans and accepted.names <= known:
            return  # the usual case: nothing new
        types = self._types.setdefault(accepted.kind, {})
        if len(types) >= _LEARNED_MAX:
            return
        for name, boolean in accepted.booleans.items():
            types.setdefault(name, boolean)
        for names in accepted.names - known:
            for name in names:
                types.setdefault(name, accepted.booleans.get(name, False))
            if not any(accepted.booleans.get(name) for name in names) and len(known) < _LEARNED_MAX:
                known.add(names)

    # --- checks ---------------------------------------------------------------------------

    def _check_times(self, times: list[int], t_min: int, t_max: int, now_ns: int, replay: bool) -> None:
        c = self.config
        if t_max > now_ns + c.future_s * _NS:
            index = times.index(t_max)
            raise Rejected(
                f"samples/{index}/t_ns is {(t_max - now_ns) / _NS:.0f} s ahead of the bridge's clock "
                f"(at most {c.future_s:.0f} s)"
            )
        if not replay and t_min < now_ns - c.past_s * _NS:
            index = times.index(t_min)
            raise Rejected(
                f"samples/{index}/t_ns is {(now_ns - t_min) / _NS:.0f} s old (live data at most "
                f"{c.past_s:.0f} s; recorded data goes through a replay)"
            )
        if t_max - t_min > c.max_spread_s * _NS:
            raise Rejected(
                f"samples span {(t_max - t_min) / _NS:.0f} s (one message at most {c.max_spread_s:.0f} s)"
            )
        if len(set(times)) != len(times):
            first: dict[int, int] = {}
            for index, t in enumerate(times):
                if t in first:
                    raise Rejected(
                        f"samples/{first[t]} and samples/{index} have the same t_ns {t} (one would be lost)"
                    )
                first[t] = index

    def _check_floats(self, message: DataMessage, names: set[tuple[str, ...]]) -> None:
        types = self._types.get(message.source.kind)
        if not types:
            return
        known = self._float_names.get(message.source.kind, set())
        for name_set in names - known:
            for name in name_set:
                if types.get(name):
                    self._conflict(message, name, True)

    def _check_booleans(self, message: DataMessage) -> dict[str, bool]:
        types = self._types.get(message.source.kind, {})
        seen: dict[str, bool] = {}
        for sample in message.samples:
            for name, value in sample.values.items():
                boolean = value is True or value is False
                if seen.setdefault(name, boolean) != boolean:
                    self._conflict(message, name, seen[name], within=True)
                if types.get(name, boolean) != boolean:
                    self._conflict(message, name, types[name])
        return seen

    @staticmethod
    def _conflict(message: DataMessage, name: str, stored_boolean: bool, within: bool = False) -> None:
        stored = "boolean" if stored_boolean else "float"
        index = next(
            i
            for i, s in enumerate(message.samples)
            if name in s.values and isinstance(s.values[name], bool) != stored_boolean
        )
        had = "a number" if stored_boolean else "a boolean"
        if within:
            raise Rejected(f"samples/{index}/values/{name} is {had}, an earlier sample's is a {stored}")
        raise Rejected(
            f"samples/{index}/values/{name} is {had}: {message.source.kind} stores {name} as {stored} "
            f"(a field keeps its type)"
        )


def seq_ranges(seqs: list[int]) -> list[list[int]]:
    """Inclusive ranges of sequence numbers; consecutive ones (the usual case) in one step."""
    first = seqs[0]
    if seqs[-1] - first == len(seqs) - 1 and seqs == list(range(first, first + len(seqs))):
        return [[first, seqs[-1]]]
    return merge_ranges((s, s) for s in seqs)


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Inclusive ranges, overlapping or adjacent ones joined: [(4, 6), (1, 3), (9, 9)] -> [[1, 6], [9, 9]]."""
    merged: list[list[int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(last, merged[-1][1])
        else:
            merged.append([first, last])
    return merged
