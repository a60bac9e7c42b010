"""LabJack T7 streaming 2 channels at 10 kHz (the stand-in, fed by the simulated battery) into the
pipeline: scans/s sustained, stored/s, device and LJM backlog, CPU of the publisher and the bridge.

    make bench-labjack
    .venv/bin/python bench/labjack_stream.py --seconds 60 --scan-rate 10000 --scans-per-read 1000
    .venv/bin/python bench/labjack_stream.py --scan-rate 50000 --scans-per-read 5000 --baseline main
    .venv/bin/python bench/labjack_stream.py --watch    # and `soclab watch` on the stream, in tmux

With ``--baseline REV``, the same settings run twice, one after the other: first with the
publisher (its ``soclab.edge``, ``soclab.wire`` and ``soclab.dev``, the LJM stand-in included) of
git revision REV of this checkout, then with this checkout's; the figures are printed side by
side with their ratio. Broker, bridge and database are this checkout's in both runs.

With ``--watch``, ``soclab watch`` runs in a terminal (tmux, 200 x 50) on the same broker: its CPU
is measured beside the others, and its last screen is printed (it says there if it fell behind).

Runs `make lab`'s machinery with only the LabJack: the simulated battery process, the LabJack
publisher (its own process, as on the Pi), Mosquitto, the bridge, InfluxDB 1.6.7. CPU is read
from /proc (user + system time of each process over the measured window; 100 % = one core).
The load average (1 min) before and after each run says how busy the machine was.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from soclab.dev.lab.cli import LabSettings, run_lab
from soclab.dev.localservices import InfluxDB1, Mosquitto, V2WriteShim

DB = "stream"
TICKS = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("edge", "schemas", "dev")  # the publisher's distributions (and the stand-in's)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def stored(db: InfluxDB1) -> int:
    series = db.query("SELECT count(bat_v) FROM labjack", db=DB)
    return int(series[0]["values"][0][1]) if series else 0


@dataclass
class Result:
    """One run's figures."""

    label: str
    scan_rate_hz: float | None = None
    read_per_s: float = 0.0
    stored_per_s: float = 0.0
    seconds: float = 0.0
    device_backlog: float = 0.0
    ljm_backlog: float = 0.0
    ljm_backlog_first_last: tuple[float, float] = (0.0, 0.0)  # in the measured window
    stream_restarts: int = 0  # in the measured window: LJM's buffer overflowed (or the device went)
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core
    load: tuple[float, float] = (0.0, 0.0)  # 1-min load average before, after
    spool_depth: object = None
    failed: object = None
    once: str = ""
    lost_or_doubled: int | None = None
    screen: str = ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--scan-rate", type=float, default=10_000.0)
    parser.add_argument("--scans-per-read", type=int, default=1000)
    parser.add_argument("--watch", action="store_true", help="also run soclab watch in tmux; its CPU")
    parser.add_argument(
        "--baseline", metavar="REV", help="first run the publisher of git revision REV, same settings"
    )
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="soclab-stream-base-") as base:
        if args.baseline:
            results.append(stream(args, f"publisher of {args.baseline}", checkout(args.baseline, Path(base))))
        results.append(stream(args, "this checkout"))
    print(f"LabJack stand-in, 2 channels, {args.scan_rate:g} Hz asked, {args.scans_per_read} scans/read")
    for result in results:
        report(result)
    if len(results) == 2:
        before, after = results
        ratio = after.read_per_s / before.read_per_s if before.read_per_s else float("inf")
        print(f"\nscans read: {after.read_per_s:.0f}/s against {before.read_per_s:.0f}/s, ratio {ratio:.2f}")
        cpu = "; ".join(
            f"{name} {before.cpu.get(name, 0):.0f} % -> {after.cpu.get(name, 0):.0f} %" for name in after.cpu
        )
        print(f"CPU (% of one core): {cpu}")
    if any(r.lost_or_doubled != 0 or r.failed for r in results):
        sys.exit(1)  # a scan lost or doubled, or a process failed: say so with the exit status


def checkout(rev: str, into: Path) -> str:
    """The publisher's packages of git revision ``rev``, extracted under ``into``: a PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, *(f"{p}/soclab" for p in PACKAGES)],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return os.pathsep.join(str(into / p) for p in PACKAGES)


def stream(args: argparse.Namespace, label: str, pythonpath: str | None = None) -> Result:
    """One run of the stream through the pipeline, the publisher from ``pythonpath`` if given."""
    status: dict[str, dict] = {}
    result = Result(label)
    load0 = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory(prefix="soclab-stream-") as tmp,
        Mosquitto(Path(tmp) / "mqtt") as broker,
        InfluxDB1(Path(tmp) / "influx") as db,
        V2WriteShim(db.url) as shim,
    ):
        db.create_database(DB)
        settings = LabSettings(
            site="bench",
            instruments={"labjack": {"env": {"PYTHONPATH": pythonpath}} if pythonpath else {}},
            mqtt={"host": broker.host, "port": broker.port},
            influxdb={"url": shim.url, "org": "-", "bucket": DB},
            env={
                "SOCLAB_BRIDGE_INFLUX_TOKEN": "bench:bench",
                "SOCLAB_INSTRUMENT_SCAN_RATE_HZ": str(args.scan_rate),
                "SOCLAB_INSTRUMENT_SCANS_PER_READ": str(args.scans_per_read),
                "SOCLAB_BATCH_MAX_SAMPLES": str(args.scans_per_read),
                "SOCLAB_STATUS_INTERVAL_S": "2",
            },
        )
        watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        watcher.on_message = lambda c, u, m: status.__setitem__(m.topic, json.loads(m.payload))
        watcher.connect(broker.host, broker.port)
        watcher.subscribe("soclab/bench/+/labjack/status")
        watcher.loop_start()
        max_backlog = {"device_backlog": 0.0, "ljm_backlog": 0.0}

        def watch_backlog(stop: threading.Event) -> None:
            while not stop.wait(0.5):
                for body in list(status.values()):
                    for key in max_backlog:
                        max_backlog[key] = max(max_backlog[key], body.get("gauges", {}).get(key) or 0)

        with run_lab(settings, Path(tmp) / "var") as (_view, children):
            monitor = Monitor(broker, f"soclab-bench-{os.getpid()}") if args.watch else None
            time.sleep(5.0)  # the stream starts, the first messages flow
            pids = {
                "publisher": children.pid("labjack"),
                "bridge": children.pid("bridge"),
                "mosquitto": broker.pid,
                "influxd": db.pid,
            }
            if monitor is not None:
                pids["soclab watch"] = monitor.pid()
            stop = threading.Event()
            threading.Thread(target=watch_backlog, args=(stop,), daemon=True).start()
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items() if pid is not None}
            first = next(iter(status.values()), {})
            stored0, t0 = stored(db), time.monotonic()
            time.sleep(args.seconds)
            cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items() if pid is not None}
            elapsed = time.monotonic() - t0
            stored1 = stored(db)
            time.sleep(2.5)  # one more status
            last = next(iter(status.values()), {})
            stop.set()
            result.failed = children.failed()
            result.screen = monitor.screen() if monitor is not None else ""
            if monitor is not None:
                monitor.close()
        # Stopped: the publisher flushed, the bridge wrote. Every sequence number from 0 on must
        # be stored once, or still be in the spool waiting for its confirmation.
        result.once, result.lost_or_doubled = loss_check(db, Path(tmp) / "var" / "spool" / "labjack.sqlite")
        watcher.loop_stop()
    scans = last.get("counters", {}).get("scans_read", 0) - first.get("counters", {}).get("scans_read", 0)
    result.read_per_s = scans / max(1e-9, (last.get("t_ns", 0) - first.get("t_ns", 0)) / 1e9)
    gauges = last.get("gauges", {})
    result.scan_rate_hz = gauges.get("scan_rate_hz")
    result.stored_per_s = (stored1 - stored0) / elapsed
    result.seconds = elapsed
    result.device_backlog, result.ljm_backlog = max_backlog["device_backlog"], max_backlog["ljm_backlog"]
    starts = [body.get("counters", {}).get("stream_starts", 0) for body in (first, last)]
    result.stream_restarts = starts[1] - starts[0]
    result.ljm_backlog_first_last = (
        first.get("gauges", {}).get("ljm_backlog") or 0,
        last.get("gauges", {}).get("ljm_backlog") or 0,
    )
    result.cpu = {name: (cpu1[name] - cpu0[name]) / elapsed * 100 for name in cpu1}
    result.load = (load0, os.getloadavg()[0])
    result.spool_depth = gauges.get("spool_depth")
    return result


def report(r: Result) -> None:
    print(f"\n--- {r.label}")
    print(f"actual scan rate (eStreamStart): {r.scan_rate_hz}")
    print(f"scans read (publisher status):   {r.read_per_s:10.0f} scans/s")
    print(f"stored in InfluxDB:              {r.stored_per_s:10.0f} scans/s, {r.seconds:.0f} s")
    print(f"backlog max: device {r.device_backlog:g} scans, LJM {r.ljm_backlog:g} scans")
    first, last = r.ljm_backlog_first_last
    print(f"LJM backlog at the window's start and end: {first:g}, {last:g} scans ({last - first:+g})")
    print(f"stream restarts in the window (LJM's buffer overflowed): {r.stream_restarts}")
    for name, percent in r.cpu.items():
        print(f"CPU {name:<10} {percent:6.1f} % of one core")
    print(f"load average (1 min) before and after: {r.load[0]:.2f}, {r.load[1]:.2f}")
    print(f"spool depth at the end: {r.spool_depth}, processes failed: {r.failed or 'none'}")
    print(r.once)
    if r.screen:
        print("soclab watch's last screen:\n" + r.screen.rstrip())


def loss_check(db: InfluxDB1, spool: Path) -> tuple[str, int]:
    """Scans assigned, stored once, doubled, still spooled and lost, after the run."""
    series = db.query("SELECT count(seq), count(distinct(seq)), max(seq) FROM labjack", db=DB)
    _, total, distinct, last = series[0]["values"][0] if series else (0, 0, 0, -1)
    if not spool.exists():
        return "the publisher wrote no spool: it did not start (a baseline too old for this lab?)", -1
    with contextlib.closing(sqlite3.connect(f"file:{spool}?mode=ro", uri=True)) as conn:
        assigned = int(conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0])
        spooled = {row[0] for row in conn.execute("SELECT seq FROM samples")}
    overlap = 0  # spooled but already stored (the confirmation was on its way)
    if spooled:
        rows = db.query(
            f"SELECT seq FROM labjack WHERE seq >= {min(spooled)} AND seq <= {max(spooled)}", db=DB
        )
        overlap = len(spooled & {int(v[1]) for r in rows for v in r["values"]})
    lost = assigned - distinct - (len(spooled) - overlap)
    text = (
        f"scans assigned {assigned}: stored once {distinct}, doubled {total - distinct}, "
        f"waiting in the spool {len(spooled)}, lost {lost} (highest stored seq {last})"
    )
    return text, lost + (total - distinct)


class Monitor:
    """``soclab watch`` on the broker, in a tmux window of its own (its own tmux server)."""

    def __init__(self, broker: Mosquitto, socket: str) -> None:
        self.tmux = ["tmux", "-L", socket]
        watch = [
            sys.executable,
            "-m",
            "soclab.tools.cli",
            "watch",
            "--host",
            broker.host,
            "--port",
            str(broker.port),
        ]
        command = "exec " + shlex.join(watch)  # exec: the pane's process is the monitor itself
        subprocess.run(
            [*self.tmux, "new-session", "-d", "-s", "watch", "-x", "200", "-y", "50", command], check=True
        )

    def pid(self) -> int:
        out = subprocess.run(
            [*self.tmux, "display", "-p", "-t", "watch", "#{pane_pid}"], capture_output=True, text=True
        )
        return int(out.stdout)

    def screen(self) -> str:
        return subprocess.run(
            [*self.tmux, "capture-pane", "-p", "-t", "watch"], capture_output=True, text=True
        ).stdout

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


if __name__ == "__main__":
    main()
