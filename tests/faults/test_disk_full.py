"""The edge's disk full (issue 11, finding 13), on a real full filesystem.

The publisher runs as on the Pi (its own process, the MPPT simulated on a pseudo-terminal), its
spool on a small tmpfs that only it sees: the publisher starts in a mount namespace of its own
(``unshare``; with a user namespace when the test is not root) that mounts the tmpfs and then
runs it, so the machine's mounts never change and nothing is left mounted if the test dies. The
test reaches that filesystem through ``/proc/<pid>/root`` to fill it and to free it.

The bridge is stopped first, so the spool holds samples not yet confirmed; then the disk fills
while the instrument keeps publishing. What the lab gets: acquisition goes on (readings wait in
memory), the status and the log say so, nothing spooled is lost, and when space returns the
publisher writes what waited, by itself; at the end every sample the MPPT published is stored,
once, under consecutive sequence numbers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from soclab.dev.sim.battery import Battery
from soclab.dev.sim.instruments.libresolar_mppt import MpptSimulator

WAIT_S = 30.0
TMPFS_SIZE = "8m"

CONFIG = """
[source]
site = "{site}"
node = "pi-01"
device = "mppt"
kind = "mppt"

[instrument]
port = "{port}"

[mqtt]
host = "{host}"
port = {mqtt_port}

[spool]
path = "{spool}"

[status]
interval_s = 0.3
"""


def in_own_mount_namespace() -> list[str]:
    """The command prefix that runs a command in a new mount namespace allowed to mount a tmpfs."""
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    if os.geteuid() == 0:
        return [unshare, "--mount", "--propagation", "private"]
    return [unshare, "--mount", "--map-root-user", "--propagation", "private"]


class Status:
    """The publisher's retained status, as a subscriber reads it."""

    def __init__(self, collector: Any) -> None:
        self.collector = collector

    def latest(self) -> dict[str, Any]:
        while not self.collector.inbox.empty():
            self.collector.seen.append(self.collector.inbox.get())
        return json.loads(self.collector.seen[-1].payload) if self.collector.seen else {}

    def until(self, check: Callable[[dict[str, Any]], Any], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while True:
            status = self.latest()
            if status and check(status):
                return status
            assert time.monotonic() < deadline, f"not true after {WAIT_S} s: {what}; status {status}"
            time.sleep(0.05)


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * size
            try:
                while True:
                    f.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler


@pytest.fixture
def publisher_on_small_disk(
    tmp_path: Path, mosquitto, site
) -> Iterator[Callable[[MpptSimulator], tuple[subprocess.Popen[bytes], Path]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(sim: MpptSimulator) -> tuple[subprocess.Popen[bytes], Path]:
        mount = tmp_path / "spoolfs"
        mount.mkdir()
        config = tmp_path / "mppt.toml"
        config.write_text(
            CONFIG.format(
                site=site,
                port=sim.port.link,
                host=mosquitto.host,
                mqtt_port=mosquitto.port,
                spool=mount / "mppt.sqlite",
            )
        )
        script = 'mount -t tmpfs -o "size=$1" soclab-test-spool "$2" && shift 2 && exec "$@"'
        command = [
            *in_own_mount_namespace(),
            "sh", "-c", script, "sh", TMPFS_SIZE, str(mount),
            sys.executable, "-m", "soclab.edge.publisher", "--config", str(config),
        ]  # fmt: skip
        log = open(tmp_path / "publisher.log", "ab")  # noqa: SIM115 - the process writes it
        proc = subprocess.Popen(command, stderr=log, stdout=log)
        started.append(proc)
        inside = Path(f"/proc/{proc.pid}/root") / mount.relative_to("/")
        deadline = time.monotonic() + WAIT_S
        while not (inside / "mppt.sqlite").exists():
            if proc.poll() is not None:
                text = (tmp_path / "publisher.log").read_text(errors="replace")
                if "mount" in text or "unshare" in text:
                    pytest.skip(f"this machine lets no test mount a tmpfs: {text.strip()[-300:]}")
                pytest.fail(f"the publisher ended at start: {text[-2000:]}")
            assert time.monotonic() < deadline, "no spool on the small filesystem"
            time.sleep(0.05)
        return proc, inside

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_a_full_disk_holds_readings_says_so_and_loses_nothing(
    tmp_path: Path, mosquitto, influxdb, site, mqtt_collector, start_bridge, publisher_on_small_disk
) -> None:
    status = Status(mqtt_collector(mosquitto, f"soclab/{site}/pi-01/mppt/status"))
    bridge = start_bridge(mosquitto, influxdb, site)
    with MpptSimulator(Battery(), tmp_path / "mppt", period_s=0.05) as sim:
        proc, spool_fs = publisher_on_small_disk(sim)
        status.until(lambda s: s["counters"].get("samples_confirmed", 0) >= 20, "samples stored")
        bridge.stop()  # from now on the spool holds what it published: nothing is confirmed
        status.until(lambda s: s["gauges"]["spool_depth"] >= 20, "samples waiting in the spool")

        filler = fill(spool_fs)
        full = status.until(lambda s: s["gauges"]["spool_held_samples"] >= 20, "readings held in memory")
        assert "full" in full["last_error"]
        assert full["gauges"]["spool_unwritable_s"] > 0
        assert full["counters"]["spool_write_errors"] >= 1
        read_then = full["counters"]["samples_read"]
        status.until(lambda s: s["counters"]["samples_read"] >= read_then + 40, "acquisition going on")
        assert proc.poll() is None

        filler.unlink()  # space returns
        back = status.until(lambda s: s["gauges"]["spool_held_samples"] == 0, "the held readings written")
        assert back["gauges"]["spool_unwritable_s"] is None
        assert back["last_error"] is None

        start_bridge(mosquitto, influxdb, site)  # the same session: it gets what waited at the broker
        final = status.until(
            lambda s: s["gauges"]["spool_depth"] <= 2 and s["counters"]["samples_confirmed"] >= 200,
            "everything stored",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    log = (tmp_path / "publisher.log").read_text()
    assert log.count("event=spool_unwritable") >= 1
    assert "event=spool_writable_again" in log
    last = status.latest()
    assert last["state"] == "offline"
    assert last["counters"]["samples_lost_unspooled"] == 0
    numbered = last["gauges"]["seq_next"]
    assert numbered == last["counters"]["samples_read"]  # every reading got its sequence number
    waiting = last["gauges"]["spool_depth"]  # not confirmed at the stop: kept in the spool
    rows = influxdb.wait_for_rows("SELECT seq FROM mppt", numbered - waiting)
    seqs = [int(r["seq"]) for r in rows]
    assert len(seqs) == len(set(seqs)), "a sample stored twice"
    assert set(seqs) <= set(range(numbered))
    assert numbered - len(seqs) <= waiting, "a sample lost"
    assert final["counters"]["spool_write_errors"] >= 1
