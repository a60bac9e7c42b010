"""``soclab watch`` against a real (plain, local) Mosquitto: settings, exit codes, ``--json`` and
``--status``, and an intake that says when it falls behind instead of hiding it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from watchkit import data, status

from soclab.tools.watch.cli import EXIT_BROKER, EXIT_NOT_WELL, EXIT_OK, EXIT_SETTINGS, parser, watch_settings
from soclab.tools.watch.intake import Intake
from soclab.wire.mqtt import MqttSettings
from soclab.wire.settings import ConfigError

WATCH = [sys.executable, "-m", "soclab.tools.cli", "watch"]


def test_settings_from_the_file_then_the_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text('[mqtt]\nhost = "broker"\n[watch]\nsilent_s = 30.0\ndevice = "mppt*"\ncompact = true\n')
    args = parser().parse_args(["--config", str(config), "--silent-after", "7"])
    settings = watch_settings(args, env={"SOCLAB_WATCH_LAG_S": "2.5", "SOCLAB_WATCH_SILENT_S": "20"})
    assert (settings.silent_s, settings.lag_s, settings.device, settings.compact) == (7.0, 2.5, "mppt*", True)
    assert settings.thresholds().silent_s == 7.0
    config.write_text("[watch]\nsilent_after = 3\n")
    with pytest.raises(ConfigError, match="no setting 'silent_after'"):
        watch_settings(parser().parse_args(["--config", str(config)]), env={})
    with pytest.raises(ConfigError, match="refresh_s must be positive"):
        watch_settings(parser().parse_args(["--refresh", "0"]), env={})


def test_bad_settings_and_an_unreachable_broker_have_their_own_exit_codes(tmp_path: Path) -> None:
    bad = subprocess.run([*WATCH, "--status", "--refresh", "-1"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == EXIT_SETTINGS, bad.stderr
    assert "refresh_s must be positive" in bad.stderr
    closed = subprocess.run(
        [*WATCH, "--status", "--host", "127.0.0.1", "--port", "1"], capture_output=True, text=True, timeout=30
    )
    assert closed.returncode == EXIT_BROKER, closed.stderr
    assert "cannot reach the broker at 127.0.0.1:1" in closed.stderr


def test_status_exits_0_only_when_every_device_is_online_and_fresh(mosquitto, mqtt_client, site) -> None:
    publisher = mqtt_client(mosquitto)

    def publish_status(device: str, state: str, age_s: float = 0.0) -> None:
        payload = status(device, state, t=time.time() - age_s).replace(b'"lab1"', f'"{site}"'.encode())
        publisher.publish(
            f"soclab/{site}/pi-01/{device}/status", payload, qos=1, retain=True
        ).wait_for_publish(5)

    def run() -> subprocess.CompletedProcess[str]:
        command = [
            *WATCH,
            "--status",
            "--site",
            site,
            "--host",
            mosquitto.host,
            "--port",
            str(mosquitto.port),
        ]
        return subprocess.run([*command, "--wait", "0.5"], capture_output=True, text=True, timeout=30)

    nothing = run()
    assert nothing.returncode == EXIT_NOT_WELL
    assert "no device seen" in nothing.stdout
    publish_status("mppt", "online")
    publish_status("eload", "online")
    fine = run()
    assert fine.returncode == EXIT_OK, fine.stdout
    assert "all devices online and fresh" in fine.stdout
    publish_status("eload", "offline")
    publish_status("mppt", "online", age_s=60)
    sick = run()
    assert sick.returncode == EXIT_NOT_WELL, sick.stdout
    assert f"{site}/pi-01/eload: offline" in sick.stdout
    assert re.search(rf"{site}/pi-01/mppt: online, but nothing heard for 6\d s \(over 10 s\)", sick.stdout)
    for device in ("mppt", "eload"):  # leave no retained message behind
        publisher.publish(f"soclab/{site}/pi-01/{device}/status", b"", qos=1, retain=True).wait_for_publish(5)


def test_json_prints_one_line_per_sample_and_reports_bad_messages_on_stderr(
    mosquitto, mqtt_client, site
) -> None:
    command = [*WATCH, "--json", "--site", site, "--host", mosquitto.host, "--port", str(mosquitto.port)]
    watch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # connected and subscribed
        publisher = mqtt_client(mosquitto)
        good = data("mppt", [5, 6, 7]).replace(b'"lab1"', f'"{site}"'.encode())
        publisher.publish(f"soclab/{site}/pi-01/mppt/data", b"garbage", qos=1).wait_for_publish(5)
        publisher.publish(f"soclab/{site}/pi-01/mppt/data", good, qos=1).wait_for_publish(5)
        lines = [watch.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
    finally:
        watch.terminate()
        _, err = watch.communicate(timeout=10)
    samples = [json.loads(line) for line in lines]
    assert [s["seq"] for s in samples] == [5, 6, 7]
    assert samples[0] == {
        "site": site,
        "node": "pi-01",
        "device": "mppt",
        "kind": "mppt",
        "seq": 5,
        "t_ns": samples[0]["t_ns"],
        "values": {"bat_v": 12.505, "bat_a": -1.25},
    }
    assert f"malformed message on soclab/{site}/pi-01/mppt/data: not JSON" in err
    assert watch.returncode == 0


def test_the_intake_says_when_it_falls_behind_and_bounds_its_queue(mosquitto, mqtt_client, site) -> None:
    release = threading.Event()
    handled: list[str] = []

    def slow(topic: str, payload: bytes, arrived: float, retained: bool) -> None:
        release.wait(10)  # a handler that cannot keep up (until released)
        handled.append(topic)

    settings = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    intake = Intake(settings, slow, [f"soclab/{site}/#"], max_queued=100).start()
    try:
        time.sleep(0.5)
        publisher = mqtt_client(mosquitto)
        for i in range(150):
            publisher.publish(f"soclab/{site}/pi-01/mppt/data", str(i).encode(), qos=1)
        deadline = time.monotonic() + 10
        while intake.stats().received < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.2)
        stats = intake.stats()
        assert stats.connected
        assert stats.received == 150
        assert stats.queued == 100  # and one is being handled
        assert stats.dropped == 49
        assert stats.oldest_s > 2.0
        release.set()
        deadline = time.monotonic() + 10
        while len(handled) < 101 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(handled) == 101
        assert intake.stats().oldest_s == 0.0
    finally:
        release.set()
        intake.stop()


def test_the_intake_shows_a_lost_broker_and_takes_up_again_when_it_is_back(
    own_mosquitto, mqtt_client
) -> None:
    got: list[bytes] = []
    settings = MqttSettings(
        host=own_mosquitto.host, port=own_mosquitto.port, reconnect_min_s=1, reconnect_max_s=1
    )
    intake = Intake(settings, lambda t, p, a, r: got.append(p), ["soclab/+/+/+/data"]).start()
    try:
        own_mosquitto.stop()
        deadline = time.monotonic() + 10
        while intake.stats().connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not intake.stats().connected
        own_mosquitto.start()
        deadline = time.monotonic() + 15
        while not intake.stats().connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert intake.stats().connected
        publisher = mqtt_client(own_mosquitto)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:  # subscribed again after the reconnection
            publisher.publish("soclab/lab1/pi-01/mppt/data", b"after", qos=1).wait_for_publish(5)
            time.sleep(0.2)
        assert got[:1] == [b"after"]
    finally:
        intake.stop()
