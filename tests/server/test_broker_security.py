"""The server's broker, as configured in compose/mosquitto/config, against a real Mosquitto.

Debian's Mosquitto (2.0.11) runs the committed top file with only its paths and port changed,
the committed conf.d/ and acl, a password file made here by mosquitto_passwd and certificates
made by compose/mosquitto/make-certs.sh. A denied PUBLISH is dropped silently under MQTT 3.1.1
(the client still gets its PUBACK), so "cannot publish" is shown by a subscriber that never
receives the message, after a positive control from the same client arrived: messages of one
client at one QoS arrive in order, so a dropped message would have come first.
"""

from __future__ import annotations

import queue
import re
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from serverkit import (
    BRIDGE,
    DEVICES,
    HEALTH,
    MONITOR,
    MOSQUITTO_CONFIG,
    QUIET_S,
    Account,
    TlsClient,
    connack,
    make_certs,
)

from soclab.dev.localservices import Mosquitto
from soclab.dev.localservices.mosquitto import CONTAINER_FOLDERS, project_config

MPPT, ELOAD = DEVICES

# Settings that belong to a listener: in a file of conf.d/ they would open a default listener.
LISTENER_SETTINGS = {
    "listener", "port", "bind_address", "bind_interface", "cafile", "capath", "certfile", "keyfile",
    "crlfile", "ciphers", "ciphers_tls1.3", "dhparamfile", "require_certificate", "tls_version",
    "use_identity_as_username", "use_subject_as_username", "psk_hint", "protocol", "socket_domain",
    "mount_point", "max_connections", "http_dir", "use_username_as_clientid", "tls_engine",
}  # fmt: skip


def test_the_tests_broker_runs_the_committed_files_with_only_paths_and_port_changed(
    secure_broker: Mosquitto,
) -> None:
    committed = (MOSQUITTO_CONFIG / "mosquitto.conf").read_text(encoding="utf-8").splitlines()
    used = secure_broker.conf_path.read_text(encoding="utf-8").splitlines()
    assert used[0].startswith("user ")
    assert len(used) == len(committed) + 1
    changed = [(c, u) for c, u in zip(committed, used[1:], strict=True) if c != u]
    for before, after in changed:
        assert before.split()[0] == after.split()[0], f"{before!r} became {after!r}"
        assert before in ("listener 8883", "log_dest stdout") or any(f in before for f in CONTAINER_FOLDERS)
    assert f"include_dir {MOSQUITTO_CONFIG / 'conf.d'}" in used
    assert f"acl_file {MOSQUITTO_CONFIG / 'acl'}" in used


def test_the_broker_opens_only_its_tls_listener(secure_broker: Mosquitto) -> None:
    log = secure_broker.log_path.read_text(encoding="utf-8")
    ports = re.findall(r"Opening ipv[46] listen socket on port (\d+)", log)
    assert ports, log
    assert set(ports) == {str(secure_broker.port)}, log


def test_conf_d_holds_no_listener_setting() -> None:
    for path in sorted((MOSQUITTO_CONFIG / "conf.d").glob("*.conf")):
        for line in path.read_text(encoding="utf-8").splitlines():
            words = line.split()
            if words and not words[0].startswith("#"):
                assert words[0] not in LISTENER_SETTINGS, f"{path.name}: {line!r} belongs after 'listener'"


def test_project_config_refuses_a_file_without_the_expected_listener(tmp_path: Path) -> None:
    folders = {f: tmp_path for f in CONTAINER_FOLDERS}
    text = (MOSQUITTO_CONFIG / "mosquitto.conf").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="listener 8883"):
        project_config(
            text.replace("listener 8883", "listener 1883"),
            port=1,
            host="127.0.0.1",
            folders=folders,
            log_path=tmp_path,
        )
    with pytest.raises(ValueError, match="/mosquitto/elsewhere"):
        project_config(
            text + "\nacl_file /mosquitto/elsewhere/acl\n",
            port=1,
            host="127.0.0.1",
            folders=folders,
            log_path=tmp_path,
        )


def test_the_password_file_holds_hashes_made_by_mosquitto_passwd(
    passwd_dir: Path, accounts: dict[str, Account]
) -> None:
    text = (passwd_dir / "passwd").read_text(encoding="utf-8")
    for account in accounts.values():
        (line,) = [line for line in text.splitlines() if line.startswith(account.user + ":")]
        assert line.split(":", 1)[1].startswith("$7$")  # PBKDF2-SHA512
        assert account.password not in text


def test_anonymous_and_wrong_passwords_are_refused(
    secure_broker: Mosquitto, accounts: dict[str, Account], tls_client: Callable[..., TlsClient]
) -> None:
    mppt = accounts[MPPT]
    anonymous = tls_client(secure_broker, mppt, user="")  # a valid certificate, no user name
    anonymous.client.username_pw_set(None)
    assert "authori" in _refusal(anonymous.connect()).lower()
    _refusal(tls_client(secure_broker, mppt, password=mppt.password + "x").connect())
    _refusal(tls_client(secure_broker, mppt, password=accounts[ELOAD].password).connect())
    right = tls_client(secure_broker, mppt)
    assert not right.connect().is_failure


def test_a_device_publishes_only_below_its_own_prefix(
    secure_broker: Mosquitto, accounts: dict[str, Account], tls_client: Callable[..., TlsClient]
) -> None:
    bridge = tls_client(secure_broker, accounts[BRIDGE])
    assert not bridge.connect().is_failure
    for topic in ("soclab/+/+/+/data", "soclab/+/+/+/status", "soclab/+/+/+/stored"):
        assert not bridge.subscribe(topic).is_failure
    mppt = tls_client(secure_broker, accounts[MPPT])
    assert not mppt.connect().is_failure
    forbidden = (
        f"soclab/{ELOAD}/data",  # another device of the same node
        "soclab/lab2/pi-01/mppt/data",  # the same device name elsewhere
        f"soclab/{MPPT}/stored",  # its own confirmations are the bridge's to send
        f"soclab/{MPPT}/extra/data",  # deeper below its prefix than the layout allows
    )
    for topic in forbidden:
        mppt.publish(topic, b"forbidden " + topic.encode())
    allowed = f"soclab/{MPPT}/data"
    mppt.publish(allowed, b"allowed")
    first = bridge.received()
    assert first is not None, "the allowed message did not arrive"
    assert (first.topic, first.payload) == (allowed, b"allowed"), f"{first.topic} arrived first"
    assert bridge.received(QUIET_S) is None


def test_a_device_reads_its_own_confirmations_and_nothing_else(
    secure_broker: Mosquitto, accounts: dict[str, Account], tls_client: Callable[..., TlsClient]
) -> None:
    mppt = tls_client(secure_broker, accounts[MPPT])
    assert not mppt.connect().is_failure
    assert not mppt.subscribe(f"soclab/{MPPT}/stored").is_failure
    spy = tls_client(secure_broker, accounts[ELOAD])
    assert not spy.connect().is_failure
    for topic in (f"soclab/{MPPT}/stored", "soclab/+/+/+/data", "soclab/#"):
        # Mosquitto 2.0.11 grants the SUBACK (the ACL's comment says so); the ACL filters every delivery.
        assert spy.subscribe(topic) == 1
    bridge = tls_client(secure_broker, accounts[BRIDGE])
    assert not bridge.connect().is_failure
    bridge.publish(f"soclab/{ELOAD}/data", b"eload's data")
    bridge.publish(f"soclab/{MPPT}/stored", b"confirmation")
    message = mppt.received()
    assert message is not None
    assert message.payload == b"confirmation"
    assert spy.received(QUIET_S) is None


def test_the_bridge_reads_every_device(
    secure_broker: Mosquitto, accounts: dict[str, Account], tls_client: Callable[..., TlsClient]
) -> None:
    bridge = tls_client(secure_broker, accounts[BRIDGE])
    assert not bridge.connect().is_failure
    assert not bridge.subscribe("soclab/+/+/+/data").is_failure
    assert not bridge.subscribe("soclab/+/+/+/status").is_failure
    sent = set()
    for user in DEVICES:
        device = tls_client(secure_broker, accounts[user])
        assert not device.connect().is_failure
        for kind in ("data", "status"):
            topic = f"soclab/{user}/{kind}"
            device.publish(topic, f"{user} {kind}".encode())
            sent.add((topic, f"{user} {kind}".encode()))
    got = set()
    while len(got) < len(sent):
        message = bridge.received()
        assert message is not None, f"received {got}, expected {sent}"
        got.add((message.topic, message.payload))
    assert got == sent


# What each account's own software asks for as its client id: the bridge's default for id
# "server" (compose), the publishers' default, the health check's, a monitor's (soclab watch).
CONFIGURED_IDS = {BRIDGE: "soclab-bridge-server", HEALTH: "soclab-bridge-server-health"}
READS = {BRIDGE: "soclab/+/+/+/data", HEALTH: "soclab-bridge/+/status"}  # a topic each may read
ATTACKERS = (MPPT, BRIDGE, HEALTH, MONITOR)  # one account of each role


def configured_id(user: str) -> str:
    return CONFIGURED_IDS.get(user, "soclab-" + user.replace("/", "-"))


def reads(user: str) -> str:
    if user in READS:
        return READS[user]
    return "soclab/#" if user.startswith("monitor/") else f"soclab/{user}/stored"


def test_no_account_can_take_over_another_accounts_connection(
    secure_broker: Mosquitto, accounts: dict[str, Account], tls_client: Callable[..., TlsClient]
) -> None:
    """Finding 2: while one account is connected, every other account connects with its client
    ids (its user name, which the broker gives it, and the one its software asks for); the
    victim stays connected. Positive control: a second connection of the victim's own account
    does end the first (one connection per account)."""
    for user, account in accounts.items():
        victim = tls_client(secure_broker, account, client_id=configured_id(user), clean_session=False)
        assert not victim.connect().is_failure
        assert victim.subscribe(reads(user)) == 1
        for attacker_user in set(ATTACKERS) - {user}:
            for client_id in (user, configured_id(user)):
                intruder = tls_client(secure_broker, accounts[attacker_user], client_id=client_id)
                assert not intruder.connect().is_failure, f"{attacker_user} as {client_id!r}"
                intruder.close()
        time.sleep(QUIET_S)
        assert victim.events.empty(), f"{user} lost its connection: {victim.events.get()}"
        if user == MPPT:
            second = tls_client(secure_broker, account, client_id="another-id")
            assert not second.connect().is_failure
            kind, _reason = victim.events.get(timeout=QUIET_S * 10)
            assert kind == "disconnect"  # the newer connection of the same account wins
            second.close()
        victim.close()


def test_no_account_can_delete_the_bridges_persistent_session(
    secure_broker: Mosquitto, accounts: dict[str, Account], tls_client: Callable[..., TlsClient]
) -> None:
    """Finding 2, the quiet half: a clean session under the bridge's client id would delete the
    bridge's session and the messages queued for it while it is away."""
    bridge = tls_client(secure_broker, accounts[BRIDGE], client_id=configured_id(BRIDGE), clean_session=False)
    assert not bridge.connect().is_failure
    assert bridge.subscribe(reads(BRIDGE)) == 1
    bridge.close()  # away: the broker keeps the session and queues for it
    device = tls_client(secure_broker, accounts[MPPT])
    assert not device.connect().is_failure
    device.publish(f"soclab/{MPPT}/data", b"queued while the bridge is away")
    for client_id in (BRIDGE, configured_id(BRIDGE)):
        intruder = tls_client(secure_broker, accounts[ELOAD], client_id=client_id, clean_session=True)
        assert not intruder.connect().is_failure
        intruder.close()
    back = tls_client(secure_broker, accounts[BRIDGE], client_id=configured_id(BRIDGE), clean_session=False)
    assert not back.connect().is_failure
    assert back.session_present
    message = back.received()
    assert message is not None, "the queued message is gone"
    assert message.payload == b"queued while the bridge is away"
    back.client.subscribe(reads(BRIDGE), qos=1)  # leave the session as clean as the next test expects
    back.client.unsubscribe(reads(BRIDGE))


def test_tls_with_the_project_ca_and_a_client_certificate_is_required(
    secure_broker: Mosquitto,
    accounts: dict[str, Account],
    tls_client: Callable[..., TlsClient],
    tmp_path: Path,
) -> None:
    mppt = accounts[MPPT]
    make_certs(tmp_path / "other", "ca")
    make_certs(tmp_path / "other", "client", MPPT)
    # A client that does not trust the project's CA refuses the broker.
    distrustful = tls_client(secure_broker, mppt, ca=tmp_path / "other" / "ca.crt")
    with pytest.raises(ssl.SSLCertVerificationError):
        distrustful.connect()
    # The broker refuses a client without a certificate, and one whose certificate another CA signed.
    assert _refused(tls_client(secure_broker, mppt, client_cert=False))
    other_client = Account(MPPT, mppt.password, tmp_path / "other" / "clients" / "lab1.pi-01.mppt")
    assert _refused(tls_client(secure_broker, other_client, ca=mppt.certs / "ca.crt"))
    # Plain MQTT is not spoken on the TLS port.
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    plain.username_pw_set(mppt.user, mppt.password)
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    plain.on_connect = lambda c, u, flags, reason, props: events.put(("connack", reason))
    plain.on_disconnect = lambda c, u, flags, reason, props: events.put(("disconnect", reason))
    try:
        assert connack(plain, secure_broker, events) is None
    finally:
        plain.disconnect()
        plain.loop_stop()


def _refusal(reason: Any) -> str:
    """The text of a CONNACK that refused the connection."""
    assert reason is not None, "the connection ended without a CONNACK"
    assert reason.is_failure, f"connection accepted: {reason}"
    return str(reason)


def _refused(client: TlsClient) -> bool:
    try:
        return client.connect() is None
    except (ssl.SSLError, ConnectionError):
        return True
    finally:
        client.close()
