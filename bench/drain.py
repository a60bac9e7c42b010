"""Backlog drain: after an outage of ``--hours`` at the lab's rates, how fast does each
publisher's spool empty into InfluxDB, as a multiple of real time, while live data goes on?

    make bench-drain                       # 2 h outage: MPPT 1 Hz, e-load 2 Hz, LabJack 100 Hz
    .venv/bin/python bench/drain.py --hours 8 --labjack-hz 1000

Real processes as in the tests: Mosquitto, InfluxDB 1.6.7 behind the v2 shim, the bridge (its
own process); the three publishers run in this process, each with its spool filled beforehand
(time stamps in the past, as an outage leaves them) and a live instrument at the same rate.
Also printed: the cost of the spool's sync policy (append of one reading, fsync vs not).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from soclab.dev.localservices.influxdb import InfluxDB1
from soclab.dev.localservices.mosquitto import Mosquitto
from soclab.dev.localservices.v2shim import V2WriteShim
from soclab.dev.sim.steady import SteadyInstrument
from soclab.edge.instruments.base import Reading
from soclab.edge.publisher.config import load
from soclab.edge.publisher.service import Publisher
from soclab.edge.spool import Spool

DB = "drain"


def fill(path: Path, hz: float, hours: float) -> int:
    n = int(hz * hours * 3600)
    t0 = time.time_ns() - int(hours * 3600 * 1e9)
    step = int(1e9 / hz)
    spool = Spool(path, sync="normal")
    for start in range(0, n, 20_000):
        spool.append(
            [
                Reading(t0 + i * step, {"bat_v": 12.5, "bat_a": -2.9})
                for i in range(start, min(n, start + 20_000))
            ]
        )
    spool.close()
    return n


def sync_cost(folder: Path, appends: int = 300) -> dict[str, float]:
    """Microseconds per append of one reading, per sync policy."""
    costs = {}
    for policy in ("full", "normal"):
        spool = Spool(folder / f"sync-{policy}.sqlite", sync=policy)
        start = time.perf_counter()
        for i in range(appends):
            spool.append([Reading(time.time_ns() + i, {"bat_v": 12.5})])
        costs[policy] = (time.perf_counter() - start) / appends * 1e6
        spool.close()
    return costs


def stored_backlog(db: InfluxDB1, device: str, n: int) -> int:
    series = db.query(f"SELECT count(seq) FROM labjack WHERE device = '{device}' AND seq < {n}", db=DB)
    return int(series[0]["values"][0][1]) if series else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--labjack-hz", type=float, default=100.0)
    args = parser.parse_args()
    rates = {"mppt": 1.0, "eload": 2.0, "labjack": args.labjack_hz}
    with (
        tempfile.TemporaryDirectory(prefix="soclab-drain-") as tmp,
        Mosquitto(Path(tmp) / "mqtt") as broker,
        InfluxDB1(Path(tmp) / "influx") as db,
        V2WriteShim(db.url) as shim,
    ):
        folder = Path(tmp)
        costs = sync_cost(folder)
        db.create_database(DB)
        backlog = {d: fill(folder / f"{d}.sqlite", hz, args.hours) for d, hz in rates.items()}
        env = {
            **os.environ,
            "SOCLAB_BRIDGE_MQTT_HOST": broker.host,
            "SOCLAB_BRIDGE_MQTT_PORT": str(broker.port),
            "SOCLAB_BRIDGE_INFLUX_URL": shim.url,
            "SOCLAB_BRIDGE_INFLUX_ORG": "-",
            "SOCLAB_BRIDGE_INFLUX_BUCKET": DB,
            "SOCLAB_BRIDGE_INFLUX_TOKEN": "bench:bench",
            "SOCLAB_BRIDGE_LOG_LEVEL": "WARNING",
        }
        bridge = subprocess.Popen([sys.executable, "-m", "soclab.cloud.bridge"], env=env)
        publishers, threads = [], []
        try:
            time.sleep(1.0)
            start = time.monotonic()
            for device, hz in rates.items():
                config = load(None, env={
                    "SOCLAB_SOURCE_SITE": "bench", "SOCLAB_SOURCE_NODE": "pi-01",
                    "SOCLAB_SOURCE_DEVICE": device, "SOCLAB_SOURCE_KIND": "labjack",
                    "SOCLAB_MQTT_HOST": broker.host, "SOCLAB_MQTT_PORT": str(broker.port),
                    "SOCLAB_SPOOL_PATH": str(folder / f"{device}.sqlite"), "SOCLAB_LOG_LEVEL": "WARNING",
                })  # fmt: skip
                publisher = Publisher(config, SteadyInstrument(hz))
                publishers.append(publisher)
                threads.append(threading.Thread(target=publisher.run, daemon=True))
                threads[-1].start()
            done: dict[str, float] = {}
            while len(done) < len(rates):
                for device, n in backlog.items():
                    if device not in done and stored_backlog(db, device, n) >= n:
                        done[device] = time.monotonic() - start
                if time.monotonic() - start > 1800 or bridge.poll() is not None:
                    raise SystemExit("drain did not complete in 30 min")
                time.sleep(0.2)
        finally:
            for publisher in publishers:
                publisher.stop()
            for thread in threads:
                thread.join(timeout=30)
            bridge.terminate()
            bridge.wait(timeout=30)
    outage_s = args.hours * 3600
    print(f"outage: {args.hours} h; lab rates: " + ", ".join(f"{d} {hz:g} Hz" for d, hz in rates.items()))
    for device, seconds in done.items():
        n = backlog[device]
        print(f"{device:<8} backlog {n:>9} samples drained in {seconds:7.1f} s: "
              f"{n / seconds:9.0f} samples/s, {outage_s / seconds:7.0f} x real time")  # fmt: skip
    total = sum(backlog.values())
    everything = max(done.values())
    print(f"all      backlog {total:>9} samples drained in {everything:7.1f} s: "
          f"{outage_s / everything:7.0f} x real time")  # fmt: skip
    full, normal = costs["full"], costs["normal"]
    print(f"spool append of one reading: sync=full {full:.0f} us, sync=normal {normal:.0f} us "
          f"(ratio {full / normal:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
