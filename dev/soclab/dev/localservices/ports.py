"""Free TCP ports on the loopback interface for the services the tests and the lab start."""

from __future__ import annotations

import socket
import threading

LOOPBACK = "127.0.0.1"

_lock = threading.Lock()
_handed_out: set[int] = set()


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports that nothing listens on now.

    The kernel picks them (bind to port 0); all sockets stay open until every port is chosen, so
    the ports differ. A port is never handed out twice by this process: a stopped server that
    restarts on its old port must not find it taken by a server started since.
    """
    ports: list[int] = []
    sockets: list[socket.socket] = []
    try:
        with _lock:
            while len(ports) < count:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(s)
                s.bind((host, 0))
                port = s.getsockname()[1]
                if port not in _handed_out:
                    _handed_out.add(port)
                    ports.append(port)
    finally:
        for s in sockets:
            s.close()
    return ports


def free_port(host: str = LOOPBACK) -> int:
    """One port; see ``free_ports``."""
    return free_ports(1, host)[0]


def accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """One connection attempt: True if something accepts on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
