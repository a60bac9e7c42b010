"""Fixtures of the server tests: the project's CA, accounts and its secured broker.

- ``pki``: a CA, a server certificate for 127.0.0.1 and one client certificate per account,
  made by ``compose/mosquitto/make-certs.sh`` in a temporary folder.
- ``accounts``: user name -> ``Account`` (password made here, never written to the repository);
  the broker's password file is made from them by ``mosquitto_passwd``.
- ``secure_broker``: Debian's Mosquitto running ``compose/mosquitto/config`` (TLS, passwords,
  ACL, limits) with only paths and port changed (``Mosquitto.from_project_config``).
- ``tls_client``: factory of ``serverkit.TlsClient``, closed at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serverkit import (
    BRIDGE,
    DEVICES,
    HEALTH,
    MOSQUITTO_CONFIG,
    Account,
    TlsClient,
)

from soclab.dev.localservices import Mosquitto
from soclab.dev.localservices.production import make_accounts, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"), (*DEVICES, BRIDGE, HEALTH))


@pytest.fixture(scope="session")
def passwd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("passwd")


@pytest.fixture(scope="session")
def accounts(pki: Path, passwd_dir: Path) -> dict[str, Account]:
    return make_accounts(pki, passwd_dir / "passwd", (*DEVICES, BRIDGE, HEALTH))


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
def tls_client() -> Iterator[Callable[..., TlsClient]]:
    made: list[TlsClient] = []

    def make(broker: Mosquitto, account: Account | None, **options: Any) -> TlsClient:
        client = TlsClient(broker, account, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
