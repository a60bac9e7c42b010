"""A pseudo-terminal that a simulator holds as the device end; drivers open its stable link.

The pty's slave path (``/dev/pts/N``) changes each time one is made, so the port is published as
a symbolic link (e.g. ``var/lab/dev/mppt``), like the udev names on the Pi. ``vanish`` and
``reappear`` imitate a USB device unplugged and plugged in again: the driver's open file then
fails with an I/O error and the link is missing until the device returns.
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import threading
import tty
from pathlib import Path


class PtyPort:
    """The device side of a pseudo-terminal, reachable by drivers at ``link``."""

    def __init__(self, link: str | os.PathLike[str]) -> None:
        self.link = Path(link)
        self._master: int | None = None
        self._slave: int | None = None
        self._write_lock = threading.Lock()
        self.reappear()

    @property
    def is_present(self) -> bool:
        return self._master is not None

    def reappear(self) -> None:
        """Make a fresh pty and point the link at it."""
        if self._master is not None:
            return
        master, slave = os.openpty()
        tty.setraw(slave, termios.TCSANOW)  # no echo, no line discipline: bytes pass unchanged
        tty.setraw(master, termios.TCSANOW)
        self._master, self._slave = master, slave
        self.link.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link.with_name(self.link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.link)

    def vanish(self) -> None:
        """Unplug: remove the link and close both ends, so an open driver sees an I/O error."""
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        master, slave, self._master, self._slave = self._master, self._slave, None, None
        for fd in (master, slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    close = vanish

    def read(self, size: int = 4096, timeout: float = 0.1) -> bytes:
        """What the driver wrote (maybe b''); b'' at once while the device is unplugged."""
        master = self._master
        if master is None:
            return b""
        self._clear_stale_parity()
        try:
            ready, _, _ = select.select([master], [], [], timeout)
            return os.read(master, size) if ready else b""
        except OSError:  # EIO while no process holds the slave open: nothing to read
            return b""

    def _clear_stale_parity(self) -> None:
        """A Linux pty drops PARENB from the settings a driver makes (8O1 becomes 8N1 with PARODD
        left set), and from then on the kernel refuses (EINVAL) to set 8O1 again: a driver that
        reopens the port, e.g. after a restart, could never open it. Clearing the orphaned PARODD
        restores what a fresh port looks like; it changes nothing on the wire (ptys have no parity).
        """
        slave = self._slave
        if slave is None:
            return
        with contextlib.suppress(OSError, termios.error):
            attrs = termios.tcgetattr(slave)
            if attrs[2] & termios.PARODD and not attrs[2] & termios.PARENB:
                attrs[2] &= ~termios.PARODD
                termios.tcsetattr(slave, termios.TCSANOW, attrs)

    def write(self, data: bytes) -> None:
        """Send bytes to the driver; dropped while unplugged, as on a real wire."""
        with self._write_lock:
            master = self._master
            if master is None:
                return
            view = memoryview(data)
            while view:
                try:
                    n = os.write(master, view)
                except BlockingIOError:
                    select.select([], [master], [], 0.1)
                    continue
                except OSError:
                    return
                view = view[n:]

    def __enter__(self) -> PtyPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.vanish()
