"""Load generators for the benchmarks, built not to be the bottleneck they measure.

Two ways to put QoS 1 messages on a broker, both reporting what they achieved (``Result``), so a
benchmark prints the generator's own ceiling beside the pipeline's and a reader can tell which
one limited:

- ``mosquitto_pub(settings, streams)``: one ``mosquitto_pub -l`` process (C, libmosquitto, the
  Debian package ``mosquitto-clients``) per topic, each fed its payloads one per line on stdin,
  all at once. Tens of thousands of messages per second per process; for a few topics at full
  speed (``bench/ingest.py``). Payloads must not contain a newline (compact JSON has none).
- ``paho_workers(settings, source, workers=N)``: N processes, each with its own paho client,
  each publishing what ``source(worker, workers)`` yields: ``(due_s, topic, payload)``, where
  ``due_s`` is seconds after the common start (None: at once). The source runs in the worker,
  so it can stamp ``t_ns`` when a message is due and hold a share of many devices, each on its
  own topic, without a process per device (``bench/fleet*``). paho costs about 60 µs of CPU per
  QoS 1 message, so give it workers: one per ~10,000 messages/s, and say how many the machine has.

Both take the broker's address and credentials as ``soclab.wire.mqtt.MqttSettings`` (TLS and
passwords the project's one way). ``ceiling()`` runs a generator against topics nobody
subscribes to: what the generator and the broker's intake can do without the pipeline.

    from loadgen import fleet, mosquitto_pub, paho_workers   # bench/ is on sys.path for scripts
    result = mosquitto_pub(settings, {"soclab/bench/pi-01/e2e/data": payloads})
    result = paho_workers(settings, fleet("fleet", devices=10_000, hz=1, seconds=300), workers=2)
    print(result, result.rate)
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from soclab.wire.mqtt import MqttSettings, make_client

Source = Callable[[int, int], Iterator[tuple[float | None, str, bytes]]]


@dataclass(frozen=True)
class Result:
    """What a generator did: messages acknowledged by the broker, wall time, its own CPU time."""

    messages: int
    seconds: float
    cpu_s: float
    processes: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return (
            f"{self.messages} messages in {self.seconds:.2f} s = {self.rate:,.0f}/s "
            f"({self.processes} processes, {self.cpu_s:.1f} s CPU)"
        )


# --- mosquitto_pub -----------------------------------------------------------------------------


def mosquitto_pub(
    settings: MqttSettings, streams: Mapping[str, Sequence[bytes]], *, qos: int = 1, max_inflight: int = 100
) -> Result:
    """Publish each topic's payloads in order, one ``mosquitto_pub -l`` per topic, all at once."""
    binary = shutil.which("mosquitto_pub")
    if binary is None:
        raise RuntimeError("mosquitto_pub not found: install the Debian package mosquitto-clients")
    with tempfile.TemporaryDirectory(prefix="soclab-loadgen-") as tmp:
        files = []
        for index, payloads in enumerate(streams.values()):
            path = Path(tmp) / f"{index}.lines"
            with path.open("wb") as f:
                for payload in payloads:
                    if b"\n" in payload:
                        raise ValueError("mosquitto_pub -l sends a message per line: a payload has a newline")
                    f.write(payload + b"\n")
            files.append(path)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        processes = []
        for index, (topic, path) in enumerate(zip(streams, files, strict=True)):
            command = [binary, *_arguments(settings), "-t", topic, "-q", str(qos), "-l"]
            command += ["-M", str(max_inflight), "-i", f"soclab-loadgen-{os.getpid()}-{index}"]
            with path.open("rb") as stdin:
                processes.append(subprocess.Popen(command, stdin=stdin, stderr=subprocess.PIPE))
        failures = []
        for process in processes:
            _, stderr = process.communicate()
            if process.returncode != 0:
                failures.append(stderr.decode(errors="replace").strip())
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if failures:
        raise RuntimeError(f"mosquitto_pub failed: {failures[0]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Result(sum(len(p) for p in streams.values()), seconds, cpu, len(processes))


def _arguments(settings: MqttSettings) -> list[str]:
    args = ["-h", settings.host, "-p", str(settings.port), "-V", "mqttv311"]
    if settings.username:
        args += ["-u", settings.username]
    if settings.password:
        args += ["-P", settings.password]  # visible in ps on this machine: benchmarks only
    if settings.tls_ca:
        args += ["--cafile", settings.tls_ca]
    if settings.tls_cert:
        args += ["--cert", settings.tls_cert, "--key", settings.tls_key]
    return args


# --- paho in several processes ---------------------------------------------------------------


def paho_workers(
    settings: MqttSettings, source: Source, *, workers: int = 2, qos: int = 1, max_inflight: int = 20
) -> Result:
    """Publish what ``source`` yields in ``workers`` processes; returns once the broker has it all.

    ``max_inflight`` 20: paho's cost per acknowledgement grows with its window (it walks it).
    """
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[tuple[int, int, float, str]] = context.Queue()
    start = context.Event()
    processes = [
        context.Process(
            target=_worker,
            args=(settings, source, index, workers, qos, max_inflight, start, results),
            daemon=True,
        )
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    time.sleep(0.5)  # each worker connects before the clock starts
    began = time.perf_counter()
    start.set()
    sent = 0
    cpu = 0.0
    errors = []
    for _ in processes:
        try:
            count, _, worker_cpu, error = results.get(timeout=3600)
        except queue.Empty:
            raise RuntimeError("a paho worker did not finish within an hour") from None
        sent += count
        cpu += worker_cpu
        if error:
            errors.append(error)
    seconds = time.perf_counter() - began
    for process in processes:
        process.join(timeout=10)
    if errors:
        raise RuntimeError(f"paho worker failed: {errors[0]}")
    return Result(sent, seconds, cpu, workers)


def _worker(
    settings: MqttSettings,
    source: Source,
    index: int,
    workers: int,
    qos: int,
    max_inflight: int,
    start: multiprocessing.synchronize.Event,
    results: multiprocessing.Queue[tuple[int, int, float, str]],
) -> None:
    sent = 0
    error = ""
    acked = [0]
    client = make_client(settings, f"soclab-loadgen-{os.getpid()}-{index}")
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)
    client.on_publish = lambda c, userdata, mid, reason, props: acked.__setitem__(0, acked[0] + 1)
    try:
        client.connect(settings.host, settings.port)
        client.loop_start()
        start.wait()
        began = time.monotonic()
        for due_s, topic, payload in source(index, workers):
            if due_s is not None:
                pause = began + due_s - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            client.publish(topic, payload, qos=qos)
            sent += 1
        deadline = time.monotonic() + 600
        while acked[0] < sent and time.monotonic() < deadline:
            time.sleep(0.01)
        if acked[0] < sent:
            error = f"{sent - acked[0]} of {sent} messages not acknowledged by the broker in 600 s"
        client.disconnect()
        client.loop_stop()
    except Exception as exc:  # reported to the parent, which raises
        error = f"{type(exc).__name__}: {exc}"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results.put((sent, index, usage.ru_utime + usage.ru_stime, error))


# --- a fleet of devices ------------------------------------------------------------------------


def fleet(
    site: str, devices: int, hz: float, seconds: float, *, kind: str = "mppt", node: str = "fleet"
) -> Source:
    """A ``paho_workers`` source: ``devices`` devices (``soclab/<site>/<node>/d<n>/data``), each
    sending one sample every ``1/hz`` seconds for ``seconds``, its sequence numbers from 0, its
    ``t_ns`` stamped when the message is due (so lag from acquisition to storage is measurable).
    The devices are spread over the period (no thundering herd) and over the workers."""
    period = 1.0 / hz

    def source(worker: int, workers: int) -> Iterator[tuple[float | None, str, bytes]]:
        mine = range(worker, devices, workers)
        topics = {d: f"soclab/{site}/{node}/d{d}/data".encode() for d in mine}
        wall0 = time.time_ns()
        for tick in range(int(seconds * hz)):
            for d in mine:
                due = tick * period + period * d / devices
                t_ns = wall0 + int(due * 1e9)
                payload = (
                    b'{"schema":"soclab.data/1","source":{"site":"%s","node":"%s","device":"d%d","kind":"%s"},'
                    b'"samples":[{"seq":%d,"t_ns":%d,"values":{"bat_v":12.5}}]}'
                    % (site.encode(), node.encode(), d, kind.encode(), tick, t_ns)
                )
                yield due, topics[d].decode(), payload

    return source


# --- the generator alone -----------------------------------------------------------------------


def ceiling(run: Callable[[Callable[[str], str]], Result]) -> Result:
    """``run(topic_of)`` against topics nobody subscribes to: ``topic_of`` maps each real topic to
    one below ``loadgen-ceiling/``. What the generator and the broker's intake manage alone."""
    return run(lambda topic: f"loadgen-ceiling/{topic}")
