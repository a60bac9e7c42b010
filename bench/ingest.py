"""Ingestion benchmark: the bridge against the database's own ceiling and the load generator's.

    make bench-ingest                         # 200,000 points in messages of 100, then 20,000 of 1
    make bench-ingest ARGS="--points 50000 --small 5000 --batch 5000"

Every figure comes from real processes started here: Mosquitto, Debian's InfluxDB 1.6.7 with the
v2 write shim in front (as in the tests), the bridge as its own process, and ``mosquitto_pub``
(C) as the load generator (``bench/loadgen.py``). Printed, measured side by side in one run:

- batched messages (``--samples-per-message``, default 100): the direct ceiling (the same
  points written by influxdb-client through the same shim, in batches of the bridge's size, one
  thread), end to end (publish -> MQTT -> bridge -> InfluxDB, until the bridge has confirmed
  every point as stored, then counted once in the database),
  their ratio, and the generator's own ceiling (the same messages to topics nobody subscribes to);
- small messages (one sample each, what an MPPT or an e-load sends): messages/s end to end
  beside the generator's ceiling, so it is clear which one limited;
- the bridge's intake alone (decode, validate, line protocol) in µs of CPU per point, in this
  process, and the bridge process's CPU per point over the end-to-end run.

The machine is noisy (2 cores, shared): compare ratios within a run, not absolutes across runs.
The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from loadgen import Result, ceiling, mosquitto_pub

from soclab.cloud.bridge.intake import Intake
from soclab.dev.localservices.influxdb import InfluxDB1
from soclab.dev.localservices.mosquitto import Mosquitto
from soclab.dev.localservices.v2shim import V2WriteShim
from soclab.wire.mqtt import MqttSettings

T0 = (time.time_ns() // 10**9 - 3600) * 10**9  # an hour ago: inside the bridge's live window
DB = "bench"
TICKS = os.sysconf("SC_CLK_TCK")


def messages(points: int, per_message: int, device: str, first_seq: int = 0) -> list[bytes]:
    """LabJack-stream-like messages: 2 channels per scan, 10 kHz spacing."""
    source = {"site": "bench", "node": "pi-01", "device": device, "kind": "labjack"}
    out = []
    for first in range(first_seq, first_seq + points, per_message):
        samples = [
            {"seq": s, "t_ns": T0 + s * 100_000, "values": {"bat_v": 12.5 + (s % 97) / 1000, "bat_a": -2.9}}
            for s in range(first, min(first_seq + points, first + per_message))
        ]
        out.append(json.dumps({"schema": "soclab.data/1", "source": source, "samples": samples}).encode())
    return out


def line_protocol(points: int, device: str) -> list[str]:
    return [
        f"labjack,device={device},node=pi-01,site=bench bat_a=-2.9,bat_v={12.5 + (s % 97) / 1000},seq={s}i "
        f"{T0 + s * 100_000}"
        for s in range(points)
    ]


def count(db: InfluxDB1, device: str) -> int:
    series = db.query(f"SELECT count(seq) FROM labjack WHERE device = '{device}'", db=DB)
    return int(series[0]["values"][0][1]) if series else 0


def direct(shim: V2WriteShim, db: InfluxDB1, points: int, batch: int) -> float:
    lines = line_protocol(points, "direct")
    with InfluxDBClient(url=shim.url, token="bench:bench", org="-") as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        start = time.perf_counter()
        for i in range(0, points, batch):
            write.write(bucket=f"{DB}/autogen", record=lines[i : i + batch])
        elapsed = time.perf_counter() - start
    assert count(db, "direct") == points, "direct write lost points"
    return points / elapsed


def intake_cost(per_message: int, points: int = 20_000) -> float:
    """µs of CPU per point for the bridge's intake alone (best of three)."""
    payloads = messages(points, per_message, "intake")
    intake = Intake()
    now = time.time_ns()
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for payload in payloads:
            intake.accept("soclab/bench/pi-01/intake/data", payload, now)
        best = min(best, time.process_time() - start)
    return best / points * 1e6


class BridgeProcess:
    def __init__(self, broker: Mosquitto, shim: V2WriteShim, batch: int) -> None:
        env = {
            **os.environ,
            "SOCLAB_BRIDGE_MQTT_HOST": broker.host,
            "SOCLAB_BRIDGE_MQTT_PORT": str(broker.port),
            "SOCLAB_BRIDGE_ID": "bench",
            "SOCLAB_BRIDGE_INFLUX_URL": shim.url,
            "SOCLAB_BRIDGE_INFLUX_ORG": "-",
            "SOCLAB_BRIDGE_INFLUX_BUCKET": f"{DB}/autogen",
            "SOCLAB_BRIDGE_INFLUX_TOKEN": "bench:bench",
            "SOCLAB_BRIDGE_BATCH_POINTS": str(batch),
            "SOCLAB_BRIDGE_LOG_LEVEL": "WARNING",
        }
        self.broker = broker
        self.process = subprocess.Popen([sys.executable, "-m", "soclab.cloud.bridge"], env=env)
        time.sleep(1.5)  # the bridge connects and subscribes

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class Confirmations:
    """Counts the samples the bridge confirms as stored (``soclab.stored/1``): the end of a run is
    seen without querying the database, which would compete with the writes it measures."""

    def __init__(self, broker: Mosquitto) -> None:
        self.stored = 0
        self._changed = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-confirmations")
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("soclab/bench/+/+/stored", qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        ranges = json.loads(message.payload).get("stored", [])
        with self._changed:
            self.stored += sum(last - first + 1 for first, last in ranges)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.stored >= count, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def end_to_end(
    db: InfluxDB1,
    bridge: BridgeProcess,
    confirmations: Confirmations,
    streams: dict[str, list[bytes]],
    points: int,
) -> tuple[float, Result, float]:
    """Seconds until every point is confirmed stored, the generator's result, bridge CPU seconds."""
    devices = [topic.split("/")[3] for topic in streams]
    cpu_before = bridge.cpu_s()
    confirmations.stored = 0
    start = time.perf_counter()
    published = mosquitto_pub(MqttSettings(host=bridge.broker.host, port=bridge.broker.port), streams)
    if not confirmations.wait_for(points, timeout=300):
        raise SystemExit(f"end to end: only {confirmations.stored} of {points} points confirmed in 300 s")
    seconds = time.perf_counter() - start
    cpu = bridge.cpu_s() - cpu_before
    stored = sum(count(db, d) for d in devices)
    if stored != points:
        raise SystemExit(f"end to end: {stored} points in the database, {points} expected")
    return seconds, published, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--points", type=int, default=200_000, help="points in batched messages")
    parser.add_argument("--samples-per-message", type=int, default=100)
    parser.add_argument("--small", type=int, default=20_000, help="one-sample messages (0: skip)")
    parser.add_argument("--small-topics", type=int, default=4, help="devices (and generators) for those")
    parser.add_argument("--batch", type=int, default=5000, help="points per database write (both paths)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="soclab-bench-") as tmp,
        Mosquitto(Path(tmp) / "mqtt") as broker,
        InfluxDB1(Path(tmp) / "influx") as db,
    ):
        db.create_database(DB)
        settings = MqttSettings(host=broker.host, port=broker.port)
        per = args.samples_per_message
        batched = {"soclab/bench/pi-01/e2e/data": messages(args.points, per, "e2e")}
        small = {
            f"soclab/bench/pi-01/small{i}/data": messages(args.small // args.small_topics, 1, f"small{i}")
            for i in range(args.small_topics)
        }
        gen_batched = ceiling(lambda to: mosquitto_pub(settings, {to(t): p for t, p in batched.items()}))
        gen_small = (
            ceiling(lambda to: mosquitto_pub(settings, {to(t): p for t, p in small.items()}))
            if args.small
            else None
        )
        with V2WriteShim(db.url) as shim:
            ceiling_rate = direct(shim, db, args.points, args.batch)
            bridge = BridgeProcess(broker, shim, args.batch)
            confirmations = Confirmations(broker)
            try:
                seconds, published, cpu = end_to_end(db, bridge, confirmations, batched, args.points)
                small_result = (
                    end_to_end(db, bridge, confirmations, small, args.small) if args.small else None
                )
            finally:
                confirmations.close()
                bridge.stop()
    e2e = args.points / seconds
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} (2 cores)")
    print(f"points: {args.points}, per message: {per}, write batch: {args.batch}")
    print(f"direct batched write (influxdb-client -> InfluxDB): {ceiling_rate:10.0f} points/s")
    print(f"end to end (mosquitto_pub -> MQTT -> bridge -> DB): {e2e:10.0f} points/s")
    print(f"ratio end to end / direct:                          {e2e / ceiling_rate:10.2f}")
    print(f"  generator alone (no subscriber):                  {gen_batched.rate * per:10.0f} points/s")
    print(f"  generator during the run:                         {published.rate * per:10.0f} points/s")
    print(f"  bridge CPU per point (process, whole run):        {cpu / args.points * 1e6:10.2f} us")
    print(f"  bridge intake per point (decode, check, render):  {intake_cost(per):10.2f} us")
    if small_result is not None and gen_small is not None:
        seconds, published, cpu = small_result
        rate = args.small / seconds
        print(f"one-sample messages: {args.small} on {args.small_topics} topics")
        print(f"end to end:                                         {rate:10.0f} messages/s")
        print(f"  generator alone (no subscriber):                  {gen_small.rate:10.0f} messages/s")
        print(f"  ratio end to end / generator alone:               {rate / gen_small.rate:10.2f}")
        print(f"  bridge CPU per message (process, whole run):      {cpu / args.small * 1e6:10.1f} us")
        print(f"  bridge intake per message:                        {intake_cost(1):10.2f} us")


if __name__ == "__main__":
    main()
