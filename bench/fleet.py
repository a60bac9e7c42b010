"""Fleet benchmark: many slow devices on the wire at once, end to end, and their lag.

    make bench-fleet                                   # 10,000 devices x 1 Hz x 300 s, then a ramp
    make bench-fleet ARGS="--devices 2000 --duration 60 --ramp none"
    make bench-fleet ARGS="--bridges 2"                # two bridges, a static split by site
    make bench-fleet ARGS="--lab-only"                 # the simulated lab's own load only

Each device (``bench/loadgen.py``, ``run_swarm``) has its own MQTT connection, topic, sequence
numbers and ``.../stored`` confirmations, one sample per message (what an MPPT or an e-load
sends); a few worker processes each run thousands of them through libmosquitto on one ``epoll``
loop. The generator's own ceiling (the same devices publishing as fast as they can to topics
nobody reads) is printed first. Everything else is real and started here: Mosquitto, the
bridge(s) as processes, Debian's InfluxDB 1.6.7 behind the v2 write shim (its own process,
counted with the database).

Printed for a run: samples published, stored, stored exactly once (per device: count and count
of distinct sequence numbers in InfluxDB equal to what it published), devices with every sample
confirmed, lag from acquisition to storage (the confirmation's time stamp minus the sample's)
at p50 / p99 / max over the samples acquired after the warm-up, and the CPU of each process over
the sampling window in % of one core (the bridge also per thread: its intake/writer thread
against paho's network thread shows which one limits). The ramp runs shorter fleets of growing
size and reports the largest with p99 under 2 s. The simulated lab's own load (``make lab``'s
three instruments) is measured the same way, from the data and stored topics.

The machine has 2 cores shared by everything here, generator included (its CPU is printed too):
read the figures as ratios and as where the CPU goes, not as absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).parent))
from loadgen import Swarm, SwarmPlan, SwarmResult, identity, split, swarm_ceiling

from soclab.dev.lab.cli import LabSettings, run_lab
from soclab.dev.localservices import InfluxDB1, Mosquitto, free_port
from soclab.dev.localservices.mosquitto import MAX_INFLIGHT_MESSAGES
from soclab.dev.localservices.process import ServerProcess
from soclab.wire.mqtt import MqttSettings

DB = "fleet"
TICKS = os.sysconf("SC_CLK_TCK")
LAG_TARGET_S = 2.0
# The production broker's (compose/mosquitto/config/conf.d/30-persistence.conf). The local
# broker's default of 1 s suits fault tests; with 10,000 persistent sessions Mosquitto spent most
# of its time writing its store, stalling every client, and the benchmark measured that instead.
AUTOSAVE_INTERVAL_S = 30


# --- CPU ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread (Python threads have no OS name: ``tid <n>``)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[f"tid {task.name}"] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the process for ``seconds`` (collapsed stacks in ``out``), or None if
    py-spy is missing or not allowed to read other processes (it needs ptrace)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return None
    argv = [str(spy), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "50",
            "--format", "raw", "--output", str(out)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


_WAITING = ("Condition.wait", "Event.wait", "Semaphore.acquire", "select", "poll", "sleep", "SimpleQueue.get")


def hot_spots(path: Path, count: int = 10) -> list[tuple[float, str]]:
    """Where the bridge's threads spent their busy samples: for each soclab function, the % of
    busy samples it was on the stack (itself or its callees). A sample whose innermost frame
    waits (a lock, a queue, select) is idle and left out."""
    inclusive: dict[str, int] = {}
    busy = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].split(" (")[0].endswith(_WAITING):
            continue
        busy += int(n)
        soclab = {re.sub(r":\d+\)$", ")", f) for f in frames if "bridge/" in f or "wire/" in f}
        for name in soclab:
            inclusive[name] = inclusive.get(name, 0) + int(n)
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:count]
    return [(100 * n / busy, name) for name, n in ranked] if busy else []


class CpuWindow:
    """CPU of named processes between ``start()`` and ``stop()``, in % of one core."""

    def __init__(self, pids: dict[str, int], threads_of: tuple[str, ...] = ()) -> None:
        self.pids = pids
        self.threads_of = threads_of
        self._t0 = 0.0
        self._cpu0: dict[str, float] = {}
        self._threads0: dict[str, dict[str, float]] = {}
        self.percent: dict[str, float] = {}
        self.thread_percent: dict[str, dict[str, float]] = {}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._threads0 = {name: thread_cpu(self.pids[name]) for name in self.threads_of}

    def stop(self) -> None:
        elapsed = time.monotonic() - self._t0
        for name, pid in self.pids.items():
            self.percent[name] = 100 * (cpu_seconds(pid) - self._cpu0[name]) / elapsed
        for name in self.threads_of:
            now = thread_cpu(self.pids[name])
            before = self._threads0[name]
            self.thread_percent[name] = {
                t: 100 * (v - before.get(t, 0.0)) / elapsed
                for t, v in sorted(now.items(), key=lambda kv: -kv[1])
            }


# --- services ----------------------------------------------------------------------------------


@dataclass
class Services:
    broker: Mosquitto
    db: InfluxDB1
    shim_url: str
    shim_pid: int
    bridges: list[subprocess.Popen[bytes]]


@contextmanager
def services(folder: Path, bridges: int, batch_points: int, inflight: int) -> Iterator[Services]:
    """Mosquitto, InfluxDB and its v2 shim (a process), ``bridges`` bridges (one site each)."""
    with ExitStack() as stack:
        broker = stack.enter_context(
            Mosquitto(
                folder / "mqtt", max_inflight_messages=inflight, autosave_interval_s=AUTOSAVE_INTERVAL_S
            )
        )
        db = stack.enter_context(InfluxDB1(folder / "influx"))
        db.create_database(DB)
        shim_port = free_port()
        shim = ServerProcess(
            "v2shim",
            [
                sys.executable,
                "-m",
                "soclab.dev.localservices.v2shim",
                "--upstream",
                db.url,
                "--port",
                str(shim_port),
            ],
            folder / "v2shim.log",
        )
        shim.start(lambda: _accepts(shim_port), 20)
        stack.callback(shim.stop)
        assert shim.pid is not None
        procs = []
        for k in range(bridges):
            env = {
                **os.environ,
                "SOCLAB_BRIDGE_MQTT_HOST": broker.host,
                "SOCLAB_BRIDGE_MQTT_PORT": str(broker.port),
                "SOCLAB_BRIDGE_ID": f"fleet{k}",
                "SOCLAB_BRIDGE_SITE": f"fleet{k}",
                "SOCLAB_BRIDGE_INFLUX_URL": f"http://127.0.0.1:{shim_port}",
                "SOCLAB_BRIDGE_INFLUX_ORG": "-",
                "SOCLAB_BRIDGE_INFLUX_BUCKET": f"{DB}/autogen",
                "SOCLAB_BRIDGE_INFLUX_TOKEN": "bench:bench",
                "SOCLAB_BRIDGE_BATCH_POINTS": str(batch_points),
                # The bridge's own bound on what it holds, the broker's window for it, made equal
                # (a smaller one would hold paho's network thread, and the confirmations with it).
                "SOCLAB_BRIDGE_MQTT_MAX_PENDING_MESSAGES": str(inflight),
                "SOCLAB_BRIDGE_LOG_LEVEL": "WARNING",
            }
            log = open(folder / f"bridge{k}.log", "ab")  # noqa: SIM115 - closed with the stack
            stack.callback(log.close)
            proc = subprocess.Popen([sys.executable, "-m", "soclab.cloud.bridge"], env=env, stderr=log)
            stack.callback(_stop, proc)
            procs.append(proc)
        time.sleep(1.5)  # the bridges connect and subscribe
        yield Services(broker, db, f"http://127.0.0.1:{shim_port}", shim.pid, procs)


def _accepts(port: int) -> bool:
    from soclab.dev.localservices.ports import accepts

    return accepts("127.0.0.1", port)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- one fleet run -----------------------------------------------------------------------------


@dataclass
class FleetFigures:
    devices: int
    duration_s: float
    published: int
    stored: int
    stored_once_devices: int
    confirmed_devices: int
    dead_lettered: int
    lag_s: dict[str, float]
    cpu: dict[str, float]
    bridge_threads: dict[str, dict[str, float]]
    disconnects: int
    bridge_profile: list[tuple[float, str]]  # (% of samples, function) where bridge0 spent its time
    unconfirmed: int  # samples whose confirmation had not come when the swarm stopped waiting

    @property
    def all_good(self) -> bool:
        return (
            self.stored == self.published
            and self.stored_once_devices == self.devices
            and self.confirmed_devices == self.devices
        )


def percentiles(values: array, warmup_mask: array | None = None) -> dict[str, float]:
    data = sorted(values)
    if not data:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    n = len(data)
    return {"p50": data[n // 2] / 1e9, "p99": data[min(n - 1, (n * 99) // 100)] / 1e9, "max": data[-1] / 1e9}


def run_fleet(
    args: argparse.Namespace, devices: int, duration_s: float, drain_s: float, folder: Path
) -> FleetFigures:
    workers = workers_for(args.workers, devices)
    sites = args.bridges
    with services(folder, args.bridges, args.batch_points, args.inflight) as s:
        settings = MqttSettings(host=s.broker.host, port=s.broker.port)
        plans = [
            SwarmPlan(settings, first, count, sites, args.rate, duration_s, drain_s)
            for first, count in split(devices, workers)
        ]
        pids = {"broker": s.broker.pid, "influxd": s.db.pid, "v2shim": s.shim_pid}
        pids.update({f"bridge{k}": p.pid for k, p in enumerate(s.bridges)})
        window = CpuWindow(
            {k: v for k, v in pids.items() if v}, tuple(f"bridge{k}" for k in range(len(s.bridges)))
        )
        spy_out = folder / "bridge0.pyspy.txt"
        spy: list[subprocess.Popen[bytes] | None] = []

        def begin() -> None:
            window.start()
            spy.append(profile(s.bridges[0].pid, duration_s - args.warmup, spy_out))

        swarm = Swarm(plans)
        start_at = swarm.start(timeout=120 + devices / 100)
        threading.Timer(max(0.0, start_at + args.warmup - time.time()), begin).start()
        time.sleep(max(0.0, start_at + duration_s - time.time()))
        window.stop()
        results: list[SwarmResult] = swarm.results(timeout=drain_s + 600)
        hot: list[tuple[float, str]] = []
        if spy and spy[0] is not None:
            spy[0].wait(timeout=60)
            if spy_out.exists():
                hot = hot_spots(spy_out)
        for k, bridge in enumerate(s.bridges):
            if bridge.poll() is not None:
                raise SystemExit(f"bridge{k} exited with {bridge.returncode}: see {folder}/bridge{k}.log")
        published = array("q")
        lags = array("q")
        confirmed_devices = dead = disconnects = 0
        warm_ns = int((start_at + args.warmup) * 1e9)
        unconfirmed = 0
        for r in results:
            published.extend(r.published)
            unconfirmed += sum(r.published) - sum(r.confirmed)
            confirmed_devices += sum(1 for p, c in zip(r.published, r.confirmed, strict=True) if p == c)
            dead += r.dead_lettered
            disconnects += r.disconnects
            lags.extend(lag for lag, t in zip(r.lag_ns, r.acquired_ns, strict=True) if t >= warm_ns)
        stored, once = stored_counts(s.db, devices, sites, published)
        cpu = dict(window.percent)
        cpu["devices (generator)"] = 100 * sum(r.cpu_s for r in results) / duration_s
        return FleetFigures(
            devices, duration_s, sum(published), stored, once, confirmed_devices, dead,
            percentiles(lags), cpu, window.thread_percent, disconnects, hot, unconfirmed,
        )  # fmt: skip


def workers_for(wanted: int, devices: int) -> int:
    """Worker processes: as many as asked (at most one per 100 devices), and enough that each
    stays within the open-files limit (libmosquitto takes three files per device)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = -(-devices * 3 // (hard - 200))
    return max(needed, min(wanted, devices // 100 or 1), 1)


def stored_counts(db: InfluxDB1, devices: int, sites: int, published: array) -> tuple[int, int]:
    """Points stored in all, and devices whose samples are each stored exactly once."""
    counts: dict[str, tuple[int, int]] = {}
    for site in range(sites):
        q = f"SELECT count(seq), count(distinct(seq)) FROM mppt WHERE site = 'fleet{site}' GROUP BY device"
        for series in db.query(q, db=DB):
            _, total, distinct = series["values"][0]
            counts[series["tags"]["device"]] = (int(total), int(distinct))
    stored = once = 0
    for i in range(devices):
        total, distinct = counts.get(identity(i, sites)[2], (0, 0))
        stored += total
        once += int(total == distinct == published[i])
    return stored, once


def print_fleet(f: FleetFigures, rate: float) -> None:
    print(f"fleet: {f.devices} devices x {rate:g} Hz x {f.duration_s:g} s")
    print(f"  samples published {f.published}, stored {f.stored} (all stored: {f.stored == f.published})")
    print(f"  devices stored exactly once: {f.stored_once_devices} of {f.devices}; "
          f"every sample confirmed: {f.confirmed_devices} of {f.devices} ({f.unconfirmed} samples not); "
          f"dead-lettered {f.dead_lettered}; "
          f"client disconnects {f.disconnects}")  # fmt: skip
    lag = f.lag_s
    print(f"  lag acquisition -> storage: p50 {lag['p50']:.3f} s, p99 {lag['p99']:.3f} s, "
          f"max {lag['max']:.3f} s")  # fmt: skip
    print("  CPU (% of one core): " + ", ".join(f"{k} {v:.0f}" for k, v in f.cpu.items()))
    for name, threads in f.bridge_threads.items():
        busy = ", ".join(f"{v:.0f}" for v in list(threads.values())[:4])
        print(f"    {name}'s busiest threads: {busy}")
    if f.bridge_profile:
        print("  bridge0 profile (py-spy: % of busy samples with the function on the stack):")
        for share, function in f.bridge_profile:
            print(f"    {share:5.1f}  {function}")


# --- the simulated lab's own load --------------------------------------------------------------


def lab_lag(folder: Path, duration_s: float) -> dict[str, dict[str, float]]:
    """p50/p99/max lag per instrument of ``make lab``'s simulated lab, from its data and stored
    topics (a monitor subscribed to both), for the samples acquired during ``duration_s`` after a
    5 s warm-up (a sample of the start, spooled until the bridge was up, is not the lab's lag)."""
    acquired: dict[tuple[str, int], int] = {}
    since = [0]  # acquisition time from which samples count
    lags: dict[str, array] = {}
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        device = message.topic.split("/")[3]
        with lock:
            if message.topic.endswith("/data"):
                for sample in body["samples"]:
                    acquired[device, sample["seq"]] = sample["t_ns"]
                return
            for first, last in body.get("stored", []):
                for seq in range(first, last + 1):
                    t_ns = acquired.pop((device, seq), None)
                    if t_ns is not None and recording.is_set() and t_ns >= since[0]:
                        lags.setdefault(device, array("q")).append(body["t_ns"] - t_ns)

    recording = threading.Event()
    with Mosquitto(folder / "mqtt") as broker, InfluxDB1(folder / "influx") as db:
        db.create_database("lab")
        from soclab.dev.localservices import V2WriteShim

        with V2WriteShim(db.url) as shim:
            monitor = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-lab-monitor")
            monitor.on_message = on_message
            monitor.connect(broker.host, broker.port)
            monitor.subscribe([("soclab/lab/+/+/data", 1), ("soclab/lab/+/+/stored", 1)])
            monitor.loop_start()
            settings = LabSettings(
                site="lab",
                mqtt={"host": broker.host, "port": broker.port},
                influxdb={"url": shim.url, "org": "-", "bucket": "lab/autogen"},
                env={"SOCLAB_BRIDGE_INFLUX_TOKEN": "bench:bench", "SOCLAB_LOG_LEVEL": "WARNING"},
            )
            with run_lab(settings, folder / "var"):
                time.sleep(5)
                since[0] = time.time_ns()
                recording.set()
                time.sleep(duration_s)
                recording.clear()
            monitor.disconnect()
            monitor.loop_stop()
    return {device: percentiles(values) | {"samples": len(values)} for device, values in sorted(lags.items())}


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1.0, help="samples per second per device")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of sampling")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds left out of lag and CPU")
    parser.add_argument(
        "--drain", type=float, default=300.0, help="seconds to wait for the last confirmations"
    )
    parser.add_argument("--workers", type=int, default=2, help="device processes")
    parser.add_argument("--bridges", type=int, default=1, help="bridges, one site each (static split)")
    parser.add_argument("--batch-points", type=int, default=5000)
    parser.add_argument("--inflight", type=int, default=MAX_INFLIGHT_MESSAGES,
                        help="the bridge's window ([mqtt] max_pending_messages) and the broker's "
                             "max_inflight_messages")  # fmt: skip
    parser.add_argument("--ramp", default="500,1000,2000,3000,4000,6000,8000",
                        help="fleet sizes to try for p99 < 2 s, or 'none'")  # fmt: skip
    parser.add_argument("--ramp-duration", type=float, default=40.0)
    parser.add_argument("--ramp-drain", type=float, default=60.0, help="--drain of the ramp's runs")
    parser.add_argument("--lab-duration", type=float, default=30.0)
    parser.add_argument("--lab-only", action="store_true")
    parser.add_argument("--ceiling-duration", type=float, default=10.0, help="seconds of the generator alone")
    parser.add_argument("--keep", type=Path, help="keep logs and data in this folder")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("fleet: terminated"))  # stop what was started
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # Mosquitto inherits it: one fd per device
    print("The machine's 2 cores run everything below, the device generator included: figures are noisy.")
    failed = False
    with tempfile.TemporaryDirectory(prefix="soclab-fleet-") as tmp:
        folder = args.keep or Path(tmp)
        lab = lab_lag(folder / "lab", args.lab_duration)
        print(f"simulated lab's own load ({args.lab_duration:g} s): lag acquisition -> storage")
        for device, f in lab.items():
            print(f"  {device:8s} {f['samples']:7d} samples: p50 {f['p50']:.3f} s, p99 {f['p99']:.3f} s, "
                  f"max {f['max']:.3f} s")  # fmt: skip
        if args.lab_only:
            return
        with Mosquitto(folder / "ceiling", autosave_interval_s=AUTOSAVE_INTERVAL_S) as broker:
            alone = swarm_ceiling(
                MqttSettings(host=broker.host, port=broker.port),
                args.devices,
                args.ceiling_duration,
                workers=workers_for(args.workers, args.devices),
            )
        print(f"generator alone ({args.devices} devices as fast as they can, nobody reading): {alone}; "
              f"{1e6 * alone.cpu_s / max(alone.messages, 1):.0f} us of CPU per message")  # fmt: skip
        largest = None
        if args.ramp != "none":
            for n in (int(x) for x in args.ramp.split(",")):
                f = run_fleet(args, n, args.ramp_duration, args.ramp_drain, folder / f"ramp{n}")
                print_fleet(f, args.rate)
                if f.lag_s["p99"] < LAG_TARGET_S and f.all_good:
                    largest = n
                else:
                    break
        f = run_fleet(args, args.devices, args.duration, args.drain, folder / "main")
        print_fleet(f, args.rate)
        failed = not f.all_good
        if f.lag_s["p99"] < LAG_TARGET_S and f.all_good:
            largest = max(largest or 0, args.devices)
        print(f"largest fleet held with p99 lag < {LAG_TARGET_S:g} s: {largest or 'none tried'} devices at "
              f"{args.rate:g} Hz")  # fmt: skip
    if failed:
        raise SystemExit("fleet: samples lost, doubled or unconfirmed (see above)")


if __name__ == "__main__":
    main()
