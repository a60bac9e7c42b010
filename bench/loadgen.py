"""Load generators for the benchmarks, built not to be the bottleneck they measure.

Two ways to put QoS 1 messages on a broker, both in C (libmosquitto, Debian's
``mosquitto-clients`` and ``libmosquitto1``), both reporting what they achieved (``Result``), so
a benchmark prints the generator's own ceiling beside the pipeline's and a reader can tell which
one limited:

- ``mosquitto_pub(settings, streams)``: one ``mosquitto_pub -l`` process per topic, each fed its
  payloads one per line on stdin, all at once. Tens of thousands of messages per second per
  process; for a few topics at full speed (``bench/ingest.py``). Payloads must not contain a
  newline (compact JSON has none).
- ``run_swarm(plan)``: a fleet of devices in one worker process (``bench/fleet.py`` starts a
  few): each device its own MQTT connection, topic, sequence numbers and storage confirmations,
  at a fixed rate, all driven from one ``epoll`` loop through libmosquitto's own read, write and
  keepalive calls (``ctypes``). About 20 µs of CPU per sample published and acknowledged, where
  paho took 90 (measured here: 2,000 devices x 2 Hz, publishing only).

Both take the broker's address and credentials as ``soclab.wire.mqtt.MqttSettings`` (TLS and
passwords the project's one way). ``ceiling()`` runs ``mosquitto_pub`` against topics nobody
subscribes to, ``swarm_ceiling()`` the fleet: what the generator and the broker's intake can do
without the pipeline.

    from loadgen import mosquitto_pub, run_swarm, SwarmPlan   # bench/ is on sys.path for scripts
    result = mosquitto_pub(settings, {"soclab/bench/pi-01/e2e/data": payloads})
    print(result, result.rate)
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import resource
import select
import shutil
import subprocess
import tempfile
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from soclab.wire.mqtt import MqttSettings


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


# --- a fleet of devices: libmosquitto through ctypes ---------------------------------------------
#
# paho costs about 90 µs of CPU per published QoS 1 message (and as much again per confirmation
# received): a fleet of 10,000 devices at 1 Hz would take the generator 1.5 cores of the 2 it
# shares with what it measures. libmosquitto (Debian's libmosquitto1, mosquitto_pub's library)
# does the MQTT in C; Python only stamps and formats each sample and reads each confirmation.


class _Message(ctypes.Structure):
    _fields_ = [
        ("mid", ctypes.c_int),
        ("topic", ctypes.c_char_p),
        ("payload", ctypes.c_void_p),
        ("payloadlen", ctypes.c_int),
        ("qos", ctypes.c_int),
        ("retain", ctypes.c_bool),
    ]


_ON_CONNECT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
_ON_DISCONNECT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
_ON_SUBSCRIBE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)
)
_ON_PUBLISH = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
_ON_MESSAGE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(_Message))
_OPT_PROTOCOL_VERSION, _MQTT_V311 = 1, 4
_FDS_PER_DEVICE = 3  # libmosquitto opens a socket pair beside each connection


def _libmosquitto() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libmosquitto.so.1")
    except OSError:
        raise RuntimeError("libmosquitto not found: install the Debian package libmosquitto1") from None
    p, i, s, b = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_bool
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "mosquitto_lib_init": (i, []),
        "mosquitto_new": (p, [s, b, p]),
        "mosquitto_int_option": (i, [p, i, i]),
        "mosquitto_username_pw_set": (i, [p, s, s]),
        "mosquitto_tls_set": (i, [p, s, s, s, s, p]),
        "mosquitto_connect": (i, [p, s, i, i]),
        "mosquitto_disconnect": (i, [p]),
        "mosquitto_socket": (i, [p]),
        "mosquitto_loop_read": (i, [p, i]),
        "mosquitto_loop_write": (i, [p, i]),
        "mosquitto_loop_misc": (i, [p]),
        "mosquitto_want_write": (b, [p]),
        "mosquitto_publish": (i, [p, p, s, i, s, i, b]),
        "mosquitto_subscribe": (i, [p, p, s, i]),
        "mosquitto_connect_callback_set": (None, [p, _ON_CONNECT]),
        "mosquitto_disconnect_callback_set": (None, [p, _ON_DISCONNECT]),
        "mosquitto_subscribe_callback_set": (None, [p, _ON_SUBSCRIBE]),
        "mosquitto_publish_callback_set": (None, [p, _ON_PUBLISH]),
        "mosquitto_message_callback_set": (None, [p, _ON_MESSAGE]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    lib.mosquitto_lib_init()
    return lib


@dataclass
class SwarmPlan:
    """What one worker process simulates: devices ``first .. first+count-1`` of the fleet."""

    settings: MqttSettings
    first: int
    count: int
    sites: int  # device i belongs to site <prefix><i % sites>
    rate_hz: float  # samples per second per device; 0: as fast as the generator can (its ceiling)
    duration_s: float
    drain_s: float  # after the last sample, how long to wait for the last confirmations
    prefix: str = "fleet"  # site names; topics below soclab/ (or loadgen-ceiling/soclab/ when unread)
    confirmations: bool = True  # subscribe to .../stored and wait for them


@dataclass
class SwarmResult:
    published: array = field(default_factory=lambda: array("q"))  # samples per device
    confirmed: array = field(default_factory=lambda: array("q"))
    acked: int = 0  # PUBACKs from the broker
    dead_lettered: int = 0
    lag_ns: array = field(default_factory=lambda: array("q"))  # one per confirmed sample
    acquired_ns: array = field(default_factory=lambda: array("q"))  # its acquisition time
    connect_failures: int = 0
    disconnects: int = 0
    invalid_confirmations: int = 0
    cpu_s: float = 0.0  # CPU seconds while sampling
    seconds: float = 0.0  # wall time of the sampling


def identity(index: int, sites: int, prefix: str = "fleet") -> tuple[str, str, str]:
    """site, node, device of fleet device ``index``: 100 devices per node, nodes per site."""
    return f"{prefix}{index % sites}", f"node{index // 100}", f"dev{index}"


class _Confirmation(msgspec.Struct):
    t_ns: int
    stored: list[tuple[int, int]] = []
    dead_lettered: list[tuple[int, int]] = []


def run_swarm(plan: SwarmPlan, ready: Callable[[], float]) -> SwarmResult:
    """One worker: ``plan.count`` devices, each what a slow instrument's publisher is on the wire:
    its own MQTT connection (client id ``fleet-<site>-<node>-<device>``, persistent session),
    topic ``soclab/<site>/<node>/<device>/data``, one ``soclab.data/1`` sample per message with
    its own sequence numbers from 0, QoS 1, and (with ``confirmations``) a subscription to its
    own ``.../stored``. A sample's lag is the confirmation's ``t_ns`` (the bridge's clock, after
    the write) minus the sample's (its acquisition): both clocks are this machine's. Devices are
    spread evenly over the period, as a real fleet's are. Once every device is connected (and
    subscribed), ``ready()`` returns the wall-clock time at which to start sampling (``Swarm``
    gives every worker the same)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if plan.count * _FDS_PER_DEVICE + 100 > hard:
        files = plan.count * _FDS_PER_DEVICE
        raise RuntimeError(f"{plan.count} devices need {files} files, more than {hard}: use more workers")
    lib = _libmosquitto()
    r = SwarmResult(published=array("q", bytes(8 * plan.count)), confirmed=array("q", bytes(8 * plan.count)))
    m = plan.settings
    names = [identity(plan.first + k, plan.sites, plan.prefix) for k in range(plan.count)]
    root = "soclab" if plan.confirmations else "loadgen-ceiling/soclab"
    topics = [f"{root}/{site}/{node}/{device}/data".encode() for site, node, device in names]
    prefixes = [
        b'{"schema":"soclab.data/1","source":{"site":"%s","node":"%s","device":"%s","kind":"mppt"},'
        b'"samples":[{"seq":' % (site.encode(), node.encode(), device.encode())
        for site, node, device in names
    ]
    pending: list[dict[int, int]] = [{} for _ in range(plan.count)]  # seq -> t_ns until confirmed
    seqs = [0] * plan.count
    connected = [0]
    subscribed = [0]
    decode = msgspec.json.Decoder(_Confirmation).decode

    def on_connect(client: int, obj: int, rc: int) -> None:
        if rc:
            r.connect_failures += 1
            return
        connected[0] += 1
        if plan.confirmations:
            site, node, device = names[obj - 1]
            lib.mosquitto_subscribe(client, None, f"soclab/{site}/{node}/{device}/stored".encode(), 1)

    def on_disconnect(client: int, obj: int, rc: int) -> None:
        if rc:  # not asked for
            r.disconnects += 1

    def on_subscribe(client: int, obj: int, mid: int, count: int, granted: Any) -> None:
        subscribed[0] += 1

    def on_publish(client: int, obj: int, mid: int) -> None:
        r.acked += 1

    def on_message(client: int, obj: int, message: Any) -> None:
        k = obj - 1
        c = message.contents
        try:
            confirmation = decode(ctypes.string_at(c.payload, c.payloadlen))
        except msgspec.DecodeError:
            r.invalid_confirmations += 1
            return
        waiting = pending[k]
        for first, last in confirmation.stored:
            for seq in range(first, last + 1):
                t_ns = waiting.pop(seq, None)
                if t_ns is not None:  # a repeated confirmation counts once
                    r.confirmed[k] += 1
                    r.lag_ns.append(confirmation.t_ns - t_ns)
                    r.acquired_ns.append(t_ns)
        for first, last in confirmation.dead_lettered:
            for seq in range(first, last + 1):
                if waiting.pop(seq, None) is not None:
                    r.dead_lettered += 1

    callbacks = (  # kept referenced: libmosquitto holds only the C pointers
        _ON_CONNECT(on_connect),
        _ON_DISCONNECT(on_disconnect),
        _ON_SUBSCRIBE(on_subscribe),
        _ON_PUBLISH(on_publish),
        _ON_MESSAGE(on_message),
    )
    clients: list[int] = []
    poller = select.epoll()
    by_fd: dict[int, int] = {}
    writing: set[int] = set()

    def serve(timeout: float) -> None:
        """Read what came (PUBACKs, confirmations), write what waits; at most ``timeout`` s."""
        for fd, events in poller.poll(timeout):
            k = by_fd[fd]
            client = clients[k]
            readable = events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR)
            if readable and lib.mosquitto_loop_read(client, 16) != 0:
                poller.unregister(fd)  # the connection is gone (on_disconnect counted it)
                del by_fd[fd]
                continue
            if events & select.EPOLLOUT or lib.mosquitto_want_write(client):
                lib.mosquitto_loop_write(client, 16)
                _want_write(fd, client)

    def _want_write(fd: int, client: int) -> None:
        wants = lib.mosquitto_want_write(client)
        if wants != (fd in writing):
            poller.modify(fd, select.EPOLLIN | (select.EPOLLOUT if wants else 0))
            (writing.add if wants else writing.discard)(fd)

    for k, (site, node, device) in enumerate(names):
        client = lib.mosquitto_new(f"fleet-{site}-{node}-{device}".encode(), False, k + 1)
        lib.mosquitto_int_option(client, _OPT_PROTOCOL_VERSION, _MQTT_V311)
        if m.username:
            lib.mosquitto_username_pw_set(client, m.username.encode(), (m.password or "").encode() or None)
        if m.tls_ca:
            cert, key = (m.tls_cert.encode(), m.tls_key.encode()) if m.tls_cert else (None, None)
            lib.mosquitto_tls_set(client, m.tls_ca.encode(), None, cert, key, None)
        lib.mosquitto_connect_callback_set(client, callbacks[0])
        lib.mosquitto_disconnect_callback_set(client, callbacks[1])
        lib.mosquitto_subscribe_callback_set(client, callbacks[2])
        lib.mosquitto_publish_callback_set(client, callbacks[3])
        lib.mosquitto_message_callback_set(client, callbacks[4])
        clients.append(client)
        if lib.mosquitto_connect(client, m.host.encode(), m.port, 60) != 0:
            r.connect_failures += 1
            continue
        fd = lib.mosquitto_socket(client)
        by_fd[fd] = k
        poller.register(fd, select.EPOLLIN)
        # At most ~100 connections waiting for their CONNACK: a broker's accept queue that
        # overflows drops connection attempts, and a blocking connect then waits seconds.
        while k + 1 - connected[0] - r.connect_failures > 100:
            serve(0.05)

    def keepalive() -> None:
        for client in clients:
            lib.mosquitto_loop_misc(client)

    counted = subscribed if plan.confirmations else connected
    deadline = time.monotonic() + 60 + plan.count / 500
    while counted[0] + r.connect_failures < plan.count and time.monotonic() < deadline:
        serve(0.05)
    if counted[0] < plan.count:
        raise RuntimeError(f"only {counted[0]} of {plan.count} devices connected and subscribed")

    start_at = ready()
    period = 1.0 / plan.rate_hz if plan.rate_hz else 0.0
    offsets = [((plan.first + k) * 0.6180339887) % 1.0 * period for k in range(plan.count)]
    order = sorted(range(plan.count), key=offsets.__getitem__)
    fds = {k: fd for fd, k in by_fd.items()}
    end = start_at + plan.duration_s
    pause = start_at - time.time()
    while pause > 0:
        serve(min(pause, 0.5))
        pause = start_at - time.time()
    cpu_start = _cpu()
    next_misc = time.monotonic() + 5
    tick = 0
    while (base := start_at + tick * period) < end and time.time() < end:
        for n, k in enumerate(order):
            due = base + offsets[k]
            early = due - time.time()
            if early <= 0.002 and n % 32 == 0:
                serve(0)  # behind or on time: still read what came
            while early > 0.002:
                serve(early)
                early = due - time.time()
            if due >= end and period:
                break
            t_ns = time.time_ns()
            seq = seqs[k]
            seqs[k] = seq + 1
            pending[k][seq] = t_ns
            values = b'"values":{"bat_v":12.%02d,"bat_a":-1.0,"soc_pct":80.0}}]}' % (seq % 100)
            payload = prefixes[k] + b'%d,"t_ns":%d,' % (seq, t_ns) + values
            client = clients[k]
            lib.mosquitto_publish(client, None, topics[k], len(payload), payload, 1, False)
            r.published[k] += 1
            if lib.mosquitto_want_write(client) and k in fds:
                _want_write(fds[k], client)
            if not period and time.time() >= end:
                break
        tick += 1
        if time.monotonic() > next_misc:
            keepalive()
            next_misc = time.monotonic() + 5
    r.cpu_s = _cpu() - cpu_start
    r.seconds = time.time() - start_at
    deadline = time.monotonic() + plan.drain_s
    sent = sum(r.published)
    while time.monotonic() < deadline and (r.acked < sent or (plan.confirmations and any(pending))):
        serve(0.2)
        if time.monotonic() > next_misc:
            keepalive()
            next_misc = time.monotonic() + 5
    for client in clients:
        lib.mosquitto_disconnect(client)
        lib.mosquitto_loop_write(client, 1)
    if not plan.confirmations:
        r.lag_ns, r.acquired_ns = array("q"), array("q")
    del callbacks
    return r


class Swarm:
    """``run_swarm`` in one process per plan, started together once every device is connected.

    ``start()`` waits until every worker is ready and returns the common start time (a second
    later); ``results()`` waits for their ``SwarmResult`` (in the plans' order). A worker that
    fails says why, and the other ones are stopped.
    """

    def __init__(self, plans: Sequence[SwarmPlan]) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready: multiprocessing.Queue[tuple[int, str]] = context.Queue()
        self._results: multiprocessing.Queue[tuple[int, SwarmResult | str]] = context.Queue()
        self._go = context.Event()
        self._start_at = context.Value("d", 0.0)
        self._processes = [
            context.Process(
                target=_swarm_worker,
                args=(index, plan, self._ready, self._go, self._start_at, self._results),
                daemon=True,
            )
            for index, plan in enumerate(plans)
        ]
        for process in self._processes:
            process.start()

    def start(self, timeout: float, delay: float = 1.0) -> float:
        for _ in self._processes:
            try:
                _, error = self._ready.get(timeout=timeout)
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"the fleet's workers were not connected after {timeout} s") from None
            if error:
                self.stop()
                raise RuntimeError(f"a fleet worker failed: {error}")
        self._start_at.value = time.time() + delay
        self._go.set()
        return float(self._start_at.value)

    def results(self, timeout: float) -> list[SwarmResult]:
        found: dict[int, SwarmResult] = {}
        for _ in self._processes:
            try:
                index, result = self._results.get(timeout=timeout)
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"the fleet's workers did not finish within {timeout} s") from None
            if isinstance(result, str):
                self.stop()
                raise RuntimeError(f"a fleet worker failed: {result}")
            found[index] = result
        for process in self._processes:
            process.join(timeout=10)
        return [found[i] for i in range(len(self._processes))]

    def stop(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=10)


def _swarm_worker(
    index: int,
    plan: SwarmPlan,
    ready: multiprocessing.Queue[tuple[int, str]],
    go: multiprocessing.synchronize.Event,
    start_at: Any,
    results: multiprocessing.Queue[tuple[int, SwarmResult | str]],
) -> None:
    connected = False

    def wait_for_start() -> float:
        nonlocal connected
        connected = True
        ready.put((index, ""))
        go.wait()
        return float(start_at.value)

    try:
        results.put((index, run_swarm(plan, wait_for_start)))
    except Exception as exc:  # reported to the parent, which raises
        (results if connected else ready).put((index, f"{type(exc).__name__}: {exc}"))


def split(devices: int, workers: int) -> list[tuple[int, int]]:
    """(first, count) of each worker's share of a fleet."""
    shares, first = [], 0
    for w in range(workers):
        count = devices // workers + (1 if w < devices % workers else 0)
        shares.append((first, count))
        first += count
    return shares


def swarm_ceiling(settings: MqttSettings, devices: int, seconds: float, *, workers: int = 2) -> Result:
    """The fleet generator alone: ``devices`` devices publishing as fast as they can for
    ``seconds`` to topics nobody reads (``ceiling()``'s prefix), no confirmations. What it and the
    broker's intake manage without the pipeline; compare with the fleet's rate."""
    plans = [
        SwarmPlan(settings, first, count, 1, 0.0, seconds, 30, confirmations=False)
        for first, count in split(devices, workers)
    ]
    swarm = Swarm(plans)
    swarm.start(timeout=120 + devices / 100)
    results = swarm.results(timeout=seconds + 120)
    acked = sum(x.acked for x in results)
    return Result(acked, max(x.seconds for x in results), sum(x.cpu_s for x in results), workers)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the generator alone -----------------------------------------------------------------------


def ceiling(run: Callable[[Callable[[str], str]], Result]) -> Result:
    """``run(topic_of)`` against topics nobody subscribes to: ``topic_of`` maps each real topic to
    one below ``loadgen-ceiling/``. What the generator and the broker's intake manage alone."""
    return run(lambda topic: f"loadgen-ceiling/{topic}")
