"""Ingestion benchmark: points/s end to end (MQTT -> bridge -> InfluxDB) beside the same
InfluxDB's direct batched-write ceiling, measured in the same run, and their ratio.

    make bench                      # defaults: 200,000 points, 100 samples per message
    make bench ARGS="--points 50000 --samples-per-message 500"

Every figure comes from real processes started here: Mosquitto, Debian's InfluxDB 1.6.7 with
the v2 write shim in front (as in the tests), and the bridge as its own process. The direct
ceiling writes the same points with influxdb-client through the same shim, in batches of the
bridge's size, from one thread. The machine is noisy: compare the ratio, not the absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS

from soclab.dev.localservices.influxdb import InfluxDB1
from soclab.dev.localservices.mosquitto import Mosquitto
from soclab.dev.localservices.v2shim import V2WriteShim

T0 = 1_700_000_000_000_000_000


def messages(points: int, per_message: int, device: str) -> list[bytes]:
    """LabJack-stream-like messages: 2 channels per scan, 10 kHz spacing."""
    source = {"site": "bench", "node": "pi-01", "device": device, "kind": "labjack"}
    out = []
    for first in range(0, points, per_message):
        samples = [
            {"seq": s, "t_ns": T0 + s * 100_000, "values": {"bat_v": 12.5 + (s % 97) / 1000, "bat_a": -2.9}}
            for s in range(first, min(points, first + per_message))
        ]
        out.append(json.dumps({"schema": "soclab.data/1", "source": source, "samples": samples}).encode())
    return out


def line_protocol(points: int, device: str) -> list[str]:
    return [
        f"labjack,device={device},node=pi-01,site=bench bat_a=-2.9,bat_v={12.5 + (s % 97) / 1000},seq={s}i "
        f"{T0 + s * 100_000}"
        for s in range(points)
    ]


def count(db: InfluxDB1, name: str, device: str) -> int:
    series = db.query(f"SELECT count(seq) FROM labjack WHERE device = '{device}'", db=name)
    return int(series[0]["values"][0][1]) if series else 0


def direct(shim: V2WriteShim, db: InfluxDB1, name: str, points: int, batch: int) -> float:
    lines = line_protocol(points, "direct")
    with InfluxDBClient(url=shim.url, token="bench:bench", org="-") as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        start = time.perf_counter()
        for i in range(0, points, batch):
            write.write(bucket=f"{name}/autogen", record=lines[i : i + batch])
        elapsed = time.perf_counter() - start
    assert count(db, name, "direct") == points, "direct write lost points"
    return points / elapsed


def end_to_end(
    broker: Mosquitto, db: InfluxDB1, shim: V2WriteShim, name: str, args: argparse.Namespace
) -> tuple[float, float]:
    env = {
        **os.environ,
        "SOCLAB_BRIDGE_MQTT_HOST": broker.host,
        "SOCLAB_BRIDGE_MQTT_PORT": str(broker.port),
        "SOCLAB_BRIDGE_ID": "bench",
        "SOCLAB_BRIDGE_INFLUX_URL": shim.url,
        "SOCLAB_BRIDGE_INFLUX_ORG": "-",
        "SOCLAB_BRIDGE_INFLUX_BUCKET": f"{name}/autogen",
        "SOCLAB_BRIDGE_INFLUX_TOKEN": "bench:bench",
        "SOCLAB_BRIDGE_BATCH_POINTS": str(args.batch),
        "SOCLAB_BRIDGE_LOG_LEVEL": "WARNING",
    }
    bridge = subprocess.Popen([sys.executable, "-m", "soclab.cloud.bridge"], env=env)
    try:
        payloads = messages(args.points, args.samples_per_message, "e2e")
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
        publisher.max_inflight_messages_set(100)
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        time.sleep(1.0)  # the bridge subscribes
        start = time.perf_counter()
        infos = [publisher.publish("soclab/bench/pi-01/e2e/data", p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(timeout=120)
        published = time.perf_counter() - start
        deadline = time.monotonic() + 300
        while count(db, name, "e2e") < args.points:
            if time.monotonic() > deadline or bridge.poll() is not None:
                raise SystemExit(f"end to end: only {count(db, name, 'e2e')} of {args.points} points stored")
            time.sleep(0.1)
        stored = time.perf_counter() - start
        publisher.disconnect()
        publisher.loop_stop()
        return args.points / stored, args.points / published
    finally:
        bridge.terminate()
        bridge.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--samples-per-message", type=int, default=100)
    parser.add_argument("--batch", type=int, default=5000, help="points per database write (both paths)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="soclab-bench-") as tmp,
        Mosquitto(Path(tmp) / "mqtt") as broker,
        InfluxDB1(Path(tmp) / "influx") as db,
    ):
        db.create_database("bench")
        with V2WriteShim(db.url) as shim:
            ceiling = direct(shim, db, "bench", args.points, args.batch)
            e2e, publish_rate = end_to_end(broker, db, shim, "bench", args)
    print(f"points: {args.points}, per message: {args.samples_per_message}, write batch: {args.batch}")
    print(f"direct batched write (influxdb-client -> InfluxDB): {ceiling:10.0f} points/s")
    print(f"end to end (MQTT QoS 1 -> bridge -> InfluxDB):      {e2e:10.0f} points/s")
    print(f"  (publishing alone:                               {publish_rate:10.0f} points/s)")
    print(f"ratio end to end / direct:                          {e2e / ceiling:10.2f}")


if __name__ == "__main__":
    main()
