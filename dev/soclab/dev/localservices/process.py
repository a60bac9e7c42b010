"""One child server process: start, wait until ready, stop, kill, and never leave it behind.

Shared by ``Mosquitto`` and ``InfluxDB1``. A server's output goes to a log file in its folder;
when it does not come up, the error carries the tail of that log. Every live process is also
killed at interpreter exit (``atexit``), and on Linux the kernel kills it if the process that
started it dies (``PR_SET_PDEATHSIG``, only when started from the main thread: the signal follows
the starting thread, not the process).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

_live: set[ServerProcess] = set()  # started and not yet stopped or killed


class LocalServiceError(RuntimeError):
    """A local service that could not be found, started or stopped; the message says why."""


class ServerProcess:
    """A server binary run as a child process with its output in ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, ready: Callable[[], bool], timeout: float) -> None:
        """Start the process and wait until ``ready()`` is true; raise with the log tail if not."""
        if self.running:
            raise LocalServiceError(f"{self.name} is already running (pid {self.pid})")
        main_thread = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=die_with_parent if main_thread and sys.platform == "linux" else None,
            )
        _live.add(self)
        deadline = time.monotonic() + timeout
        while not ready():
            code = self._proc.poll()
            if code is not None:
                raise LocalServiceError(f"{self.name} exited with code {code} at start\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise LocalServiceError(f"{self.name} not ready after {timeout} s\n{self.log_tail()}")
            time.sleep(0.02)
        code = self._proc.poll()
        if code is not None:
            raise LocalServiceError(f"{self.name} exited with code {code} at start\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                _live.discard(self)
                self._proc = None
                raise LocalServiceError(
                    f"{self.name} ignored SIGTERM for {timeout} s and was killed\n{self.log_tail()}"
                ) from None
        _live.discard(self)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to save anything (a fault test's crash)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        _live.discard(self)
        self._proc = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


class LocalServer:
    """What ``Mosquitto`` and ``InfluxDB1`` share: one ``ServerProcess`` in ``_process``, stopped
    (SIGTERM) or killed (SIGKILL, a crash) on demand, and a context manager around ``start()``."""

    _process: ServerProcess

    def start(self) -> Self:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.running

    def stop(self) -> None:
        self._process.stop()

    def kill(self) -> None:
        self._process.kill()

    def log_tail(self, lines: int = 30) -> str:
        return self._process.log_tail(lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_binary(name: str, fallbacks: Sequence[str]) -> str:
    """The path of ``name`` on PATH or at one of ``fallbacks`` (Debian puts daemons in /usr/sbin)."""

    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return path
    raise LocalServiceError(f"{name} not found on PATH nor at {', '.join(fallbacks)}: run `make system`")


def die_with_parent() -> None:
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        server.kill()
