"""What the monitor knows about each device, bridge and run, from the messages it was given.

The model has no network and no clock of its own: ``ingest(topic, payload, now)`` takes one MQTT
message and the time it arrived (seconds, the monitor's wall clock), ``alerts(now)`` says what
stands out at ``now``. So the tests feed it messages and time directly, and the renderer only
reads it.

Nothing that arrives can stop it: a message that is not what its topic promises (not JSON, not
valid against its schema, a topic outside the layout, anything else) is counted, remembered with
its reason (``malformed``), and shown; ``ingest`` never raises.

What it reads (all below ``soclab/`` unless said):

- ``.../data``: samples per second, the last values, sequence numbers (holes that stay open past
  a grace period are gaps; numbers seen twice are duplicates), when the device last sent data.
- ``.../status`` (retained, the last will says ``offline``): online or offline and since when,
  spool depth and backlog, counters, the last error. An online status whose ``seq_next`` is not
  above the numbers seen means the publisher numbers from 0 again: the sequence record restarts.
- ``.../stored``: the bridge's storage confirmations; matched with the data messages this
  monitor saw, they give each bridge's lag from acquisition to storage.
- ``.../deadletter`` and ``soclab-bridge/<id>/deadletter``: what a bridge refused, and why.
- ``.../cmd/result``: the last command result of each device.
- ``soclab/<site>/<node>/run/status``: the run of a node (state, step, the value it watches); a
  tripped limit is an alert while its status is recent.
- ``soclab-bridge/<id>/status``: each bridge's counters and state.
"""

from __future__ import annotations

import fnmatch
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from soclab.tools.watch.sequence import SeqTracker
from soclab.tools.watch.windows import CounterRate, LagWindow, RateWindow
from soclab.wire import DATA_SCHEMA, DEADLETTER_SCHEMA, STATUS_SCHEMA, STORED_SCHEMA, InvalidMessage, Topic
from soclab.wire.messages import decode, is_valid_fast
from soclab.wire.topics import BRIDGE_ROOT

RUN_DEVICE = "run"  # run-level topics of a node: soclab/<site>/<node>/run/...
EXPLAIN_LIMIT = 1 << 20  # above this size, an invalid message is not searched for its reason
REASON_CHARS = 200


@dataclass(frozen=True)
class Thresholds:
    """When something becomes an alert."""

    silent_s: float = 10.0  # no data from an online device for this long
    gap_grace_s: float = 30.0  # a hole in the sequence numbers open this long is a gap
    lag_s: float = 10.0  # a bridge's lag (median or maximum over the last minute) above this
    spool_growth_s: float = 30.0  # a spool that only grew for this long
    backlog_age_s: float = 120.0  # the oldest unconfirmed sample older than this
    recent_s: float = 300.0  # dead letters, malformed messages and failed commands this recent


@dataclass(frozen=True)
class Filters:
    """fnmatch patterns on the topic's site, node and device levels."""

    site: str = "*"
    node: str = "*"
    device: str = "*"

    def match(self, site: str, node: str, device: str) -> bool:
        return (
            fnmatch.fnmatchcase(site, self.site)
            and fnmatch.fnmatchcase(node, self.node)
            and fnmatch.fnmatchcase(device, self.device)
        )


@dataclass(frozen=True)
class Malformed:
    at: float
    topic: str
    reason: str
    size: int


@dataclass(frozen=True)
class DeadLetter:
    at: float
    topic: str  # the refused message's topic
    reason: str
    consumer: str
    size: int  # of the refused payload as the dead letter carries it


@dataclass
class _Span:
    """One data message: its sequence numbers and acquisition times, to match confirmations."""

    first_seq: int
    last_seq: int
    first_t_ns: int
    last_t_ns: int

    def t_at(self, seq: int) -> float:
        """Acquisition time of ``seq`` inside the span, by linear interpolation."""
        if self.last_seq == self.first_seq:
            return float(self.first_t_ns)
        fraction = (seq - self.first_seq) / (self.last_seq - self.first_seq)
        return self.first_t_ns + fraction * (self.last_t_ns - self.first_t_ns)


@dataclass
class Device:
    site: str
    node: str
    device: str
    first_seen: float
    kind: str | None = None
    state: str = "unknown"  # "online", "offline" (status) or "unknown" (no status seen)
    state_since: float | None = None  # None: it was so before the monitor started (retained)
    reason: str | None = None  # why offline
    status_at: float | None = None
    status: dict[str, Any] = field(default_factory=dict)
    last_data_at: float | None = None
    last_t_ns: int | None = None
    last_values: dict[str, Any] = field(default_factory=dict)
    last_flags: list[str] = field(default_factory=list)
    samples: int = 0
    messages: int = 0
    rate: RateWindow = field(default_factory=RateWindow)
    seqs: SeqTracker = field(default_factory=SeqTracker)
    malformed: int = 0
    dead_letters: int = 0
    last_dead_letter: DeadLetter | None = None
    confirmed: int = 0  # samples the bridges confirmed as stored
    spool: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=64))
    last_result: dict[str, Any] | None = None
    last_result_at: float | None = None
    spans: deque[_Span] = field(default_factory=lambda: deque(maxlen=2048))

    @property
    def key(self) -> str:
        return f"{self.site}/{self.node}/{self.device}"

    @property
    def gauges(self) -> dict[str, Any]:
        gauges = self.status.get("gauges")
        return gauges if isinstance(gauges, dict) else {}

    @property
    def counters(self) -> dict[str, Any]:
        counters = self.status.get("counters")
        return counters if isinstance(counters, dict) else {}

    @property
    def last_error(self) -> str | None:
        error = self.status.get("last_error")
        return error if isinstance(error, str) and error else None

    def quiet_for(self, now: float) -> float:
        """Seconds since the last data message (since first heard of, if none yet)."""
        return now - (self.last_data_at if self.last_data_at is not None else self.first_seen)


@dataclass
class Bridge:
    id: str
    first_seen: float
    state: str = "unknown"
    state_since: float | None = None
    status_at: float | None = None
    status: dict[str, Any] = field(default_factory=dict)
    messages_rate: CounterRate = field(default_factory=CounterRate)
    points_rate: CounterRate = field(default_factory=CounterRate)
    lag: LagWindow = field(default_factory=LagWindow)
    dead_letters: int = 0
    confirmations: int = 0

    @property
    def counters(self) -> dict[str, Any]:
        counters = self.status.get("counters")
        return counters if isinstance(counters, dict) else {}

    @property
    def last_error(self) -> str | None:
        error = self.status.get("last_error")
        return error if isinstance(error, str) and error else None


@dataclass
class Run:
    site: str
    node: str
    at: float
    status: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.site}/{self.node}"

    def last_event(self) -> dict[str, Any]:
        event = self.status.get("last_event")
        return event if isinstance(event, dict) else {}

    def limit_tripped(self) -> str | None:
        """The reason of a tripped limit, if that is the run's last event (``soclab.run.status/1``)."""
        event = self.last_event()
        if event.get("event") == "limit":
            return str(event.get("reason") or "limit")
        return None


@dataclass(frozen=True)
class IntakeStats:
    """How the subscriber feeding the model is doing (``intake.Intake.stats()``)."""

    connected: bool
    since: float | None  # when the connection state last changed
    queued: int
    oldest_s: float  # age of the oldest message not yet handled
    dropped: int  # messages dropped because the queue was full
    received: int


BEHIND_S = 2.0  # the monitor is behind when a message waits this long to be handled


@dataclass(frozen=True)
class Alert:
    severity: str  # "error" or "warning"
    subject: str  # device key, bridge id, "monitor"...
    text: str


class Model:
    def __init__(
        self, thresholds: Thresholds | None = None, filters: Filters | None = None, started: float = 0.0
    ) -> None:
        self.thresholds = thresholds or Thresholds()
        self.filters = filters or Filters()
        self.started = started
        self.devices: dict[str, Device] = {}
        self.bridges: dict[str, Bridge] = {}
        self.runs: dict[str, Run] = {}
        self.dead_letters: deque[DeadLetter] = deque(maxlen=50)
        self.dead_letter_total = 0
        self.malformed: deque[Malformed] = deque(maxlen=50)
        self.malformed_total = 0
        self.messages = 0
        self.filtered_out = 0
        self.rate = RateWindow()

    # --- intake -------------------------------------------------------------------------------

    def ingest(self, topic: str, payload: bytes, now: float, *, retained: bool = False) -> None:
        """Take one message; never raises (a message it cannot use is counted as malformed)."""
        self.messages += 1
        self.rate.add(now)
        try:
            self._route(topic, payload, now, retained)
        except InvalidMessage as exc:
            self._malformed(topic, exc.reason, payload, now)
        except Exception as exc:  # anything else a hostile payload provokes: shown, never fatal
            self._malformed(topic, f"{type(exc).__name__}: {exc}", payload, now)

    def _route(self, topic: str, payload: bytes, now: float, retained: bool) -> None:
        if topic.startswith(BRIDGE_ROOT + "/"):
            levels = topic.split("/")
            if len(levels) != 3 or not levels[1]:
                raise InvalidMessage(f"topic is not {BRIDGE_ROOT}/<id>/status|deadletter")
            if levels[2] == "status":
                self._bridge_status(levels[1], payload, now, retained)
            elif levels[2] == "deadletter":
                self._dead_letter(None, payload, now)
            else:
                raise InvalidMessage(f"unexpected bridge topic kind {levels[2]!r}")
            return
        where = Topic.parse(topic)
        if not self.filters.match(where.site, where.node, where.device):
            self.filtered_out += 1
            return
        if where.device == RUN_DEVICE:
            if where.kind == "status":
                self._run_status(where, payload, now)
            return  # run commands and their results: not shown yet
        if where.kind == "data":
            self._data(where, payload, now)
        elif where.kind == "status":
            self._status(where, payload, now, retained)
        elif where.kind == "stored":
            self._stored(where, payload, now)
        elif where.kind == "deadletter":
            self._dead_letter(where, payload, now)
        elif where.kind == "cmd/result":
            self._result(where, payload, now)

    def _device(self, where: Topic, now: float) -> Device:
        key = f"{where.site}/{where.node}/{where.device}"
        device = self.devices.get(key)
        if device is None:
            device = self.devices[key] = Device(where.site, where.node, where.device, first_seen=now)
        return device

    def _data(self, where: Topic, payload: bytes, now: float) -> None:
        message = _decode(payload, DATA_SCHEMA)
        _same_source(message, where)
        device = self._device(where, now)
        samples = message["samples"]
        device.kind = message["source"]["kind"]
        device.messages += 1
        device.samples += len(samples)
        device.rate.add(now, len(samples))
        device.last_data_at = now
        seqs = [s["seq"] for s in samples]
        device.seqs.add(seqs, now)
        newest = max(samples, key=lambda s: s["t_ns"])
        if device.last_t_ns is None or newest["t_ns"] >= device.last_t_ns:
            device.last_t_ns = newest["t_ns"]
            device.last_values = dict(newest["values"])
            device.last_flags = list(newest.get("flags", []))
        first, last = samples[0], samples[-1]
        if last["seq"] - first["seq"] == len(samples) - 1:  # one consecutive run, as publishers send
            device.spans.append(_Span(first["seq"], last["seq"], first["t_ns"], last["t_ns"]))
        else:
            device.spans.extend(_Span(s["seq"], s["seq"], s["t_ns"], s["t_ns"]) for s in samples)

    def _status(self, where: Topic, payload: bytes, now: float, retained: bool) -> None:
        message = _decode(payload, STATUS_SCHEMA)
        _same_source(message, where)
        device = self._device(where, now)
        device.kind = message["source"]["kind"]
        state = message["state"]
        if state != device.state:
            device.state = state
            device.state_since = None if retained else now
        device.reason = message.get("reason") if state == "offline" else None
        device.status = message
        device.status_at = now
        gauges = device.gauges
        depth = gauges.get("spool_depth")
        if isinstance(depth, int | float) and not retained:
            device.spool.append((now, float(depth)))
        # A last will carries the gauges of when it was set (the connection), so only an online
        # status can say that numbering started again (a new spool).
        seq_next = gauges.get("seq_next")
        highest = device.seqs.highest
        if (
            state == "online"
            and isinstance(seq_next, int | float)
            and highest is not None
            and seq_next <= highest
        ):
            device.seqs.reset()

    def _stored(self, where: Topic, payload: bytes, now: float) -> None:
        message = _decode(payload, STORED_SCHEMA)
        device = self._device(where, now)
        bridge = self._bridge(_bridge_id(message["consumer"]), now)
        bridge.confirmations += 1
        stored_ns = message["t_ns"]
        for first, last in message.get("stored", []):
            device.confirmed += last - first + 1
            for span in device.spans:
                lo, hi = max(first, span.first_seq), min(last, span.last_seq)
                if lo > hi:
                    continue
                t_lo, t_hi = span.t_at(lo), span.t_at(hi)
                typical = (stored_ns - (t_lo + t_hi) / 2) / 1e9
                bridge.lag.add(now, typical, (stored_ns - t_lo) / 1e9, hi - lo + 1)

    def _dead_letter(self, where: Topic | None, payload: bytes, now: float) -> None:
        message = _decode(payload, DEADLETTER_SCHEMA)
        letter = DeadLetter(
            at=now,
            topic=message["topic"],
            reason=_short(message["reason"]),
            consumer=message["consumer"],
            size=len(message["payload"]),
        )
        self.dead_letters.append(letter)
        self.dead_letter_total += 1
        self._bridge(_bridge_id(message["consumer"]), now).dead_letters += 1
        if where is not None:
            device = self._device(where, now)
            device.dead_letters += 1
            device.last_dead_letter = letter

    def _result(self, where: Topic, payload: bytes, now: float) -> None:
        message = _json_object(payload)
        device = self._device(where, now)
        device.last_result, device.last_result_at = message, now

    def _run_status(self, where: Topic, payload: bytes, now: float) -> None:
        message = _json_object(payload)
        self.runs[f"{where.site}/{where.node}"] = Run(where.site, where.node, now, message)

    def _bridge(self, bridge_id: str, now: float) -> Bridge:
        bridge = self.bridges.get(bridge_id)
        if bridge is None:
            bridge = self.bridges[bridge_id] = Bridge(bridge_id, first_seen=now)
        return bridge

    def _bridge_status(self, bridge_id: str, payload: bytes, now: float, retained: bool) -> None:
        message = _json_object(payload)
        state = message.get("state")
        if state not in ("online", "offline"):
            raise InvalidMessage(f"bridge status: state {state!r} is not online or offline")
        bridge = self._bridge(bridge_id, now)
        if state != bridge.state:
            bridge.state, bridge.state_since = state, None if retained else now
        bridge.status, bridge.status_at = message, now
        counters = bridge.counters
        for name, window in (
            ("messages_received", bridge.messages_rate),
            ("points_written", bridge.points_rate),
        ):
            value = counters.get(name)
            if isinstance(value, int) and not retained:
                window.add(now, value)

    def _malformed(self, topic: str, reason: str, payload: bytes, now: float) -> None:
        self.malformed_total += 1
        self.malformed.append(Malformed(now, _short(topic), _short(reason), len(payload)))
        try:
            where = Topic.parse(topic)
        except ValueError:
            return
        if where.device != RUN_DEVICE and self.filters.match(where.site, where.node, where.device):
            self._device(where, now).malformed += 1

    # --- judgement ----------------------------------------------------------------------------

    def alerts(self, now: float, intake: IntakeStats | None = None) -> list[Alert]:
        """What stands out at ``now``, errors first (with the subscriber's own state, if given)."""
        t = self.thresholds
        found: list[Alert] = []
        if intake is not None:
            found.extend(_intake_alerts(intake, now))
        if not self.devices and now - self.started > t.silent_s:
            # A broker that denies a subscription still grants it and then delivers nothing.
            text = f"no device heard of in {duration(now - self.started)}: wrong broker, filters or account?"
            found.append(Alert("warning", "monitor", text))
        for key in sorted(self.devices):
            found.extend(self._device_alerts(self.devices[key], now))
        for bridge_id in sorted(self.bridges):
            found.extend(self._bridge_alerts(self.bridges[bridge_id], now))
        recent = [d for d in self.dead_letters if now - d.at <= t.recent_s]
        if recent:
            last = recent[-1]
            text = f"{len(recent)} in the last {duration(t.recent_s)}; latest {ago(last.at, now)}"
            found.append(Alert("error", "dead letters", f"{text} {last.topic}: {last.reason}"))
        bad = [m for m in self.malformed if now - m.at <= t.recent_s]
        if bad:
            text = f"{len(bad)} in the last {duration(t.recent_s)}; latest {bad[-1].topic}"
            found.append(Alert("warning", "malformed", f"{text}: {bad[-1].reason}"))
        for key in sorted(self.runs):
            tripped = self.runs[key].limit_tripped()
            if tripped and now - self.runs[key].at <= t.recent_s:
                found.append(Alert("error", f"run {key}", f"limit tripped: {_short(tripped)}"))
        return sorted(found, key=lambda a: a.severity != "error")

    def condition(self, device: Device, now: float) -> str:
        """ "online", "silent" (online, but no data for longer than the threshold), "offline", "unknown"."""
        if device.state == "offline":
            return "offline"
        heard = device.state == "online" or device.last_data_at is not None
        if heard and device.quiet_for(now) > self.thresholds.silent_s:
            return "silent"
        return device.state

    def _device_alerts(self, device: Device, now: float) -> list[Alert]:
        t = self.thresholds
        found: list[Alert] = []

        def add(severity: str, text: str) -> None:
            found.append(Alert(severity, device.key, text))

        if device.state == "offline":
            add(
                "error",
                f"offline {_since(device.state_since, now)}"
                + (f" ({device.reason})" if device.reason else ""),
            )
        elif self.condition(device, now) == "silent":
            heard = "no data" if device.last_data_at is None else "silent"
            add("error", f"{heard} for {duration(device.quiet_for(now))} (threshold {t.silent_s:g} s)")
        missing, since = device.seqs.missing_longer_than(now, t.gap_grace_s)
        if missing:
            add("error", f"sequence gap: {missing} samples missing since {ago(since, now)}")
        growth = _spool_growth(device.spool, now, t.spool_growth_s)
        if growth is not None:
            add("warning", f"spool grew from {growth[0]:g} to {growth[1]:g} samples since {growth[2]}")
        age = device.gauges.get("spool_oldest_age_s")
        if device.state == "online" and isinstance(age, int | float) and age > t.backlog_age_s:
            add("warning", f"backlog: oldest unconfirmed sample {duration(age)} old")
        if device.last_error and device.state == "online":
            add("warning", f"last error: {_short(device.last_error)}")
        result, result_at = device.last_result, device.last_result_at
        if (
            result
            and result.get("outcome") == "failed"
            and result_at is not None
            and now - result_at <= t.recent_s
        ):
            add(
                "warning", f"command {result.get('command', '?')} failed: {_short(str(result.get('reason')))}"
            )
        return found

    def _bridge_alerts(self, bridge: Bridge, now: float) -> list[Alert]:
        found = []
        subject = f"bridge {bridge.id}"
        if bridge.state == "offline":
            found.append(Alert("error", subject, f"offline {_since(bridge.state_since, now)}"))
        lag = bridge.lag.median_max(now)
        limit = self.thresholds.lag_s
        if lag is not None and max(lag) > limit:
            text = f"lag to storage median {lag[0]:.1f} s, max {lag[1]:.1f} s (over {limit:g} s)"
            found.append(Alert("warning", subject, text))
        if bridge.last_error and bridge.state == "online":
            found.append(Alert("warning", subject, f"last error: {_short(bridge.last_error)}"))
        return found


# --- helpers -----------------------------------------------------------------------------------


def _intake_alerts(intake: IntakeStats, now: float) -> list[Alert]:
    found = []
    if not intake.connected:
        found.append(Alert("error", "monitor", f"not connected to the broker {_since(intake.since, now)}"))
    if intake.oldest_s > BEHIND_S:
        found.append(
            Alert(
                "error",
                "monitor",
                f"falling behind: {intake.queued} messages waiting, oldest {duration(intake.oldest_s)}",
            )
        )
    if intake.dropped:
        found.append(
            Alert("error", "monitor", f"fell behind: dropped {intake.dropped} messages (queue full)")
        )
    return found


def decode_data(topic: str, payload: bytes) -> tuple[Topic, dict[str, Any]]:
    """A data message and its topic, checked as the model checks them; InvalidMessage (or
    TopicError) says why not."""
    where = Topic.parse(topic)
    if where.kind != "data":
        raise InvalidMessage(f"topic {topic!r} is not a data topic")
    message = _decode(payload, DATA_SCHEMA)
    _same_source(message, where)
    return where, message


def _decode(payload: bytes, schema: str) -> dict[str, Any]:
    """The validated message. A large invalid one is refused without searching for why (bounded time)."""
    if len(payload) <= EXPLAIN_LIMIT:
        return decode(payload, schema)
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidMessage(f"not JSON ({len(payload)} bytes): {type(exc).__name__}") from None
    if not isinstance(message, dict) or message.get("schema") != schema or not is_valid_fast(message, schema):
        raise InvalidMessage(f"not a valid {schema} ({len(payload)} bytes; too large to search for why)")
    return message


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidMessage(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise InvalidMessage(f"a JSON {type(message).__name__}, not an object")
    return message


def _same_source(message: dict[str, Any], where: Topic) -> None:
    source = message["source"]
    if (source["site"], source["node"], source["device"]) != (where.site, where.node, where.device):
        raise InvalidMessage(
            f"source {source['site']}/{source['node']}/{source['device']} does not match the topic"
        )


def _bridge_id(consumer: str) -> str:
    return consumer.removeprefix(BRIDGE_ROOT + "/")


def _spool_growth(
    history: deque[tuple[float, float]], now: float, window_s: float
) -> tuple[float, float, str] | None:
    """(from, to, since) if the spool depth only grew over the last ``window_s`` and was still
    rising in its second half: a depth that rose once and stays level (a streaming device's batch
    in flight, always about one read deep) is not a growing spool."""
    recent = [(at, depth) for at, depth in history if now - at <= window_s * 2]
    if len(recent) < 3 or recent[-1][0] - recent[0][0] < window_s:
        return None
    # the longest tail of reports without a decrease, which must span the window
    start = len(recent) - 1
    while start > 0 and recent[start - 1][1] <= recent[start][1]:
        start -= 1
    first_at, first_depth = recent[start]
    last_depth = recent[-1][1]
    if recent[-1][0] - first_at < window_s or last_depth <= first_depth:
        return None
    half_way = recent[-1][0] - window_s / 2
    if next(depth for at, depth in recent[start:] if at >= half_way) >= last_depth:
        return None
    return first_depth, last_depth, ago(first_at, now)


def _short(text: str, limit: int = REASON_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def ago(at: float | None, now: float) -> str:
    return "?" if at is None else f"{duration(now - at)} ago"


def _since(at: float | None, now: float) -> str:
    return "since before this monitor started" if at is None else f"for {duration(now - at)}"
