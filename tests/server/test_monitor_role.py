"""The monitor role on the server's broker: monitor/<name> reads every soclab topic and the
bridges' status and dead letters, and may publish nothing at all.

The broker runs the committed configuration after ``mqtt-user.sh acl-monitor`` added the
monitor's block to the committed ACL (``monitor_broker``), as on a server. Mosquitto 2.0 drops a
denied PUBLISH silently (a QoS 1 publisher still gets its PUBACK), so "refused" is shown by
readers that receive nothing: the monitor's attempts are all acknowledged first (the broker has
handled each, and would have queued it for the readers, before it acknowledges), then a device
publishes an allowed message, which must be the first and only one the readers get.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from serverkit import BRIDGE, DEVICES, MONITORS, MQTT_USER_SH, QUIET_S, Account, TlsClient

from soclab.dev.localservices import Mosquitto

MPPT, ELOAD = DEVICES
MONITOR, READER, LATE = MONITORS[:3]  # a connection each


def test_mqtt_user_sh_grants_a_monitor_once_below_the_acls_monitors_line(tmp_path: Path) -> None:
    acl = tmp_path / "mosquitto" / "config" / "acl"
    acl.parent.mkdir(parents=True)
    committed = (MQTT_USER_SH.parent / "config" / "acl").read_text(encoding="utf-8")
    acl.write_text(committed, encoding="utf-8")
    script = tmp_path / "mosquitto" / "mqtt-user.sh"
    script.write_bytes(MQTT_USER_SH.read_bytes())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(script), *args], capture_output=True, text=True, timeout=30)

    assert run("acl-monitor", "alice").returncode == 0
    again = run("acl-monitor", "alice")
    assert again.returncode == 0
    assert "already" in again.stdout
    bad = run("acl-monitor", "Alice/../x")
    assert bad.returncode == 2
    assert "must be" in bad.stderr
    text = acl.read_text(encoding="utf-8")
    assert text.startswith(committed.rstrip("\n").rsplit("\n", 1)[0])  # the committed part unchanged
    assert text.count("user monitor/alice\n") == 1
    block = text.split("# monitors:\n", 1)[1]
    assert block.splitlines()[:5] == [
        "user monitor/alice",
        "topic read soclab/#",
        "topic read soclab-bridge/+/status",
        "topic read soclab-bridge/+/deadletter",
        "topic deny soclab/monitor/alice/#",
    ]


def test_a_monitor_reads_every_soclab_topic_and_the_bridges_status_and_dead_letters(
    monitor_broker: Mosquitto, accounts: dict[str, Account], tls_client: Callable[..., TlsClient]
) -> None:
    monitor = tls_client(monitor_broker, accounts[MONITOR])
    assert not monitor.connect().is_failure
    for topic in ("soclab/#", "soclab-bridge/+/status", "soclab-bridge/+/deadletter"):
        assert not monitor.subscribe(topic).is_failure
    sent = set()
    for user in DEVICES:
        device = tls_client(monitor_broker, accounts[user])
        assert not device.connect().is_failure
        for kind in ("data", "status"):
            sent.add((f"soclab/{user}/{kind}", f"{user} {kind}".encode()))
            device.publish(f"soclab/{user}/{kind}", f"{user} {kind}".encode())
    bridge = tls_client(monitor_broker, accounts[BRIDGE])
    assert not bridge.connect().is_failure
    for topic in (
        f"soclab/{MPPT}/stored",
        f"soclab/{MPPT}/deadletter",
        "soclab-bridge/lab/status",
        "soclab-bridge/lab/deadletter",
    ):
        sent.add((topic, b"from the bridge"))
        bridge.publish(topic, b"from the bridge")
    got = set()
    while len(got) < len(sent):
        message = monitor.received()
        assert message is not None, f"received {sorted(got)}, expected {sorted(sent)}"
        got.add((message.topic, message.payload))
    assert got == sent


def test_a_monitor_publishes_nowhere(
    monitor_broker: Mosquitto, accounts: dict[str, Account], tls_client: Callable[..., TlsClient]
) -> None:
    # Readers of everything the monitor might reach: another monitor (it reads all below soclab/
    # and the bridges' topics), the bridge, and the device itself.
    reader = tls_client(monitor_broker, accounts[READER])
    assert not reader.connect().is_failure
    for topic in ("soclab/#", "soclab-bridge/+/status", "soclab-bridge/+/deadletter"):
        assert not reader.subscribe(topic).is_failure
    bridge = tls_client(monitor_broker, accounts[BRIDGE])
    assert not bridge.connect().is_failure
    assert not bridge.subscribe("soclab-bridge/#").is_failure
    assert not bridge.subscribe("soclab/+/+/+/data").is_failure
    mppt = tls_client(monitor_broker, accounts[MPPT])
    assert not mppt.connect().is_failure
    assert not mppt.subscribe(f"soclab/{MPPT}/stored").is_failure

    monitor = tls_client(monitor_broker, accounts[MONITOR])
    assert not monitor.connect().is_failure
    forbidden = [
        f"soclab/{MPPT}/{kind}" for kind in ("data", "status", "stored", "deadletter", "cmd", "cmd/result")
    ]
    forbidden += [
        f"soclab/{MONITOR}/data",  # what the device patterns (soclab/%u/data) would grant it
        f"soclab/{MONITOR}/status",
        f"soclab/{MONITOR.split('/')[1]}/x/y/data",
        "soclab-bridge/lab/status",
        "soclab-bridge/lab/deadletter",
        "soclab/lab1/pi-01/run/cmd",
    ]
    for topic in forbidden:
        monitor.client.publish(topic, b"qos0 " + topic.encode(), qos=0)
        monitor.client.publish(topic, b"retained " + topic.encode(), qos=0, retain=True)
        monitor.publish(topic, b"qos1 " + topic.encode())  # waits for the PUBACK
    mppt.publish(f"soclab/{MPPT}/data", b"allowed")
    for who in (reader, bridge):
        first = who.received()
        assert first is not None, "the allowed message did not arrive"
        assert (first.topic, first.payload) == (f"soclab/{MPPT}/data", b"allowed"), (
            f"{first.topic} came first"
        )
    for who in (reader, bridge, mppt):
        assert who.received(QUIET_S) is None
    # Nothing was retained either: a new subscriber gets nothing.
    late = tls_client(monitor_broker, accounts[LATE])
    assert not late.connect().is_failure
    assert not late.subscribe("soclab/#").is_failure
    assert not late.subscribe("soclab-bridge/+/status").is_failure
    assert late.received(QUIET_S) is None
