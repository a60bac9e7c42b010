"""One misbehaving device floods the production broker: how late are the other devices' samples?

    make bench-flood                                  # 1,000,000 QoS 0 messages
    make bench-flood ARGS="--messages 300000"

Side by side in one run, each on a fresh production broker (compose/mosquitto/config: TLS,
passwords, ACL; only paths, port and, for the comparison, ``max_queued_messages`` changed), the
bridge as its own process and InfluxDB 1.6.7 behind the v2 shim:

- the committed limits, and ``max_queued_messages 1000000``, the limit before finding 8;
- a well-behaved device (``LagProbe``: one-sample messages at 10 Hz, QoS 1) measures each sample's
  lag from its time stamp to the bridge's storage confirmation: before, during and after the flood;
- a device account floods its own data topic with valid one-sample messages through
  ``mosquitto_pub -l`` (Mosquitto's C client, so the generator is not the limit).

Printed per configuration: the flood's rate, what the bridge stored of it, the broker's drop
notices, the probe's lag (p50, p99, max) in each period and whether every probe sample was
stored. The machine is noisy (2 cores shared): compare the configurations, not the absolutes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from soclab.dev.flood import LagProbe, data_lines, flood
from soclab.dev.localservices import InfluxDB1, V2WriteShim
from soclab.dev.localservices.production import MOSQUITTO_CONFIG, ProductionBroker

SITE, NODE = "bench", "pi-01"
BRIDGE, PROBE, FLOODER = "soclab-bridge", f"{SITE}/{NODE}/mppt", f"{SITE}/{NODE}/flood"


def config_with(folder: Path, max_queued: int | None) -> Path:
    """compose's broker configuration, with another max_queued_messages if given."""
    target = folder / "config"
    shutil.copytree(MOSQUITTO_CONFIG, target)
    if max_queued is not None:
        limits = target / "conf.d" / "20-limits.conf"
        text = re.sub(
            r"(?m)^max_queued_messages \d+$", f"max_queued_messages {max_queued}", limits.read_text()
        )
        limits.write_text(text)
    return target


def committed_max_queued() -> int:
    text = (MOSQUITTO_CONFIG / "conf.d" / "20-limits.conf").read_text()
    return int(re.search(r"(?m)^max_queued_messages (\d+)$", text)[1])  # type: ignore[index]


def run(
    folder: Path, db: InfluxDB1, shim: V2WriteShim, max_queued: int | None, args: argparse.Namespace
) -> None:
    name = f"flood{max_queued or 'committed'}"
    db.create_database(name)
    with ProductionBroker(
        folder, (BRIDGE, PROBE, FLOODER), config_dir=config_with(folder, max_queued)
    ) as prod:
        broker = prod.broker
        env = {
            **os.environ,
            **prod.accounts[BRIDGE].env(broker, "SOCLAB_BRIDGE_MQTT_"),
            "SOCLAB_BRIDGE_ID": "bench",
            "SOCLAB_BRIDGE_SITE": SITE,
            "SOCLAB_BRIDGE_INFLUX_URL": shim.url,
            "SOCLAB_BRIDGE_INFLUX_ORG": "-",
            "SOCLAB_BRIDGE_INFLUX_BUCKET": f"{name}/autogen",
            "SOCLAB_BRIDGE_INFLUX_TOKEN": "bench:bench",
            "SOCLAB_BRIDGE_LOG_LEVEL": "WARNING",
        }
        bridge = subprocess.Popen([sys.executable, "-m", "soclab.cloud.bridge"], env=env)
        try:
            time.sleep(2.0)  # the bridge subscribes
            probe = LagProbe(prod.accounts[PROBE].mqtt(broker), SITE, NODE, "mppt", rate_hz=10)
            with probe:
                time.sleep(args.baseline)
                flood_start = time.monotonic()
                flooder = prod.accounts[FLOODER]
                lines = data_lines(SITE, NODE, "flood", "mppt", args.messages)
                result = flood(flooder.mqtt(broker), f"{flooder.prefix}/data", lines)
                flood_end = time.monotonic()
                time.sleep(args.baseline)
            all_stored = probe.wait_confirmed(args.drain)
            drained = time.monotonic()
            if os.environ.get("FLOOD_DEBUG"):
                print(
                    subprocess.run(
                        f"ss -tnpi | grep -A1 {broker.port}", shell=True, capture_output=True, text=True
                    ).stdout
                )
            probe.close()
        finally:
            bridge.terminate()
            bridge.wait(timeout=30)
        log = broker.log_path.read_text(errors="replace")
    series = db.query("SELECT count(seq) FROM mppt WHERE device = 'flood'", db=name)
    stored_flood = int(series[0]["values"][0][1]) if series else 0
    label = f"max_queued_messages {max_queued:,}" if max_queued else f"committed ({committed_max_queued():,})"
    print(f"\n{label}")
    drops = log.count("Outgoing messages are being dropped")
    print(
        f"  flood: {result.messages:,} QoS 0 messages in {result.seconds:.1f} s "
        f"({result.rate:,.0f}/s); stored {stored_flood:,}; broker drop notices: {drops}"
    )
    print(f"  probe lag before: {probe.lags(end=flood_start).summary()}")
    print(f"  probe lag during: {probe.lags(flood_start, flood_end).summary()}")
    print(f"  probe lag after:  {probe.lags(flood_end).summary()}")
    print(
        f"  every probe sample stored: {all_stored} ({probe.confirmed}/{probe.sent},"
        f" {drained - flood_end:.1f} s after the flood ended; {probe.resent} sent again)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000, help="flood messages (default 1,000,000)")
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of probe before and after")
    parser.add_argument(
        "--drain", type=float, default=600.0, help="wait this long for the probe's last samples"
    )
    parser.add_argument(
        "--compare", type=int, default=1_000_000, help="max_queued_messages to compare with (0: none)"
    )
    args = parser.parse_args()
    print(__doc__.split("\n\n")[0])
    with tempfile.TemporaryDirectory(prefix="soclab-flood-") as tmp:
        folder = Path(tmp)
        with InfluxDB1(folder / "influx") as db, V2WriteShim(db.url) as shim:
            run(folder / "committed", db, shim, None, args)
            if args.compare:
                run(folder / "compare", db, shim, args.compare, args)


if __name__ == "__main__":
    main()
