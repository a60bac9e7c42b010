"""One ThingSet text-mode line on a serial port: framing, one reader at a time, request correlation.

Requests and publications share the line, and ThingSet text mode has no request ids: responses
come in order, one per request. So requests are serialised (one outstanding at a time), and the
port is read by one thread at a time (leader/follower): whoever is waiting (the driver's
``read()`` for samples, ``request()`` for its response) reads, and routes every line:
publications to the ``on_publication`` callback, a response to the request in flight. A request
may thus come from another thread while ``read()`` runs, or from the reading thread between
reads; no line is lost either way. Known limit: a response arriving after its request timed out
is dropped and counted (``unexpected_responses``), unless a next request is already in flight,
which then takes it.

The port comes from the ``SerialFactory`` the link is given (``serial.Serial`` in the lab, a
transcript in tests). Counters (in the driver's ``Health``): ``lines_ignored`` (every line that
gave nothing: banner, blank, half lines, and the malformed ones, which also count as
``parse_errors``, as does a line whose handling failed), ``requests``, ``request_errors``,
``unexpected_responses``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from soclab.edge.instruments.base import ConnectionLost, DeviceError, Health, InstrumentError
from soclab.edge.instruments.libresolar_mppt import codec
from soclab.edge.instruments.libresolar_mppt.codec import Publication, Response
from soclab.edge.instruments.serial_port import SERIAL_ERRORS, SerialFactory, SerialPort

log = logging.getLogger("soclab.edge.instruments.libresolar_mppt")


class ThingSetError(DeviceError):
    """The controller answered a request with an error status (0xA0 and above)."""

    def __init__(self, request: str, response: Response) -> None:
        self.request = request
        self.response = response
        self.status = response.status
        self.description = response.description or codec.STATUS_TEXT.get(response.status)
        super().__init__(f"{request!r} -> :{response.status:02X} {self.description or ''}".rstrip())


class BadRequest(ThingSetError):
    """:A0: the request did not parse, or asked something impossible."""


class Unauthorized(ThingSetError):
    """:A1: the item needs authentication (expert or maker password)."""


class Forbidden(ThingSetError):
    """:A3: e.g. writing a read-only item."""


class NotFound(ThingSetError):
    """:A4: no such path or item in this firmware."""


class ServerError(ThingSetError):
    """:C0 and above: the controller failed to process the request."""


_ERRORS: dict[int, type[ThingSetError]] = {
    0xA0: BadRequest,
    0xA1: Unauthorized,
    0xA3: Forbidden,
    0xA4: NotFound,
}


def error_for(request: str, response: Response) -> ThingSetError:
    """The typed error for an error response."""
    cls = _ERRORS.get(response.status) or (ServerError if response.status >= 0xC0 else ThingSetError)
    return cls(request, response)


class NoResponse(InstrumentError):
    """No response within the time-out (the port itself is still up)."""


class PortClosed(ConnectionLost):
    """The port was closed on purpose (``close()``) while a thread waited on it."""


@dataclass
class _Pending:
    line: str
    response: Response | None = None
    error: ConnectionLost | None = None

    @property
    def settled(self) -> bool:
        return self.response is not None or self.error is not None


class ThingSetLink:
    """The line to one device. ``on_publication`` is called with the link's lock held, in whichever
    thread is reading: it must be quick and must not call the link."""

    def __init__(
        self,
        port: str,
        baudrate: int,
        *,
        health: Health,
        on_publication: Callable[[Publication], None],
        serial_factory: SerialFactory,
        read_slice_s: float = 0.05,
        max_line: int = 8192,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.read_slice_s = read_slice_s
        self.max_line = max_line
        self.health = health
        self._on_publication = on_publication
        self._serial_factory = serial_factory
        self.lock = threading.Condition(threading.RLock())  # guards everything below
        self._request_lock = threading.Lock()  # one request in flight
        self._ser: SerialPort | None = None
        self._broken: ConnectionLost | None = None
        self._reader: threading.Thread | None = None
        self._buf = bytearray()
        self._pending: _Pending | None = None

    # --- the port -------------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the port and forget what waited in it; ConnectionLost if it cannot be opened."""
        if self._ser is not None:
            self.close()
        try:
            ser = self._serial_factory(self.port, self.baudrate, timeout=self.read_slice_s, write_timeout=1.0)
        except SERIAL_ERRORS as exc:
            raise ConnectionLost(f"cannot open {self.port}: {exc}") from exc
        try:
            ser.reset_input_buffer()  # lines queued while nobody read would get stamped now
        except SERIAL_ERRORS as exc:
            with contextlib.suppress(Exception):
                ser.close()
            raise ConnectionLost(f"cannot flush {self.port}: {exc}") from exc
        with self.lock:
            self._ser, self._broken = ser, None
            self._buf.clear()

    def close(self) -> None:
        """Close the port; a thread waiting on it gets ConnectionLost. Never raises."""
        me = threading.current_thread()
        with self.lock:
            ser, self._ser, self._broken = self._ser, None, None
            if self._pending is not None and not self._pending.settled:
                self._pending.error = PortClosed(f"{self.port} closed")
            deadline = time.monotonic() + 2 * self.read_slice_s + 1.0
            while self._reader not in (None, me) and time.monotonic() < deadline:
                self.lock.wait(0.05)  # let another thread finish its read slice first
            self._buf.clear()
            self.lock.notify_all()
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.close()

    # --- requests ---------------------------------------------------------------------------------
    def request(
        self,
        line: str,
        timeout: float,
        *,
        expect_response: bool = True,
        expected: tuple[type[ThingSetError], ...] = (),
    ) -> Response | None:
        """Send one request line and return its success response (None if none is expected).

        Raises a ThingSetError subclass for an error response, NoResponse on a time-out,
        ConnectionLost if the port is gone. An error of an ``expected`` class is an answer the
        caller asked for (a probe: is this item here?): it is raised but neither counted as a
        request error nor logged as a warning.
        """
        data = codec.frame(line)
        deadline = time.monotonic() + timeout
        if not self._request_lock.acquire(timeout=timeout):
            self.health.count("request_errors")
            log.warning("instrument=mppt event=request_error request=%r error=busy", line)
            raise NoResponse(f"{line!r}: another request is still waiting for its response")
        try:
            pending = _Pending(line)
            with self.lock:
                self._check_usable()
                ser = self._ser
                self._pending = pending
                self.health.count("requests")
            try:
                self._write(ser, data)
                if not expect_response:
                    return None
                answered = self.pump_until(lambda: pending.settled, deadline)
            finally:
                with self.lock:
                    if self._pending is pending:
                        self._pending = None
            if pending.error is not None:
                raise ConnectionLost(str(pending.error))
            if not answered or pending.response is None:
                raise NoResponse(f"no response to {line!r} within {timeout:g} s")
            if not pending.response.ok:
                raise error_for(line, pending.response)
            return pending.response
        except InstrumentError as exc:
            if not isinstance(exc, expected):
                self.health.count("request_errors")
                log.warning("instrument=mppt event=request_error request=%r error=%s", line, exc)
            raise
        finally:
            self._request_lock.release()

    def _write(self, ser: SerialPort | None, data: bytes) -> None:
        if ser is None:
            raise PortClosed(f"{self.port} is not open")
        try:
            ser.write(data)
        except SERIAL_ERRORS as exc:
            error = ConnectionLost(f"{self.port}: write failed: {exc}")
            self._fail(error)
            raise error from exc

    def _check_usable(self) -> None:
        """Raise if the port cannot be used (call with the lock held)."""
        if self._broken is not None:
            raise ConnectionLost(str(self._broken))
        if self._ser is None:
            raise PortClosed(f"{self.port} is not open")

    # --- reading --------------------------------------------------------------------------------------
    def pump_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Read and route lines until ``done()`` (called with the lock held) or the deadline; one
        thread reads at a time. Raises ConnectionLost if the port breaks or is closed."""
        me = threading.current_thread()
        while True:
            with self.lock:
                while True:
                    if done():
                        return True
                    self._check_usable()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    if self._reader is None:
                        self._reader, ser = me, self._ser
                        break
                    self.lock.wait(min(remaining, 0.25))  # the reader notifies after each slice
            try:
                chunk = self._read_slice(ser)
            except ConnectionLost as exc:
                with self.lock:
                    self._reader = None
                self._fail(exc)
                raise
            except BaseException:
                with self.lock:
                    self._reader = None
                    self.lock.notify_all()
                raise
            with self.lock:
                self._reader = None
                try:
                    if chunk:
                        self._feed(chunk)
                finally:
                    self.lock.notify_all()

    def _read_slice(self, ser: SerialPort | None) -> bytes:
        """What arrives within one read slice: wait for a first byte, then take all that is there."""
        if ser is None:
            raise PortClosed(f"{self.port} is not open")
        try:
            data = ser.read(1)
            if data and (waiting := ser.in_waiting):
                data += ser.read(waiting)
        except SERIAL_ERRORS as exc:
            raise ConnectionLost(f"{self.port}: read failed: {exc}") from exc
        return data

    def _fail(self, error: ConnectionLost) -> None:
        """The port broke: remember it and release a waiting request."""
        with self.lock:
            if self._broken is None and self._ser is not None:
                self._broken = error
            if self._pending is not None and not self._pending.settled:
                self._pending.error = error
            self.lock.notify_all()

    def _feed(self, chunk: bytes) -> None:
        """Split complete lines off the buffer and route them (lock held). The lines leave the
        buffer before any is routed: whatever happens to one line, it is never read twice."""
        buf = self._buf
        buf += chunk
        lines: list[bytes | int] = []  # a line, or the size of one too long to look at
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            lines.append(end - start if end - start > self.max_line else bytes(buf[start:end]))
            start = end + 1
        del buf[:start]
        if len(buf) > self.max_line:  # no line end in sight: drop what we have
            lines.append(len(buf))
            buf.clear()
        for line in lines:
            if isinstance(line, int):
                self._too_long(line)
            else:
                self._dispatch(line)

    def _too_long(self, size: int) -> None:
        self.health.count("lines_ignored")
        self.health.count("parse_errors")
        log.warning("instrument=mppt event=line_too_long bytes=%d", size)

    def _dispatch(self, line: bytes) -> None:
        """Route one line. A line whose handling fails for any reason is dropped, counted and
        logged: one line must never stop the reading (issue 11, finding 6)."""
        try:
            self._route(line)
        except Exception:
            self.health.count("lines_ignored")
            self.health.count("parse_errors")
            log.exception("instrument=mppt event=line_failed line=%r", line[:200])

    def _route(self, line: bytes) -> None:
        message = codec.parse_line(line)
        if isinstance(message, Publication):
            self._on_publication(message)
        elif isinstance(message, Response):
            pending = self._pending
            if pending is None or pending.settled:
                self.health.count("unexpected_responses")
                log.warning("instrument=mppt event=unexpected_response response=%r", message)
            else:
                pending.response = message
        else:
            self.health.count("lines_ignored")
            level = logging.WARNING if message.malformed else logging.DEBUG
            if message.malformed:
                self.health.count("parse_errors")
            log.log(
                level,
                "instrument=mppt event=%s reason=%s line=%r",
                "parse_error" if message.malformed else "line_ignored",
                message.reason,
                message.line[:200],
            )
