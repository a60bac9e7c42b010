"""The fault campaign: the simulated lab produces data while real faults hit the pipeline.

Publishers reach the broker through a TCP proxy the test can cut (the lab's Wi-Fi); the bridge
connects directly. Faults, one after the other: broker stopped and restarted, broker kill -9,
InfluxDB stopped and restarted, bridge kill -9, publishers kill -9, network cut for longer than
the MQTT keepalive. After each, the recovery time is how long until every sample acquired
before the fault ended is in InfluxDB. At the end, every (device, seq) that a publisher assigned
is in InfluxDB exactly once, or still in its spool waiting for confirmation (never lost).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from proxy import TcpProxy

from soclab.dev.lab.cli import LabSettings, run_lab
from soclab.dev.localservices import InfluxDB1, Mosquitto, V2WriteShim

DEVICES = ("mppt", "eload", "labjack")  # device name = kind in the lab
RECOVERY_LIMIT_S = 120.0
DB = "faults"


def spool(var: Path, device: str) -> contextlib.closing[sqlite3.Connection]:
    """The publisher's spool, read-only (SQLite WAL lets us read while it writes)."""
    return contextlib.closing(sqlite3.connect(f"file:{var / 'spool' / device}.sqlite?mode=ro", uri=True))


def assigned(var: Path, device: str) -> int:
    """The publisher's next sequence number: samples 0..n-1 exist (0 before its spool exists)."""
    if not (var / "spool" / f"{device}.sqlite").exists():
        return 0
    with spool(var, device) as db:
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0  # the file exists, its tables are still being created by the publisher
            raise
        return int(row[0]) if row else 0


def spooled(var: Path, device: str) -> set[int]:
    with spool(var, device) as db:
        return {row[0] for row in db.execute("SELECT seq FROM samples")}


def stored_seqs(influx: InfluxDB1, device: str) -> list[int]:
    rows = []
    for series in influx.query(f"SELECT seq FROM {device} WHERE device = '{device}'", db=DB):
        rows.extend(int(v[1]) for v in series["values"])
    return rows


def stored_below(influx: InfluxDB1, device: str, limit: int) -> int:
    series = influx.query(
        f"SELECT count(seq) FROM {device} WHERE device = '{device}' AND seq < {limit}", db=DB
    )
    return int(series[0]["values"][0][1]) if series else 0


def wait_caught_up(influx: InfluxDB1, var: Path, check_alive: Callable[[], None]) -> float:
    """Seconds until every sample assigned by now is stored."""
    start = time.monotonic()
    targets = {d: assigned(var, d) for d in DEVICES}
    while any(stored_below(influx, d, n) < n for d, n in targets.items()):
        check_alive()
        if time.monotonic() - start > RECOVERY_LIMIT_S:
            missing = {d: n - stored_below(influx, d, n) for d, n in targets.items()}
            pytest.fail(f"not caught up after {RECOVERY_LIMIT_S} s: missing {missing}")
        time.sleep(0.25)
    return time.monotonic() - start


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_nothing_is_lost_or_doubled_under_real_faults(tmp_path, campaign_report):
    var = tmp_path / "var"
    with (
        Mosquitto(tmp_path / "mosquitto") as broker,
        InfluxDB1(tmp_path / "influxdb") as influx,
        V2WriteShim(influx.url) as shim,
    ):
        influx.create_database(DB)
        proxy = TcpProxy((broker.host, broker.port))
        settings = LabSettings(
            site="faults",
            node="pi-f",
            mqtt={"host": broker.host, "port": broker.port},
            edge_mqtt={"host": proxy.host, "port": proxy.port},
            influxdb={"url": shim.url, "org": "soclab", "bucket": DB},
            simulation={"mppt_period_s": 0.1},
            env={
                "SOCLAB_BRIDGE_INFLUX_TOKEN": "soclab:unused",
                "SOCLAB_BRIDGE_MQTT_RECONNECT_MAX_S": "2",
                "SOCLAB_BRIDGE_RETRY_MAX_S": "2",
                "SOCLAB_MQTT_KEEPALIVE_S": "5",
                "SOCLAB_MQTT_RECONNECT_MAX_S": "2",
                "SOCLAB_MQTT_RESEND_GRACE_S": "3",
            },
        )
        with run_lab(settings, var) as (_view, children):

            def check_alive() -> None:
                assert not children.failed(), f"a process died: {children.failed()}"

            def kill_publishers() -> None:
                for device in DEVICES:
                    children.kill(device)

            def restart_publishers() -> None:
                for device in DEVICES:
                    children.restart(device)

            faults: list[tuple[str, Callable[[], None], float, Callable[[], None]]] = [
                ("broker stopped (SIGTERM)", broker.stop, 5.0, broker.start),
                ("broker kill -9", broker.kill, 3.0, broker.start),
                ("InfluxDB stopped", influx.stop, 8.0, influx.start),
                ("InfluxDB kill -9", influx.kill, 3.0, influx.start),
                ("bridge kill -9", lambda: children.kill("bridge"), 3.0, lambda: children.restart("bridge")),
                ("publishers kill -9", kill_publishers, 3.0, restart_publishers),
                ("network cut (edge-broker)", proxy.cut, 30.0, proxy.restore),
            ]
            deadline = time.monotonic() + 30
            while not all(assigned(var, d) > 10 for d in DEVICES):  # every device's data is flowing
                check_alive()
                assert time.monotonic() < deadline, "the lab did not start producing"
                time.sleep(0.2)
            wait_caught_up(influx, var, check_alive)
            results = []
            for name, inject, hold_s, recover in faults:
                time.sleep(2.0)  # traffic before the fault
                inject()
                time.sleep(hold_s)
                recover()
                results.append((name, hold_s, wait_caught_up(influx, var, check_alive)))
        proxy.close()
        # The lab stopped in order: publishers flushed, then the bridge. Now count everything.
        lines = [f"{'fault':<28}{'held s':>8}{'recovery s':>12}"]
        lines += [f"{name:<28}{hold:>8.0f}{recovery:>12.1f}" for name, hold, recovery in results]
        lines.append(f"{'device':<10}{'produced':>10}{'stored':>10}{'in spool':>10}{'lost':>6}{'doubled':>9}")
        totals = {"lost": 0, "doubled": 0}
        for device in DEVICES:
            produced = assigned(var, device)
            seqs = stored_seqs(influx, device)
            stored = set(seqs)
            waiting = spooled(var, device)
            lost = set(range(produced)) - stored - waiting
            doubled = len(seqs) - len(stored)
            assert stored <= set(range(produced)), f"{device}: stored a seq never assigned"
            totals["lost"] += len(lost)
            totals["doubled"] += doubled
            lines.append(
                f"{device:<10}{produced:>10}{len(stored):>10}{len(waiting):>10}{len(lost):>6}{doubled:>9}"
            )
        campaign_report.extend(lines)
        assert totals == {"lost": 0, "doubled": 0}, "\n".join(lines)
