"""Child processes of the lab: started in their own session, stopped in order, never left behind.

Each child gets its own session, so Ctrl-C in the terminal reaches only the lab, which then
stops the children in the reverse order of their start (publishers flush before the broker
goes). On Linux each child also asks the kernel for SIGTERM if the lab dies (PR_SET_PDEATHSIG),
so even a kill -9 of the lab leaves no orphan running.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Children:
    """The lab's child processes, each with its log file."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

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
            preexec_fn=_die_with_parent,  # prctl only: safe before exec
        )
        log_file.close()
        self._procs.append((name, proc))
        return proc

    def failed(self) -> list[tuple[str, int]]:
        """Children that have exited on their own: (name, exit code)."""
        return [(name, p.returncode) for name, p in self._procs if p.poll() is not None]

    def stop_all(self, timeout_s: float = 10.0) -> None:
        for name, proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("event=kill child=%s reason=did not stop in %.0f s", name, timeout_s)
                    proc.kill()
                    proc.wait()
        self._procs.clear()
