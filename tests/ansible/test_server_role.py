"""The server role on a debootstrapped Debian bookworm: in check mode on the fresh root, then
converged for real, twice, then verified.

What runs for real in the chroot: Debian's docker.io installed by apt, Compose v2 installed from
PyPI and linked as Docker's CLI plugin, the stack's files copied from a snapshot of this
checkout, compose/.env, compose/secrets/, compose/pki/ and the broker's password file written
from the vault. What cannot run there: systemd and dockerd are not running (the role skips
starting Docker, `docker_compose_v2` and its handlers, and says so), and no image can be pulled
on this machine. In their place the verification runs the real tools on what the role wrote:
`docker compose config` (the stack resolves with the written .env), the stack's own
secrets-check script, and Debian's Mosquitto with compose's broker configuration, the written
password file and certificates, to which every account connects over TLS.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from ansiblekit import REPO, Project, Run, snapshot_sources
from bookworm import Target, TargetError

from soclab.dev.localservices import Mosquitto

# A converge takes minutes (the debootstrap the first time, apt and pip from the network).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SERVER = "soclab-server"
SITE = "lab3"
EDGE = {"pi-03": ["mppt", "eload"], "pi-04.lab3.test": ["labjack"]}
DEVICES = [f"{SITE}/{host.split('.')[0]}/{device}" for host, devices in EDGE.items() for device in devices]
DEVICES.append(f"{SITE}/pi-03/run")  # the run controller of the node with a load and a charger
SERVICES = ["soclab-bridge", "soclab-telegraf", "soclab-health"]
# A read-only account (soclab watch) and one that commands (soclab run), granted in the deployed ACL.
MONITORS = ["monitor/alice", "operator/bob"]
COMPOSE = "/opt/soclab/compose"
STACK_SECRETS = {
    "influxdb_admin_password": "influx-admin-password-0123456789",
    "influxdb_admin_token": "influx-admin-token-0123456789abcdef",
    "grafana_admin_password": "grafana-admin-password-0123456789",
}


@dataclass
class Server:
    target: Target
    project: Project
    check: Run
    first: Run
    second: Run
    accounts: dict[str, dict[str, str]]
    pki: Any

    def path(self, inside: str) -> Path:
        return self.target.path / inside.lstrip("/")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pki) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("server")
    if os.geteuid() != 0:
        pytest.skip("a chroot target needs root")
    try:
        target = Target.create(folder / "root", SERVER)
    except TargetError as exc:
        pytest.fail(f"no bookworm target: {exc}")
    try:
        project = Project.create(folder)
        sources = folder / "sources"
        snapshot_sources(sources)
        for name in ("compose", "cloud"):
            # What the server deploys besides schemas/ and edge/ (ignored files of a developer's
            # checkout, such as compose/.env or compose/pki/, are left out as the role would).
            subprocess.run(["cp", "-a", str(REPO / name), str(sources / name)], check=True)
        for monitor in MONITORS:  # as the lab does before deploying: the monitor's (operator's) ACL block
            role, name = monitor.split("/")
            grant = ["sh", str(sources / "compose/mosquitto/mqtt-user.sh"), f"acl-{role}", name]
            subprocess.run(grant, check=True, capture_output=True, timeout=30)
        accounts: dict[str, dict[str, str]] = {}
        for user in DEVICES + SERVICES + MONITORS:
            pem = pki("client", user)
            accounts[user] = {
                "password": f"pw-{user.replace('/', '-')}-0123456789",
                "tls_cert": pem["cert"],
                "tls_key": pem["key"],
            }
        server_pem = pki("server")
        project.write_vault(
            {
                "vault_soclab_mqtt_accounts": accounts,
                "vault_soclab_tls_ca_cert": pki("ca")["cert"],
                "vault_soclab_tls_server_cert": server_pem["cert"],
                "vault_soclab_tls_server_key": server_pem["key"],
                "vault_soclab_influxdb_admin_password": STACK_SECRETS["influxdb_admin_password"],
                "vault_soclab_influxdb_admin_token": STACK_SECRETS["influxdb_admin_token"],
                "vault_soclab_grafana_admin_password": STACK_SECRETS["grafana_admin_password"],
            }
        )
        project.write_inventory(
            {
                "soclab_server": {
                    "hosts": {
                        SERVER: {
                            "ansible_connection": "community.general.chroot",
                            "ansible_host": str(target.path),
                            "ansible_python_interpreter": "/usr/bin/python3",
                            "soclab_site": SITE,
                            "soclab_server_source_dir": str(sources),
                        }
                    }
                },
                # The Pis are only read here (their instruments make the broker's accounts).
                "soclab_edge": {
                    "hosts": {
                        host: {
                            "soclab_site": SITE,
                            "soclab_edge_instruments": [{"device": d, "kind": d} for d in devices],
                        }
                        for host, devices in EDGE.items()
                    }
                },
            }
        )
        check, first, second = project.converge_twice("server.yml", "server")
        yield Server(target, project, check, first, second, accounts, pki)
    finally:
        target.destroy()


def test_check_mode_on_a_fresh_target(server: Server) -> None:
    recap = server.check.recap[SERVER]
    assert recap["failed"] == 0
    assert recap["changed"] > 0


def test_second_run_changes_nothing(server: Server) -> None:
    assert server.first.recap[SERVER]["changed"] > 0
    recap = server.second.recap[SERVER]
    assert recap["failed"] == 0
    assert recap["changed"] == 0, "\n".join(server.second.changed_tasks())


def test_docker_and_compose_v2_are_installed(server: Server) -> None:
    result = server.target.run(["docker", "compose", "version"])
    assert "Docker Compose version v2." in result.stdout
    assert server.path("/etc/systemd/system/multi-user.target.wants/docker.service").is_symlink()


def test_the_stack_resolves_with_the_written_settings(server: Server) -> None:
    result = server.target.run(
        ["docker", "compose", "--project-directory", COMPOSE, "config", "--format", "json"]
    )
    config = json.loads(result.stdout)
    assert {"mosquitto", "influxdb", "bridge", "grafana"} <= set(config["services"])
    env_example = (REPO / "compose/.env.example").read_text()
    example_keys = {
        line.split("=", 1)[0] for line in env_example.splitlines() if line and not line.startswith("#")
    }
    written = server.path(f"{COMPOSE}/.env").read_text()
    written_keys = {
        line.split("=", 1)[0] for line in written.splitlines() if line and not line.startswith("#")
    }
    assert written_keys == example_keys
    assert "CHANGE_ME" not in written


def test_the_stack_passes_its_own_secrets_check(server: Server) -> None:
    """compose/check/check-secrets.sh, as the secrets-check service runs it, on what the role wrote."""
    result = server.target.run(
        ["docker", "compose", "--project-directory", COMPOSE, "config", "--format", "json"]
    )
    service = json.loads(result.stdout)["services"]["secrets-check"]
    # The container's paths, mapped to the written files.
    mounts = {v["target"]: v["source"] for v in service["volumes"] if v["type"] == "bind"}

    def outside(path: str) -> str:
        for target, source in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if path == target or path.startswith(target + "/"):
                return str(server.path(source + path[len(target) :]))
        raise AssertionError(f"{path} is not mounted into secrets-check")

    env = {k: str(v) for k, v in service["environment"].items()}
    env["SOCLAB_REQUIRED_FILES"] = " ".join(outside(p) for p in env["SOCLAB_REQUIRED_FILES"].split())
    env["SOCLAB_SECRETS_DIR"] = str(server.path(f"{COMPOSE}/secrets"))
    env["PATH"] = os.environ["PATH"]
    check = subprocess.run(
        ["sh", str(server.path(f"{COMPOSE}/check/check-secrets.sh"))], env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_secrets_and_certificates_are_in_place(server: Server) -> None:
    secrets_dir = server.path(f"{COMPOSE}/secrets")
    assert secrets_dir.stat().st_mode & 0o777 == 0o700
    expected = dict(STACK_SECRETS)
    expected["mqtt_bridge_password"] = server.accounts["soclab-bridge"]["password"]
    expected["mqtt_telegraf_password"] = server.accounts["soclab-telegraf"]["password"]
    expected["mqtt_health_password"] = server.accounts["soclab-health"]["password"]
    assert {p.name: p.read_text() for p in secrets_dir.iterdir()} == expected
    pki = server.path(f"{COMPOSE}/pki")
    # As make-certs.sh makes them: pki/ for root only, the folders mounted into the containers
    # open to their users.
    assert pki.stat().st_mode & 0o777 == 0o700
    for folder in ("server", *(f"clients/{user}" for user in SERVICES)):
        assert (pki / folder).stat().st_mode & 0o777 == 0o755, folder
    assert (pki / "server/ca.crt").read_text() == server.pki("ca")["cert"].strip() + "\n"
    assert (pki / "server/server.key").read_text() == server.pki("server")["key"].strip() + "\n"
    for user in SERVICES:
        assert (pki / f"clients/{user}/client.crt").read_text() == server.accounts[user][
            "tls_cert"
        ].strip() + "\n"
        assert (pki / f"clients/{user}/client.key").read_text() == server.accounts[user][
            "tls_key"
        ].strip() + "\n"
    passwd = server.path(f"{COMPOSE}/mosquitto/passwd/passwd")
    assert passwd.stat().st_mode & 0o777 == 0o600
    assert passwd.stat().st_uid == 1883
    users = [line.split(":", 1)[0] for line in passwd.read_text().splitlines()]
    assert users == sorted(DEVICES + SERVICES + MONITORS)


def test_the_copied_tree_is_the_checkouts_without_private_files(server: Server) -> None:
    compose = server.path(COMPOSE)
    assert (compose / "compose.yaml").read_bytes() == (REPO / "compose/compose.yaml").read_bytes()
    deployed_acl = (compose / "mosquitto/config/acl").read_text()
    granted = [
        line for line in deployed_acl.splitlines() if line.startswith(("user monitor/", "user operator/"))
    ]
    assert sorted(granted) == sorted(f"user {m}" for m in MONITORS)
    committed = deployed_acl  # the checkout's ACL and the blocks mqtt-user.sh added, nothing else
    for block in re.findall(r"^user (?:monitor|operator)/.*\n(?:topic .*\n)*\n", deployed_acl, re.MULTILINE):
        committed = committed.replace(block, "", 1)
    assert committed == (REPO / "compose/mosquitto/config/acl").read_text()
    assert (server.path("/opt/soclab/cloud/pyproject.toml")).exists()
    assert (server.path("/opt/soclab/requirements/constraints.txt")).exists()
    for folder in ("compose", "cloud", "schemas", "requirements"):
        assert not list(server.path(f"/opt/soclab/{folder}").rglob("__pycache__"))
        assert not list(server.path(f"/opt/soclab/{folder}").rglob("*.egg-info"))


def connect(broker: Mosquitto, ca: Path, user: str, password: str, cert: Path, key: Path) -> mqtt.ReasonCode:
    answers: queue.Queue[mqtt.ReasonCode] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{user.replace('/', '-')}")
    client.username_pw_set(user, password)
    client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
    client.on_connect = lambda c, u, flags, reason, props: answers.put(reason)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        return answers.get(timeout=15)
    finally:
        client.disconnect()
        client.loop_stop()


def test_every_account_connects_to_the_broker_with_the_written_files(server: Server, tmp_path: Path) -> None:
    """Debian's Mosquitto with compose's broker configuration, the written password file and the
    written server certificate: every device of the inventory and every service gets in with its
    password and client certificate; a wrong password does not."""
    compose = server.path(COMPOSE)
    broker = Mosquitto.from_project_config(
        tmp_path / "broker",
        config_dir=compose / "mosquitto/config",
        passwd_dir=compose / "mosquitto/passwd",
        certs_dir=compose / "pki/server",
    )
    ca = compose / "pki/server/ca.crt"
    with broker:
        for user, account in server.accounts.items():
            cert, key = tmp_path / "client.crt", tmp_path / "client.key"
            cert.write_text(account["tls_cert"])
            key.write_text(account["tls_key"])
            assert connect(broker, ca, user, account["password"], cert, key) == "Success", user
        assert connect(broker, ca, DEVICES[0], "wrong-password", cert, key) != "Success"


def test_nothing_was_started_in_the_chroot(server: Server) -> None:
    for run in (server.first, server.second):
        block = run.output.split("TASK [soclab_server : Bring the stack up", 1)[1].split("TASK [", 1)[0]
        assert "skipping:" in block, block
    assert "the stack was not brought up" in server.first.output
