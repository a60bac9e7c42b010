"""A misbehaving client's flood, and a well-behaved device that measures what it does to the others.

``flood()`` publishes as fast as Mosquitto's own C client can (``mosquitto_pub -l``, one message
per line of its input, TLS and credentials like a device), so the generator is not what limits
the flood. ``LagProbe`` is a device that behaves: one-sample ``soclab.data/1`` messages at a
steady rate (QoS 1), each stamped when it is sent, the bridge's storage confirmations on its
``.../stored`` topic, and the publishers' rule for what a broker lost on the way (a sample still
unconfirmed ``resend_grace_s`` after a later one was confirmed is sent again, the same sample).
A sample's lag is from its time stamp to its confirmation: what a device, and a person watching
it, waits for. Benchmarks and the bad-input campaign use both.
"""

from __future__ import annotations

import json
import queue
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from soclab.wire import DATA_SCHEMA, STORED_SCHEMA, InvalidMessage, decode
from soclab.wire.mqtt import MqttSettings, make_client


def data_lines(
    site: str, node: str, device: str, kind: str, count: int, *, seq_start: int = 0
) -> Iterator[bytes]:
    """``count`` valid one-sample data messages of one device, one per line, stamped now."""
    source = json.dumps({"site": site, "node": node, "device": device, "kind": kind})
    head = f'{{"schema":"{DATA_SCHEMA}","source":{source},"samples":[{{"seq":'.encode()
    t0 = time.time_ns()
    for seq in range(seq_start, seq_start + count):
        yield head + f'{seq},"t_ns":{t0 + seq * 1000},"values":{{"bat_v":12.5}}}}]}}\n'.encode()


@dataclass(frozen=True)
class FloodResult:
    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def flood(
    settings: MqttSettings, topic: str, lines: Iterator[bytes], *, qos: int = 0, timeout_s: float = 300.0
) -> FloodResult:
    """Publish every line as a message on ``topic`` with ``mosquitto_pub -l``; bounded by ``timeout_s``."""
    command = [
        "mosquitto_pub",
        "-h",
        settings.host,
        "-p",
        str(settings.port),
        "-t",
        topic,
        "-q",
        str(qos),
        "-l",
    ]
    command += ["-i", f"flood-{time.monotonic_ns()}"]
    if settings.username:
        command += ["-u", settings.username, "-P", settings.password]
    if settings.tls_ca:
        command += ["--cafile", settings.tls_ca]
    if settings.tls_cert:
        command += ["--cert", settings.tls_cert, "--key", settings.tls_key]
    count = 0
    start = time.monotonic()
    with subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdin is not None
        try:
            for line in lines:
                process.stdin.write(line)
                count += 1
            process.stdin.close()
            process.wait(timeout=max(1.0, timeout_s - (time.monotonic() - start)))
        except BrokenPipeError:
            pass  # it ended early: the error below says why
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        errors = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"mosquitto_pub exited with {process.returncode}: {errors.strip()[:500]}")
    return FloodResult(count, time.monotonic() - start)


@dataclass
class Lags:
    """Seconds from sample time to confirmation, of the samples sent in one period."""

    values: list[float] = field(default_factory=list)
    unconfirmed: int = 0

    def quantile(self, q: float) -> float:
        if not self.values:
            return float("nan")
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        if not self.values:
            return f"no sample confirmed ({self.unconfirmed} unconfirmed)"
        p50, p99 = self.quantile(0.5), self.quantile(0.99)
        return (
            f"p50 {p50:6.2f} s  p99 {p99:6.2f} s  max {max(self.values):6.2f} s  "
            f"mean {statistics.fmean(self.values):6.2f} s  ({len(self.values)} samples, "
            f"{self.unconfirmed} unconfirmed)"
        )


class LagProbe:
    """A device sending one sample every ``1 / rate_hz`` s and timing the bridge's confirmations.

    ``with LagProbe(settings, site, node, device, rate_hz=10) as probe:`` sends until the block
    ends; ``probe.lags(start, end)`` are the lags of the samples sent in that monotonic period.
    """

    def __init__(
        self,
        settings: MqttSettings,
        site: str,
        node: str,
        device: str,
        *,
        kind: str = "mppt",
        rate_hz: float = 10.0,
        resend_grace_s: float = 10.0,
    ) -> None:
        self.topic = f"soclab/{site}/{node}/{device}/data"
        self.stored_topic = f"soclab/{site}/{node}/{device}/stored"
        self.source = {"site": site, "node": node, "device": device, "kind": kind}
        self.period_s = 1.0 / rate_hz
        self._sent: dict[int, tuple[float, int]] = {}  # seq -> (monotonic, t_ns)
        self._confirmed: dict[int, int] = {}  # seq -> confirmation time (ns)
        self._overtaken: dict[int, float] = {}  # unconfirmed seq -> when it was overtaken or resent
        self.resend_grace_s = resend_grace_s
        self.resent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed: queue.Queue[bool] = queue.Queue()
        self.client = make_client(settings, f"probe-{device}", clean_session=True)
        self.client.on_connect = lambda c, u, f, reason, p: c.subscribe(self.stored_topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, reasons, p: self._subscribed.put(True)
        self.client.on_message = self._on_message
        self._thread = threading.Thread(target=self._run, name=f"probe-{device}", daemon=True)
        self.settings = settings

    def __enter__(self) -> LagProbe:
        self.client.connect(self.settings.host, self.settings.port, keepalive=30)
        self.client.loop_start()
        self._subscribed.get(timeout=15)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def sent(self) -> int:
        with self._lock:
            return len(self._sent)

    @property
    def confirmed(self) -> int:
        with self._lock:
            return len(self._confirmed)

    def wait_confirmed(self, timeout_s: float) -> bool:
        """True once every sample sent so far is confirmed (bounded by ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if set(self._sent) <= set(self._confirmed):
                    return True
            self.resend_lost()
            time.sleep(0.05)
        return False

    def lags(self, start: float = float("-inf"), end: float = float("inf")) -> Lags:
        result = Lags()
        with self._lock:
            for seq, (sent_at, t_ns) in self._sent.items():
                if start <= sent_at < end:
                    if seq in self._confirmed:
                        result.values.append((self._confirmed[seq] - t_ns) / 1e9)
                    else:
                        result.unconfirmed += 1
        return result

    def _run(self) -> None:
        seq = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            t_ns = time.time_ns()
            with self._lock:
                self._sent[seq] = (time.monotonic(), t_ns)
            self._publish(seq, t_ns)
            seq += 1
            self.resend_lost()
            next_at += self.period_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def resend_lost(self) -> None:
        """Send again the samples overtaken by a confirmed later one ``resend_grace_s`` ago."""
        now = time.monotonic()
        with self._lock:
            due = [s for s, at in self._overtaken.items() if now - at >= self.resend_grace_s]
            for seq in due:
                self._overtaken[seq] = now
        for seq in due:
            self._publish(seq, self._sent[seq][1])
            self.resent += 1

    def _publish(self, seq: int, t_ns: int) -> None:
        message = {
            "schema": DATA_SCHEMA,
            "source": self.source,
            "samples": [{"seq": seq, "t_ns": t_ns, "values": {"bat_v": 12.5}}],
        }
        self.client.publish(self.topic, json.dumps(message, separators=(",", ":")), qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        now = time.time_ns()
        try:
            stored = decode(bytes(message.payload), STORED_SCHEMA)
        except (InvalidMessage, ValueError):
            return
        with self._lock:
            for first, last in stored.get("stored", []):
                for seq in range(first, min(last, first + 100_000) + 1):
                    if seq in self._sent:
                        self._confirmed.setdefault(seq, now)
                        self._overtaken.pop(seq, None)
            newest = max(self._confirmed, default=-1)
            for seq in self._sent.keys() - self._confirmed.keys() - self._overtaken.keys():
                if seq < newest:
                    self._overtaken[seq] = time.monotonic()
