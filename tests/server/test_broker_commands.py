"""Who may command whom, on the server's broker: the committed configuration (compose/mosquitto)
with one operator's block, as ``mqtt-user.sh acl-operator alice`` adds it, on Debian's Mosquitto.

Operators publish commands to every device and to every node's run controller and read all;
a device reads only its own commands and answers only on its own ``cmd/result``; the run
controller (device ``run`` of its node) writes its journal; a device commands nobody; the bridge
cannot command. A denied PUBLISH is dropped silently under MQTT 3.1.1, so a refusal is shown by a
subscriber that never receives the message after a positive control from the same client."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from serverkit import (
    BRIDGE,
    DEVICES,
    MOSQUITTO_CONFIG,
    MOSQUITTO_PASSWD,
    MQTT_USER_SH,
    QUIET_S,
    Account,
    TlsClient,
    make_certs,
)

from soclab.dev.localservices import Mosquitto

MPPT, ELOAD = DEVICES
RUN = "lab1/pi-01/run"
OPERATOR = "operator/alice"


@pytest.fixture(scope="module")
def command_accounts(
    pki: Path, accounts: dict[str, Account], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Account]:
    made = dict(accounts)
    for user in (RUN, OPERATOR):
        make_certs(pki, "client", user)
        made[user] = Account(user, secrets.token_urlsafe(24), pki / "clients" / user.replace("/", "."))
    return made


@pytest.fixture(scope="module")
def command_broker(
    tmp_path_factory: pytest.TempPathFactory, pki: Path, command_accounts: dict[str, Account]
) -> Iterator[Mosquitto]:
    folder = tmp_path_factory.mktemp("command-broker")
    compose = folder / "compose" / "mosquitto"
    config = compose / "config"
    shutil.copytree(MOSQUITTO_CONFIG, config)
    shutil.copy(MQTT_USER_SH, compose / "mqtt-user.sh")
    grant = ["sh", str(compose / "mqtt-user.sh"), "acl-operator", "alice"]
    subprocess.run(grant, check=True, capture_output=True, timeout=30)
    passwd = folder / "passwd"
    passwd.mkdir()
    (passwd / "passwd").touch(mode=0o600)
    for account in command_accounts.values():
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd / "passwd"), account.user, account.password],
                       check=True, capture_output=True, timeout=30)  # fmt: skip
    broker = Mosquitto.from_project_config(folder / "broker", config_dir=config, passwd_dir=passwd,
                                           certs_dir=pki / "server")  # fmt: skip
    with broker:
        yield broker


@pytest.fixture
def connect(
    command_broker: Mosquitto, command_accounts: dict[str, Account], tls_client: Callable[..., TlsClient]
) -> Callable[[str], TlsClient]:
    def make(user: str) -> TlsClient:
        client = tls_client(command_broker, command_accounts[user])
        assert not client.connect().is_failure
        return client

    return make


def test_mqtt_user_sh_grants_an_operator_once_below_the_acls_operators_line(tmp_path: Path) -> None:
    committed = (MOSQUITTO_CONFIG / "acl").read_text(encoding="utf-8")
    assert "user operator/" not in committed
    script = tmp_path / "mosquitto" / "mqtt-user.sh"
    (tmp_path / "mosquitto" / "config").mkdir(parents=True)
    (tmp_path / "mosquitto" / "config" / "acl").write_text(committed, encoding="utf-8")
    script.write_bytes(MQTT_USER_SH.read_bytes())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(script), *args], capture_output=True, text=True, timeout=30)

    assert run("acl-operator", "alice").returncode == 0
    assert "already" in run("acl-operator", "alice").stdout
    bad = run("acl-operator", "Alice;#")
    assert bad.returncode == 2
    assert "must be" in bad.stderr
    text = (tmp_path / "mosquitto" / "config" / "acl").read_text(encoding="utf-8")
    assert text.count("user operator/alice\n") == 1
    assert text.split("# operators:\n", 1)[1].splitlines()[:7] == [
        "user operator/alice",
        "topic write soclab/+/+/+/cmd",
        "topic write soclab/+/+/+/replay",
        "topic read soclab/#",
        "topic read soclab-bridge/+/status",
        "topic read soclab-bridge/+/deadletter",
        "topic deny soclab/operator/alice/#",
    ]


def test_an_operator_commands_any_device_and_run_controller(connect: Callable[[str], TlsClient]) -> None:
    operator = connect(OPERATOR)
    devices = {user: connect(user) for user in (MPPT, ELOAD, RUN)}
    for user, device in devices.items():
        assert not device.subscribe(f"soclab/{user}/cmd").is_failure
    for user in devices:
        operator.publish(f"soclab/{user}/cmd", f"to {user}".encode())
    for user, device in devices.items():
        message = device.received()
        assert message is not None, f"{user} did not get its command"
        assert message.payload == f"to {user}".encode()


def test_a_device_reads_only_its_own_commands_and_commands_nobody(
    connect: Callable[[str], TlsClient],
) -> None:
    operator, mppt, eload = connect(OPERATOR), connect(MPPT), connect(ELOAD)
    assert not eload.subscribe(f"soclab/{ELOAD}/cmd").is_failure
    mppt.subscribe(f"soclab/{ELOAD}/cmd")  # granted by 2.0.11's SUBACK; the ACL filters each delivery
    mppt.subscribe("soclab/+/+/+/cmd")
    for topic in (f"soclab/{ELOAD}/cmd", f"soclab/{MPPT}/cmd", f"soclab/{RUN}/cmd"):
        mppt.publish(topic, b"from a device")  # a device may command nobody, not even itself
    operator.publish(f"soclab/{ELOAD}/cmd", b"from the operator")
    first = eload.received()
    assert first is not None
    assert first.payload == b"from the operator", "a device's command arrived"
    assert eload.received(QUIET_S) is None
    assert mppt.received(QUIET_S) is None, "a device read another device's command"


def test_results_and_the_journal_go_only_below_the_devices_own_prefix(
    connect: Callable[[str], TlsClient],
) -> None:
    operator, eload, run, bridge = connect(OPERATOR), connect(ELOAD), connect(RUN), connect(BRIDGE)
    for reader in (operator, bridge):
        assert not reader.subscribe("soclab/+/+/+/cmd/result").is_failure
        assert not reader.subscribe("soclab/+/+/+/journal").is_failure
    eload.publish(f"soclab/{MPPT}/cmd/result", b"forged result")  # someone else's result
    eload.publish(f"soclab/{MPPT}/journal", b"forged journal")
    eload.publish(f"soclab/{ELOAD}/cmd/result", b"eload result")
    run.publish(f"soclab/{RUN}/journal", b"run journal")
    for reader in (operator, bridge):
        got = [reader.received(), reader.received()]
        assert [m.payload for m in got if m is not None] == [b"eload result", b"run journal"]
        assert reader.received(QUIET_S) is None


def test_the_bridge_cannot_command(connect: Callable[[str], TlsClient]) -> None:
    bridge, eload, operator = connect(BRIDGE), connect(ELOAD), connect(OPERATOR)
    assert not eload.subscribe(f"soclab/{ELOAD}/cmd").is_failure
    bridge.publish(f"soclab/{ELOAD}/cmd", b"from the bridge")
    operator.publish(f"soclab/{ELOAD}/cmd", b"from the operator")
    first = eload.received()
    assert first is not None
    assert first.payload == b"from the operator"
    assert eload.received(QUIET_S) is None


def test_an_operator_replays_recorded_data_a_device_cannot(connect: Callable[[str], TlsClient]) -> None:
    operator, mppt, bridge = connect(OPERATOR), connect(MPPT), connect(BRIDGE)
    assert not bridge.subscribe("soclab/+/+/+/replay").is_failure
    mppt.publish(f"soclab/{MPPT}/replay", b"from the device")
    operator.publish(f"soclab/{MPPT}/replay", b"from the operator")
    first = bridge.received()
    assert first is not None
    assert first.payload == b"from the operator"
    assert bridge.received(QUIET_S) is None
