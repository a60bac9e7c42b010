"""What every wire-level instrument simulator is: a thread serving a PtyPort, watching one battery.

The battery's clock is advanced by whoever owns it (``soclab.dev.sim.lab``), never by a
simulator; a simulator reads ``battery.state()`` and drives its own current source with
``battery.set_current(self.name, amps)``.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from soclab.dev.sim.battery import Battery
from soclab.dev.sim.pty import PtyPort

log = logging.getLogger(__name__)


class WireSimulator(ABC):
    """Subclasses implement ``_serve_once``: answer what arrived, publish what is due."""

    name: ClassVar[str]

    def __init__(self, battery: Battery, link: str | Path) -> None:
        self.battery = battery
        self.port = PtyPort(link)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def _serve_once(self) -> None:
        """One turn of the device's loop; must return within about 0.1 s."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.port.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve_once()
            except Exception:  # a simulator bug must be loud but not kill the lab
                log.exception("simulator=%s event=error", self.name)
                self._stop.wait(0.5)

    def __enter__(self) -> WireSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
