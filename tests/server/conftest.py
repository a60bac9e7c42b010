"""Fixtures of the server tests: the project's CA, accounts and its secured broker.

- ``pki``: a CA, a server certificate for 127.0.0.1 and one client certificate per account,
  made by ``compose/mosquitto/make-certs.sh`` in a temporary folder.
- ``accounts``: user name -> ``Account`` (password made here, never written to the repository);
  the broker's password file is made from them by ``mosquitto_passwd``.
- ``secure_broker``: Debian's Mosquitto running ``compose/mosquitto/config`` (TLS, passwords,
  ACL, limits) with only paths and port changed (``Mosquitto.from_project_config``).
- ``tls_client``: factory of ``serverkit.TlsClient``, closed at teardown.
- ``monitor_broker``: a secured broker of the test's own whose ACL is the committed one after
  ``mqtt-user.sh acl-monitor`` granted the monitor accounts (``serverkit.MONITORS``).
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serverkit import (
    BRIDGE,
    DEVICES,
    LABJACK,
    MONITORS,
    MOSQUITTO_CONFIG,
    MOSQUITTO_PASSWD,
    Account,
    TlsClient,
    broker_with_monitor,
    make_certs,
)

from soclab.dev.localservices import Mosquitto


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    make_certs(folder, "ca")
    make_certs(folder, "server", "localhost", "127.0.0.1")
    for user in (*DEVICES, LABJACK, BRIDGE, *MONITORS):
        make_certs(folder, "client", user)
    return folder


@pytest.fixture(scope="session")
def passwd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("passwd")


@pytest.fixture(scope="session")
def accounts(pki: Path, passwd_dir: Path) -> dict[str, Account]:
    made = {
        user: Account(user, secrets.token_urlsafe(24), pki / "clients" / user.replace("/", "."))
        for user in (*DEVICES, LABJACK, BRIDGE, *MONITORS)
    }
    passwd = passwd_dir / "passwd"
    passwd.touch(mode=0o600)
    for account in made.values():
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", str(passwd), account.user, account.password],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return made


@pytest.fixture(scope="session")
def secure_broker(
    tmp_path_factory: pytest.TempPathFactory, pki: Path, passwd_dir: Path, accounts: dict[str, Account]
) -> Iterator[Mosquitto]:
    broker = Mosquitto.from_project_config(
        tmp_path_factory.mktemp("secure-mosquitto"),
        config_dir=MOSQUITTO_CONFIG,
        passwd_dir=passwd_dir,
        certs_dir=pki / "server",
    )
    with broker:
        yield broker


@pytest.fixture
def monitor_broker(
    tmp_path: Path, pki: Path, passwd_dir: Path, accounts: dict[str, Account]
) -> Iterator[Mosquitto]:
    with broker_with_monitor(tmp_path, pki, passwd_dir) as broker:
        yield broker


@pytest.fixture
def tls_client() -> Iterator[Callable[..., TlsClient]]:
    made: list[TlsClient] = []

    def make(broker: Mosquitto, account: Account | None, **options: Any) -> TlsClient:
        client = TlsClient(broker, account, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
