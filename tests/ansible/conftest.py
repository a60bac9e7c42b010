"""Fixtures of the Ansible tests (helpers in ansiblekit.py, targets in bookworm.py).

- ``pki``: a CA, a server certificate and client certificates made by compose's make-certs.sh.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
from ansiblekit import MAKE_CERTS


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, str]]:
    """``pki("client", user)`` / ``pki("server")`` / ``pki("ca")``: PEM texts made by make-certs.sh."""
    folder = tmp_path_factory.mktemp("pki")

    def make(*args: str) -> None:
        subprocess.run(
            ["bash", str(MAKE_CERTS), "-d", str(folder), *args], check=True, capture_output=True, timeout=60
        )

    make("ca")
    make("server", "localhost", "127.0.0.1")

    def read(kind: str, user: str = "") -> dict[str, str]:
        if kind == "ca":
            return {"cert": (folder / "ca.crt").read_text()}
        if kind == "server":
            return {
                "cert": (folder / "server/server.crt").read_text(),
                "key": (folder / "server/server.key").read_text(),
            }
        out = folder / "clients" / user.replace("/", ".")
        if not out.exists():
            make("client", user)
        return {"cert": (out / "client.crt").read_text(), "key": (out / "client.key").read_text()}

    return read
