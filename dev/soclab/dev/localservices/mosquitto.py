"""A real Mosquitto 2 broker on a free loopback port, its config, data and log in one folder.

For development and tests only: anonymous access, plain TCP on 127.0.0.1. Queue limits are
raised so that a consumer that is down for a while (the bridge's persistent session) loses
nothing: ``max_queued_messages 1000000`` per client (Mosquitto's default of 1000 would silently
drop the rest) and no byte limit. ``max_inflight_messages`` is the number of unacknowledged
QoS 1 messages the broker sends one client at a time; for the bridge, which acknowledges only
after writing, it is the window that bounds its memory and its batch size (production's broker
config must set the same value).

Persistence is Mosquitto's: an in-memory store written to ``mosquitto.db`` on a clean stop and
every ``autosave_interval`` seconds. ``stop()`` keeps everything; ``kill()`` (SIGKILL) loses
what arrived since the last save, exactly as the real broker does.

``Mosquitto.from_project_config()`` starts instead the production configuration
(``compose/mosquitto/config``: TLS, passwords, ACL, limits) with only its paths and its port
changed (``project_config()``), so tests prove what the server's broker does.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Mapping
from pathlib import Path

from soclab.dev.localservices.ports import LOOPBACK, accepts, free_port
from soclab.dev.localservices.process import LocalServer, ServerProcess, find_binary

MAX_INFLIGHT_MESSAGES = 1000
MAX_QUEUED_MESSAGES = 1_000_000
# Where the eclipse-mosquitto container sees the files compose/mosquitto/config/mosquitto.conf names.
CONTAINER_FOLDERS = ("/mosquitto/config", "/mosquitto/data", "/mosquitto/passwd", "/mosquitto/certs")
PROJECT_LISTENER = "listener 8883"


def project_config(text: str, *, port: int, host: str, folders: Mapping[str, Path], log_path: Path) -> str:
    """The project's top-level mosquitto.conf with only its paths, its port and its log changed.

    ``folders`` maps each container folder (``CONTAINER_FOLDERS``) to a local one. The listener
    ``listener 8883`` becomes ``listener <port> <host>``, ``log_dest stdout`` a log file, and a
    ``user`` line (this process's user) comes first; every other line stays as it is. Raises
    ValueError if the file does not have the expected listener and log lines, or names a
    container path that ``folders`` does not map.
    """
    missing = [f for f in CONTAINER_FOLDERS if f not in folders]
    if missing:
        raise ValueError(f"no local folder for {missing}")
    lines = [f"user {pwd.getpwuid(os.geteuid()).pw_name}"]
    found = {"listener": 0, "log_dest": 0}
    for line in text.splitlines():
        words = line.split()
        if words == PROJECT_LISTENER.split():
            line = f"listener {port} {host}"
            found["listener"] += 1
        elif words == ["log_dest", "stdout"]:
            line = f"log_dest file {log_path}"
            found["log_dest"] += 1
        elif not line.lstrip().startswith("#"):
            line = " ".join(_local_path(word, folders) for word in words)
        lines.append(line)
    if found != {"listener": 1, "log_dest": 1}:
        raise ValueError(f"expected one '{PROJECT_LISTENER}' and one 'log_dest stdout' line, found {found}")
    return "\n".join(lines) + "\n"


def _local_path(word: str, folders: Mapping[str, Path]) -> str:
    for container, local in folders.items():
        if word == container or word.startswith(container + "/"):
            return str(local) + word[len(container) :]
    if word.startswith("/mosquitto/"):
        raise ValueError(f"{word}: not below any of {', '.join(folders)}")
    return word


class Mosquitto(LocalServer):
    """``with Mosquitto(folder) as broker:`` a running broker at ``broker.host:broker.port``.

    ``stop()``/``kill()`` and ``start()`` again reuse the same port and persistence file, so a
    fault test can take the broker away and bring it back where clients expect it.
    """

    def __init__(
        self,
        folder: Path | str,
        *,
        port: int | None = None,
        autosave_interval_s: int = 1,
        max_inflight_messages: int = MAX_INFLIGHT_MESSAGES,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.host = LOOPBACK
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self.conf_path = self.folder / "mosquitto.conf"
        self.log_path = self.folder / "mosquitto.log"
        self.conf_path.write_text(self._config(autosave_interval_s, max_inflight_messages), encoding="utf-8")
        binary = find_binary("mosquitto", ["/usr/sbin/mosquitto"])
        self._process = ServerProcess("mosquitto", [binary, "-c", str(self.conf_path)], self.log_path)

    @classmethod
    def from_project_config(
        cls,
        folder: Path | str,
        *,
        config_dir: Path | str,
        passwd_dir: Path | str,
        certs_dir: Path | str,
        port: int | None = None,
        start_timeout_s: float = 10.0,
    ) -> Mosquitto:
        """The broker of ``compose/mosquitto/config`` (``config_dir``), on a free loopback port.

        ``passwd_dir`` holds ``passwd`` (mosquitto_passwd), ``certs_dir`` the server's
        ``ca.crt``, ``server.crt`` and ``server.key`` (``compose/mosquitto/make-certs.sh``);
        data and log go to ``folder``. Clients connect with TLS and credentials, as in production.
        """
        broker = cls(folder, port=port, start_timeout_s=start_timeout_s)
        config_dir = Path(config_dir).resolve()
        folders = {
            "/mosquitto/config": config_dir,
            "/mosquitto/data": broker.folder.resolve(),
            "/mosquitto/passwd": Path(passwd_dir).resolve(),
            "/mosquitto/certs": Path(certs_dir).resolve(),
        }
        text = (config_dir / "mosquitto.conf").read_text(encoding="utf-8")
        config = project_config(
            text, port=broker.port, host=broker.host, folders=folders, log_path=broker.log_path
        )
        broker.conf_path.write_text(config, encoding="utf-8")
        return broker

    def _config(self, autosave_interval_s: int, max_inflight_messages: int) -> str:
        return "\n".join(
            [
                "# Generated by soclab.dev.localservices.mosquitto: local development only.",
                # Running as root, Mosquitto would switch to user 'mosquitto', who cannot write here.
                f"user {pwd.getpwuid(os.geteuid()).pw_name}",
                "per_listener_settings false",
                f"listener {self.port} {self.host}",
                "allow_anonymous true",
                "persistence true",
                f"persistence_location {self.folder}/",
                "persistence_file mosquitto.db",
                f"autosave_interval {autosave_interval_s}",
                f"log_dest file {self.log_path}",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
                "connection_messages true",
                "log_timestamp_format %Y-%m-%dT%H:%M:%S",
                f"max_inflight_messages {max_inflight_messages}",
                f"max_queued_messages {MAX_QUEUED_MESSAGES}",
                "max_queued_bytes 0",
                "",
            ]
        )

    def start(self) -> Mosquitto:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0

        def ready() -> bool:
            # "running" is logged once every listener is bound: a port that merely accepts
            # connections could belong to someone else.
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                started = re.search(rb"mosquitto version \S+ running", log.read()) is not None
            return started and accepts(self.host, self.port)

        self._process.start(ready, self.start_timeout_s)
        return self

    def __repr__(self) -> str:
        return f"Mosquitto({self.host}:{self.port}, pid={self.pid})"
