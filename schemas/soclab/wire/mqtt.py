"""How every soclab MQTT client proves who it is: user name and password, TLS with the project's
CA (and a client certificate where the broker asks for one). One place, so the publisher, the
bridge and its health check cannot drift apart."""

from __future__ import annotations

import ssl
from typing import Any


def secure(
    client: Any,
    *,
    username: str = "",
    password: str | None = None,
    tls_ca: str = "",
    tls_cert: str = "",
    tls_key: str = "",
) -> None:
    """Set credentials and TLS on a paho ``Client`` that has not connected yet."""
    if username:
        client.username_pw_set(username, password or None)
    if tls_ca:
        client.tls_set(
            ca_certs=tls_ca,
            certfile=tls_cert or None,
            keyfile=tls_key or None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
