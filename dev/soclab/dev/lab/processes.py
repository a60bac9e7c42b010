"""Child processes of the lab: started in their own session, stopped in order, never left behind.

Each child gets its own session, so Ctrl-C in the terminal reaches only the lab, which then
stops the children in the reverse order of their start (publishers flush before the broker
goes). Each child also asks the kernel for a signal if the lab dies (``die_with_parent``), so
even a kill -9 of the lab leaves no orphan running. Fault tests kill and restart children by name.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from soclab.dev.localservices.process import die_with_parent

log = logging.getLogger(__name__)


@dataclass
class _Child:
    name: str
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes]


class Children:
    """The lab's child processes, each with its log file."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._children: dict[str, _Child] = {}

    def start(
        self, name: str, args: list[str], env: dict[str, str] | None = None, stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m <args>``-style commands with stderr to ``<log_dir>/<name>.log``."""
        log_file = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log_file,
            stderr=log_file,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=die_with_parent,  # prctl only: safe before exec
        )
        log_file.close()
        self._children[name] = _Child(name, args, env or {}, proc)
        return proc

    def pid(self, name: str) -> int:
        return self._children[name].proc.pid

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default: kill -9) and wait for the child to end."""
        proc = self._children[name].proc
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start a child again, with the arguments and environment it had (it must have ended)."""
        child = self._children[name]  # it keeps its place in the stop order
        if child.proc.poll() is None:
            raise RuntimeError(f"{name} is still running (pid {child.proc.pid})")
        return self.start(name, child.args, child.env)

    def failed(self) -> list[tuple[str, int]]:
        """Children that have exited on their own: (name, exit code)."""
        return [(c.name, c.proc.returncode) for c in self._children.values() if c.proc.poll() is not None]

    def stop_all(self, timeout_s: float = 10.0) -> None:
        for name, child in reversed(self._children.items()):
            proc = child.proc
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("event=kill child=%s reason=did not stop in %.0f s", name, timeout_s)
                    proc.kill()
                    proc.wait()
        self._children.clear()
