"""The lab's live view: what each device sends, what the bridge stores, what went wrong.

It listens to the broker like any other consumer (data, status, dead letters, the bridge's
status) and asks the database for what it holds, so what it shows is what really arrived.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from soclab.wire import Topic

# What the view shows of each kind of instrument, in this order.
HEADLINE = {
    "mppt": ("bat_v", "bat_a", "soc_pct", "chg_state"),
    "eload": ("bat_v", "bat_a", "ah"),
    "labjack": ("bat_v", "bat_a"),
}
BRIDGE_COUNTERS = (
    "messages_received",
    "points_written",
    "messages_invalid",
    "write_errors",
    "write_retries",
    "confirmations_published",
)
ERROR_WORDS = ("error", "lost", "losses", "dropped", "rejected", "invalid", "timeout", "fail")


@dataclass
class DeviceView:
    kind: str = "?"
    arrivals: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))
    samples: int = 0
    last_seq: int | None = None
    seq_gaps: int = 0
    last_values: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    dead_letters: int = 0

    def rate(self, now: float, window_s: float = 5.0) -> float:
        recent = sum(n for t, n in self.arrivals if now - t <= window_s)
        return recent / window_s


class LiveView:
    def __init__(
        self,
        host: str,
        port: int,
        stored_counts: Callable[[], dict[str, int]] | None = None,
        bridge_status_topic: str = "soclab-bridge/+/status",
    ) -> None:
        self.devices: dict[str, DeviceView] = defaultdict(DeviceView)
        self.bridge: dict[str, Any] = {}
        self.stored: dict[str, int] = {}
        self.stored_error: str | None = None
        self._stored_counts = stored_counts
        self._lock = threading.Lock()
        self._bridge_topic = bridge_status_topic
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"soclab-view-{time.time_ns()}")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(host, port)

    def start(self) -> None:
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        for kind in ("data", "status", "deadletter"):
            client.subscribe(Topic.subscription(kind), qos=0)
        client.subscribe(self._bridge_topic, qos=0)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = None
        if mqtt.topic_matches_sub(self._bridge_topic, msg.topic):
            with self._lock:
                self.bridge = body if isinstance(body, dict) else {}
            return
        try:
            topic = Topic.parse(msg.topic)
        except ValueError:
            return
        key = f"{topic.node}/{topic.device}"
        with self._lock:
            dev = self.devices[key]
            if topic.kind == "deadletter":
                dev.dead_letters += 1
            elif topic.kind == "status" and isinstance(body, dict):
                dev.status = body
                dev.kind = body.get("source", {}).get("kind", dev.kind)
            elif topic.kind == "data" and isinstance(body, dict):
                self._count(dev, body)

    @staticmethod
    def _count(dev: DeviceView, body: dict[str, Any]) -> None:
        samples = body.get("samples") or []
        dev.kind = body.get("source", {}).get("kind", dev.kind)
        dev.arrivals.append((time.monotonic(), len(samples)))
        dev.samples += len(samples)
        for sample in samples:
            seq = sample.get("seq")
            if isinstance(seq, int):
                if dev.last_seq is not None and seq > dev.last_seq + 1:
                    dev.seq_gaps += 1
                dev.last_seq = max(seq, dev.last_seq or 0)
        if samples:
            dev.last_values = samples[-1].get("values", {})

    def refresh_stored(self) -> None:
        if self._stored_counts is None:
            return
        try:
            stored = self._stored_counts()
            error = None
        except Exception as exc:  # the view reports a database problem, it does not die of it
            stored, error = self.stored, f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.stored, self.stored_error = stored, error

    def render(self) -> str:
        now = time.monotonic()
        lines = [
            f"soclab lab - {time.strftime('%Y-%m-%d %H:%M:%S')}   (Ctrl-C stops everything)",
            "",
            f"{'device':<18}{'state':<9}{'samples/s':>10}{'received':>10}{'seq':>9}{'gaps':>6}"
            f"{'spool':>7}{'backlog':>8}  last values",
        ]
        with self._lock:
            for key in sorted(self.devices):
                dev = self.devices[key]
                st = dev.status
                gauges = st.get("gauges") or {}
                shown = [
                    f"{name}={_fmt(dev.last_values[name])}"
                    for name in HEADLINE.get(dev.kind, ())
                    if name in dev.last_values
                ]
                lines.append(
                    f"{key:<18}{st.get('state', '?'):<9}{dev.rate(now):>10.1f}{dev.samples:>10}"
                    f"{dev.last_seq if dev.last_seq is not None else '-':>9}{dev.seq_gaps:>6}"
                    f"{_fmt(gauges.get('spool_depth', '-')):>7}{_fmt(gauges.get('backlog_samples', '-')):>8}"
                    f"  {' '.join(shown)}"
                )
            lines.append("")
            stored = "  ".join(f"{m}={n}" for m, n in sorted(self.stored.items())) or "-"
            problem = f"   ! {self.stored_error}" if self.stored_error else ""
            lines.append(f"stored in InfluxDB: {stored}{problem}")
            b = self.bridge.get("counters", self.bridge)
            lines.append("bridge: " + "  ".join(f"{k}={b.get(k, '-')}" for k in BRIDGE_COUNTERS))
            errors = []
            for key in sorted(self.devices):
                dev = self.devices[key]
                counters = dev.status.get("counters") or {}
                bad = {k: v for k, v in counters.items() if v and _is_error_counter(k)}
                if dev.dead_letters:
                    bad["dead_letters"] = dev.dead_letters
                if bad or dev.status.get("last_error"):
                    detail = " ".join(f"{k}={v}" for k, v in sorted(bad.items()))
                    errors.append(f"  {key}: {detail} {dev.status.get('last_error') or ''}".rstrip())
            lines.append("errors:" + (" none" if not errors else ""))
            lines.extend(errors)
        return "\n".join(lines)

    def show(self, stream: Any = sys.stdout) -> None:
        text = self.render()
        if stream.isatty():
            stream.write("\x1b[H\x1b[2J" + text + "\n")
        else:
            stream.write(text + "\n\n")
        stream.flush()


def _is_error_counter(name: str) -> bool:
    return any(word in name for word in ERROR_WORDS)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.3g}"
    return str(value)
