"""The publisher as the Pi runs it: its own process, configured by file and environment. Its
retained status says online, and offline when it stops (reason stopped) or dies (the will)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from soclab.dev.sim.battery import Battery
from soclab.dev.sim.instruments.libresolar_mppt import MpptSimulator

CONFIG = """
[source]
site = "{site}"
node = "pi-01"
device = "mppt"
kind = "mppt"

[instrument]
port = "{port}"

[status]
interval_s = 0.5
"""


def latest_status(collector, state: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = json.loads(collector.wait_for(len(collector.seen) + 1, timeout)[-1].payload)
        if body["state"] == state:
            return body
        assert time.monotonic() < deadline, f"no {state!r} status"


def start(tmp_path, site, mosquitto, sim) -> subprocess.Popen[bytes]:
    config = tmp_path / "mppt.toml"
    config.write_text(CONFIG.format(site=site, port=sim.port.link))
    env = {
        **os.environ,
        "SOCLAB_MQTT_HOST": mosquitto.host,
        "SOCLAB_MQTT_PORT": str(mosquitto.port),
        "SOCLAB_SPOOL_PATH": str(tmp_path / "spool.sqlite"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "soclab.edge.publisher", "--config", str(config)],
        env=env,
        stderr=open(tmp_path / "publisher.log", "ab"),
    )


def test_status_online_then_offline_stopped_then_offline_lost(tmp_path, mosquitto, site, mqtt_collector):
    status = mqtt_collector(mosquitto, f"soclab/{site}/pi-01/mppt/status")
    with MpptSimulator(Battery(), tmp_path / "mppt", period_s=0.2) as sim:
        publisher = start(tmp_path, site, mosquitto, sim)
        online = latest_status(status, "online")
        assert online["instrument"]  # what the driver learnt from the device
        assert online["gauges"]["seq_next"] >= 0
        publisher.send_signal(signal.SIGTERM)
        assert publisher.wait(timeout=30) == 0
        assert latest_status(status, "offline")["reason"] == "stopped"

        publisher = start(tmp_path, site, mosquitto, sim)
        latest_status(status, "online")
        publisher.kill()  # kill -9: no goodbye; the broker publishes the will
        publisher.wait(timeout=30)
        assert latest_status(status, "offline")["reason"] == "connection-lost"


def test_a_bad_configuration_is_named_and_nothing_starts(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[source]\nsite = "lab 1"\nnode = "pi"\ndevice = "mppt"\nkind = "mppt"\n')
    result = subprocess.run(
        [sys.executable, "-m", "soclab.edge.publisher", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "site 'lab 1' is not a valid topic level" in result.stderr
