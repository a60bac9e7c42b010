"""The lab's live view: ``soclab watch`` on the lab's broker, plus what only the local lab knows.

The monitor is the operator's (``soclab.tools.watch``: the same model, screen and alerts); the lab
adds the points its own InfluxDB holds (asked every few seconds, so what it shows is what really
arrived) and its child processes that exited. On a terminal the screen is redrawn in place; on a
pipe (a log, a test) each refresh is printed as text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

from soclab.tools.watch.cli import Screen, describe
from soclab.tools.watch.intake import Intake, subscriptions
from soclab.tools.watch.model import Model, Thresholds
from soclab.wire.mqtt import MqttSettings


class LabView:
    def __init__(
        self,
        settings: MqttSettings,
        stored_counts: Callable[[], dict[str, int]] | None = None,
        *,
        stream: TextIO | None = None,
        thresholds: Thresholds | None = None,
    ) -> None:
        self.settings = settings
        self.model = Model(thresholds, started=time.time())
        self.intake = Intake(self.settings, self._ingest, subscriptions())
        self.stored: dict[str, int] = {}
        self.stored_error: str | None = None
        self.problems: list[str] = []  # e.g. a child process that exited
        self._stored_counts = stored_counts
        self._stored_lock = threading.Lock()
        self._screen = Screen(
            self.model, self.intake, f"make lab  {describe(self.settings)}", extra=self._extra, stream=stream
        )

    def _ingest(self, topic: str, payload: bytes, arrived: float, retained: bool) -> None:
        self.model.ingest(topic, payload, arrived, retained=retained)

    def start(self) -> None:
        self.intake.start()

    def stop(self) -> None:
        self._screen.__exit__()
        self.intake.stop()

    def refresh_stored(self) -> None:
        """Ask the database how many points it holds (a failure is shown, never fatal)."""
        if self._stored_counts is None:
            return
        try:
            stored, error = self._stored_counts(), None
        except Exception as exc:  # the view reports a database problem, it does not die of it
            stored, error = self.stored, f"{type(exc).__name__}: {exc}"
        with self._stored_lock:
            self.stored, self.stored_error = stored, error

    def show(self) -> None:
        self._screen.draw()

    def _extra(self) -> list[str]:
        lines = []
        if self._stored_counts is not None:
            with self._stored_lock:
                counts = "  ".join(f"{m}={n}" for m, n in sorted(self.stored.items())) or "-"
                problem = f"   ! {self.stored_error}" if self.stored_error else ""
            lines.append(f"stored in InfluxDB: {counts}{problem}")
        lines.extend(f"! {problem}" for problem in self.problems)
        lines.append("Ctrl-C stops everything")
        return lines
