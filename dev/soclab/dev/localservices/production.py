"""The server's broker as compose configures it, on this machine: TLS, passwords, the ACL, limits.

``ProductionBroker(folder, users)`` makes a CA, a server certificate for 127.0.0.1 and one client
certificate per account with ``compose/mosquitto/make-certs.sh``, a password file with
``mosquitto_passwd`` (passwords made here, never written to the repository), and runs Debian's
Mosquitto on ``compose/mosquitto/config`` with only paths and port changed
(``Mosquitto.from_project_config``). For tests, benchmarks and the bad-input campaign, which then
prove what the production broker does; nothing here runs in production.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from soclab.dev.localservices.mosquitto import Mosquitto
from soclab.wire.mqtt import MqttSettings

REPO = Path(__file__).resolve().parents[4]  # a checkout: dev/ exists only there
MOSQUITTO_CONFIG = REPO / "compose" / "mosquitto" / "config"
MAKE_CERTS = REPO / "compose" / "mosquitto" / "make-certs.sh"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
SERVER_NAMES = ("localhost", "127.0.0.1")


def make_certs(pki: Path, *args: str) -> None:
    """Run ``make-certs.sh -d PKI ARGS...``."""
    command = ["bash", str(MAKE_CERTS), "-d", str(pki), *args]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Account:
    """A broker account: user name, password, and the folder with ca.crt, client.crt, client.key."""

    user: str
    password: str = field(repr=False)
    certs: Path

    @property
    def prefix(self) -> str:
        """soclab/<site>/<node>/<device> for a device account."""
        return f"soclab/{self.user}"

    def mqtt(self, broker: Mosquitto) -> MqttSettings:
        """The ``[mqtt]`` settings with which this account reaches ``broker``."""
        return MqttSettings(
            host=broker.host,
            port=broker.port,
            username=self.user,
            password=self.password,
            tls_ca=str(self.certs / "ca.crt"),
            tls_cert=str(self.certs / "client.crt"),
            tls_key=str(self.certs / "client.key"),
        )

    def env(self, broker: Mosquitto, prefix: str = "SOCLAB_MQTT_") -> dict[str, str]:
        """The same as environment variables of a child process (``SOCLAB_BRIDGE_MQTT_`` for the
        bridge); the password in ``<prefix>PASSWORD``, as the processes read it."""
        settings = self.mqtt(broker)
        keys = ("host", "port", "username", "password", "tls_ca", "tls_cert", "tls_key")
        return {f"{prefix}{key.upper()}": str(getattr(settings, key)) for key in keys}


def make_pki(folder: Path, users: Iterable[str]) -> Path:
    """A CA, the server's certificate for ``SERVER_NAMES`` and each user's client certificate."""
    make_certs(folder, "ca")
    make_certs(folder, "server", *SERVER_NAMES)
    for user in users:
        make_certs(folder, "client", user)
    return folder


def make_accounts(pki: Path, passwd: Path, users: Iterable[str]) -> dict[str, Account]:
    """One account per user (a random password, its certificate in ``pki``), all in ``passwd``."""
    passwd.touch(mode=0o600)
    accounts = {}
    for user in users:
        account = Account(user, secrets.token_urlsafe(24), pki / "clients" / user.replace("/", "."))
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", str(passwd), account.user, account.password],
            check=True,
            capture_output=True,
            timeout=30,
        )
        accounts[user] = account
    return accounts


class ProductionBroker:
    """``with ProductionBroker(folder, users) as production:`` ``production.broker`` runs compose's
    broker configuration; ``production.accounts[user]`` are the accounts it knows."""

    def __init__(self, folder: Path, users: Iterable[str], *, config_dir: Path = MOSQUITTO_CONFIG) -> None:
        users = list(users)
        folder.mkdir(parents=True, exist_ok=True)
        pki = make_pki(folder / "pki", users)
        (folder / "passwd").mkdir(exist_ok=True)
        self.accounts = make_accounts(pki, folder / "passwd" / "passwd", users)
        self.broker = Mosquitto.from_project_config(
            folder / "mosquitto",
            config_dir=config_dir,
            passwd_dir=folder / "passwd",
            certs_dir=pki / "server",
        )

    def __enter__(self) -> Self:
        self.broker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.broker.stop()
