"""Driver for the LibreSolar MPPT-1210-HUS charge controller: ThingSet text mode over USB serial.

The controller publishes a statement about once a second; each becomes one Reading, stamped when
its line was complete. The firmware generation (dialect, see ``fields``) is learnt from the
publication path (``#``, ``#serial``, ``#mSerial``, ``#mLive``) and, before the first
publication, from which identity group answers (``?info`` or ``?Device``).

Requests and publications share one line, and ThingSet text mode has no request ids: responses
come in order, one per request. So requests are serialised (one outstanding at a time), and the
port is read by one thread at a time (leader/follower): whoever is waiting (``read()`` for
samples, ``request()`` for its response) reads, and routes every line: publications to the buffer
that ``read()`` drains, a response to the request in flight. A request may thus come from another
thread while ``read()`` runs, or from the reading thread between reads; no line is lost either way.
Known limit: a response arriving after its request timed out is dropped and counted
(``unexpected_responses``), unless a next request is already in flight, which then takes it.

Items the firmware does not publish (the temperatures ``int_degc``, ``mosfet_degc``, ``bat_degc``
...) can be asked for every ``extra_every_s`` (``extra_fields``): their values ride on the
publication that came just before the request, so they carry its time stamp although they were
measured up to one request round trip (milliseconds) later. An item this firmware lacks is left
out after its first ``NotFound``; a failed request costs the extras, never the publications.

Counters (``health.counters``), besides the base's ``samples_read``, ``connection_losses`` and
``port_reopens``: ``publications``; ``lines_ignored`` (every line that gave nothing: banner, blank,
half lines, and the malformed ones, which also count as ``parse_errors``); ``requests``,
``request_errors``; ``unexpected_responses``; ``unknown_items`` (distinct item names soclab does not
map, each logged once); ``values_skipped`` (mapped items whose value was not a number or bool);
``empty_publications``, ``unknown_channels``, ``readings_dropped``, ``identity_failures``;
``extra_reads`` and ``extra_errors``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import serial

from soclab.edge.instruments.base import (
    ConnectionLost,
    DeviceError,
    Instrument,
    InstrumentError,
    Reading,
    Value,
)
from soclab.edge.instruments.libresolar_mppt import codec
from soclab.edge.instruments.libresolar_mppt.codec import Publication, Response
from soclab.edge.instruments.libresolar_mppt.fields import (
    DIALECT_BY_CHANNEL,
    DIALECTS,
    FIELDS,
    Dialect,
    Item,
    map_items,
)

log = logging.getLogger(__name__)

BAUDRATE = 115200
Identity = dict[str, str | float | int | bool | None]


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


class UnexpectedResponse(InstrumentError):
    """A success response whose payload does not have the expected shape."""


class DialectUnknown(InstrumentError):
    """No publication or identity has told which firmware generation this is yet."""


class _PortClosed(ConnectionLost):
    """The port was closed on purpose (``close()``) while a thread waited on it."""


@dataclass
class _Pending:
    line: str
    response: Response | None = None
    error: ConnectionLost | None = None

    @property
    def settled(self) -> bool:
        return self.response is not None or self.error is not None


class MpptDriver(Instrument):
    """The charge controller on a serial port; ``read()`` yields its publications as Readings."""

    kind: ClassVar[str] = "mppt"

    def __init__(
        self,
        port: str,
        baudrate: int = BAUDRATE,
        *,
        dialect: str | None = None,
        request_timeout_s: float = 2.0,
        identity_timeout_s: float = 1.0,
        read_slice_s: float = 0.05,
        max_buffered: int = 10_000,
        max_line: int = 8192,
        extra_fields: Iterable[str] = (),
        extra_every_s: float = 10.0,
    ) -> None:
        """``dialect`` is only a first guess (``"v21"``, ``"v0.4"``, ``"v0.5"``, ``"v0.6"``):
        the publications decide. ``read_slice_s`` bounds one blocking serial read.
        ``extra_fields``: soclab names of unpublished items to ask for every ``extra_every_s``."""
        super().__init__()
        if dialect is not None and dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}; known: {', '.join(DIALECTS)}")
        if isinstance(extra_fields, str):
            raise TypeError("extra_fields must be a list of field names, not one string")
        self.extra_fields = tuple(dict.fromkeys(extra_fields))
        unknown = [name for name in self.extra_fields if name not in FIELDS]
        if unknown:
            raise ValueError(f"unknown extra_fields {unknown}; known: {', '.join(FIELDS)}")
        if not extra_every_s > 0:
            raise ValueError(f"extra_every_s must be > 0, got {extra_every_s!r}")
        self.extra_every_s = extra_every_s
        self._extras_due = 0.0  # time.monotonic() of the next extra read
        self._extras_missing: set[str] = set()  # fields this firmware answered NotFound for
        self.port = port
        self.baudrate = baudrate
        self.request_timeout_s = request_timeout_s
        self.identity_timeout_s = identity_timeout_s
        self.read_slice_s = read_slice_s
        self.max_buffered = max_buffered
        self.max_line = max_line
        self._dialect: Dialect | None = DIALECTS[dialect] if dialect else None
        self._cond = threading.Condition(threading.RLock())  # guards everything below
        self._request_lock = threading.Lock()  # one request in flight
        self._ser: serial.Serial | None = None
        self._broken: ConnectionLost | None = None
        self._reader: threading.Thread | None = None
        self._buf = bytearray()
        self._readings: deque[Reading] = deque()
        self._pending: _Pending | None = None
        self._identity: Identity = {}
        self._logged: set[str] = set()  # things logged once (unknown items, ...)

    # Constructor options a configuration may set, with how to read them from a string.
    _OPTIONS: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "baudrate": int,
        "dialect": str,
        "request_timeout_s": float,
        "identity_timeout_s": float,
        "read_slice_s": float,
        "max_buffered": int,
        "max_line": int,
        "extra_fields": lambda v: [n.strip() for n in v.split(",") if n.strip()] if isinstance(v, str) else v,
        "extra_every_s": float,
    }

    @classmethod
    def from_config(cls, table: dict[str, Any]) -> MpptDriver:
        """Build from the ``[instrument]`` table (``port`` and the keyword options above); values
        from the environment arrive as strings and are converted here."""
        options = dict(table)
        if "port" not in options:
            raise ValueError("[instrument] port is required for the mppt driver")
        port = str(options.pop("port"))
        unknown = sorted(set(options) - set(cls._OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown [instrument] option(s) {unknown}; known: port, {', '.join(cls._OPTIONS)}"
            )
        kwargs = {key: cls._OPTIONS[key](value) for key, value in options.items()}
        return cls(port, kwargs.pop("baudrate", BAUDRATE), **kwargs)

    # --- Instrument -------------------------------------------------------------------------------
    def _open(self) -> None:
        if self._ser is not None:
            self._close()
        try:
            ser = serial.Serial(self.port, self.baudrate, timeout=self.read_slice_s, write_timeout=1.0)
        except (serial.SerialException, OSError) as exc:
            raise ConnectionLost(f"cannot open {self.port}: {exc}") from exc
        try:
            ser.reset_input_buffer()  # lines queued while nobody read would get stamped now
        except (serial.SerialException, OSError) as exc:
            with contextlib.suppress(Exception):
                ser.close()
            raise ConnectionLost(f"cannot flush {self.port}: {exc}") from exc
        with self._cond:
            self._ser, self._broken = ser, None
            self._buf.clear()
        self._extras_due, self._extras_missing = 0.0, set()  # perhaps another firmware now
        try:
            self._learn_identity()
        except ConnectionLost:
            self._close()
            raise

    def _close(self) -> None:
        me = threading.current_thread()
        with self._cond:
            ser, self._ser, self._broken = self._ser, None, None
            if self._pending is not None and not self._pending.settled:
                self._pending.error = _PortClosed(f"{self.port} closed")
            deadline = time.monotonic() + 2 * self.read_slice_s + 1.0
            while self._reader not in (None, me) and time.monotonic() < deadline:
                self._cond.wait(0.05)  # let another thread finish its read slice first
            self._buf.clear()
            self._cond.notify_all()
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.close()

    def _read(self, timeout: float) -> list[Reading]:
        with contextlib.suppress(_PortClosed):
            self._pump_until(lambda: bool(self._readings), time.monotonic() + timeout)
        with self._cond:
            out = list(self._readings)
            self._readings.clear()
        if out and self.extra_fields and time.monotonic() >= self._extras_due:
            self._extras_due = time.monotonic() + self.extra_every_s
            self._add_extras(out[-1])
        return out

    def _add_extras(self, reading: Reading) -> None:
        """Ask for the extra fields, one request per group, and add them to ``reading``."""
        dialect = self._dialect
        if dialect is None:
            return
        wanted = set(self.extra_fields) - self._extras_missing - set(reading.values)
        batches: list[list[Item]] = []
        for group in dict.fromkeys(item.group for item in dialect.items):
            batch = [item for item in dialect.items if item.group == group and item.field in wanted]
            batches += [batch] if batch else []
        for name in wanted - {item.field for batch in batches for item in batch}:
            self._forget_extra(name, dialect)
        while batches:
            batch = batches.pop()
            try:
                data = self.read_items(batch[0].group, [item.name for item in batch])
            except NotFound:  # which item is missing is not said: ask for each alone
                if len(batch) > 1:
                    batches += [[item] for item in batch]
                else:
                    self._forget_extra(batch[0].field, dialect)
                continue
            except InstrumentError:  # logged by the request; a broken port shows at the next read
                self._count("extra_errors")
                return
            mapped = map_items({batch[0].group: data} if dialect.nested else data, dialect).values
            for name, value in mapped.items():
                reading.values.setdefault(name, value)
            self._count("extra_reads")

    def _forget_extra(self, name: str, dialect: Dialect) -> None:
        self._extras_missing.add(name)
        self._log_once(f"extra:{name}", "event=extra_unavailable field=%s dialect=%s", name, dialect.name)

    def identity(self) -> Identity:
        with self._cond:
            ident = dict(self._identity)
            ident["dialect"] = self._dialect.name if self._dialect else None
        return ident

    @property
    def dialect(self) -> str | None:
        """The firmware generation as learnt so far."""
        with self._cond:
            return self._dialect.name if self._dialect else None

    # --- requests ---------------------------------------------------------------------------------
    def request(self, line: str, timeout: float | None = None) -> Response:
        """Send one request line (e.g. ``?output``) and return its success response.

        Raises a ThingSetError subclass (with ``.status``) for an error response, NoResponse on a
        time-out, ConnectionLost if the port is gone (``read()`` then reopens it).
        """
        response = self._exchange(line, timeout)
        if response is None:  # cannot happen with expect_response=True; keeps the type exact
            raise NoResponse(f"no response to {line!r}")
        return response

    def read_items(
        self, group: str, names: Iterable[str] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Item values of one group by firmware name: all of them (``?output``) or some (fetch)."""
        if names is None:
            response = self.request(codec.format_get(group), timeout)
            if not isinstance(response.payload, dict):
                raise self._unexpected(group, response, "an object")
            return dict(response.payload)
        wanted = list(names)
        response = self.request(codec.format_fetch(group, wanted), timeout)
        if not isinstance(response.payload, list) or len(response.payload) != len(wanted):
            raise self._unexpected(group, response, f"a list of {len(wanted)} values")
        return dict(zip(wanted, response.payload, strict=True))

    def read_fields(self, timeout: float | None = None) -> dict[str, Value]:
        """Every mapped item, also those not published (``bat_w``, ``int_degc`` ...), by soclab name."""
        dialect = self._require_dialect(timeout)
        values: dict[str, Value] = {}
        for group in dict.fromkeys(item.group for item in dialect.items):
            data = self.read_items(group, timeout=timeout)
            values.update(map_items({group: data} if dialect.nested else data, dialect).values)
        return values

    def write_conf(self, values: Mapping[str, Value], timeout: float | None = None) -> None:
        """Write settings: ``=conf {...}`` (v21, v0.4); in v0.5 name them ``"Group/item"``."""
        dialect = self._require_dialect(timeout)
        if dialect.conf_group is not None:
            self.request(codec.format_update(dialect.conf_group, values), timeout)
            return
        by_group: dict[str, dict[str, Value]] = {}
        for key, value in values.items():
            group, sep, name = key.rpartition("/")
            if not sep:
                raise ValueError(f"{dialect.name} keeps settings in groups: write {key!r} as 'Group/{key}'")
            by_group.setdefault(group, {})[name] = value
        for group, items in by_group.items():
            self.request(codec.format_update(group, items), timeout)

    def set_input(
        self,
        *,
        LoadEn: bool | None = None,  # noqa: N803 - the firmware's names
        UsbEn: bool | None = None,  # noqa: N803
        DcdcEn: bool | None = None,  # noqa: N803
        timeout: float | None = None,
    ) -> None:
        """Switch outputs: ``=input {"LoadEn":false}`` (v21, v0.4), ``=Load {"wEnable":false}`` (v0.5)."""
        wanted = {
            k: v for k, v in (("LoadEn", LoadEn), ("UsbEn", UsbEn), ("DcdcEn", DcdcEn)) if v is not None
        }
        if not wanted:
            raise ValueError("set_input needs at least one of LoadEn, UsbEn, DcdcEn")
        for key, value in wanted.items():
            if not isinstance(value, bool):
                raise TypeError(f"{key} must be a bool, got {value!r}")
        dialect = self._require_dialect(timeout)
        by_group: dict[str, dict[str, Value]] = {}
        for key, value in wanted.items():
            group, name = dialect.inputs[key]
            by_group.setdefault(group, {})[name] = value
        for group, items in by_group.items():
            self.request(codec.format_update(group, items), timeout)

    def set_publication(self, enabled: bool, timeout: float | None = None) -> None:
        """Switch the serial publication on or off (``=pub/serial {"Enable":true}`` on v21)."""
        dialect = self._require_dialect(timeout)
        group, name = dialect.pub_enable
        self.request(codec.format_update(group, {name: bool(enabled)}), timeout)

    def reset(self, timeout: float | None = None) -> None:
        """Reboot the controller (``!exec/reset``); the firmware reboots without answering."""
        dialect = self._require_dialect(timeout)
        self._exchange(codec.format_exec(dialect.reset), timeout, expect_response=False)

    # --- the line -----------------------------------------------------------------------------------
    def _exchange(
        self, line: str, timeout: float | None, *, expect_response: bool = True, probe: bool = False
    ) -> Response | None:
        """One request and its response. ``probe``: an error answer is an expected outcome (identity
        probing), so it is neither counted nor logged here."""
        data = codec.frame(line)
        timeout = self.request_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if not self._request_lock.acquire(timeout=timeout):
            self._count("request_errors")
            log.warning("instrument=%s event=request_error request=%r error=busy", self.kind, line)
            raise NoResponse(f"{line!r}: another request is still waiting for its response")
        try:
            pending = _Pending(line)
            with self._cond:
                self._check_usable()
                ser = self._ser
                self._pending = pending
                self.health.counters["requests"] += 1
            try:
                self._write(ser, data)
                if not expect_response:
                    return None
                answered = self._pump_until(lambda: pending.settled, deadline)
            finally:
                with self._cond:
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
            if not (probe and isinstance(exc, ThingSetError)):
                self._count("request_errors")
                log.warning("instrument=%s event=request_error request=%r error=%s", self.kind, line, exc)
            raise
        finally:
            self._request_lock.release()

    def _write(self, ser: serial.Serial | None, data: bytes) -> None:
        if ser is None:
            raise _PortClosed(f"{self.port} is not open")
        try:
            ser.write(data)
        except (serial.SerialException, OSError) as exc:
            error = ConnectionLost(f"{self.port}: write failed: {exc}")
            self._fail(error)
            raise error from exc

    def _check_usable(self) -> None:
        """Raise if the port cannot be used (call with the lock held)."""
        if self._broken is not None:
            raise ConnectionLost(str(self._broken))
        if self._ser is None:
            raise _PortClosed(f"{self.port} is not open")

    def _pump_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Read and route lines until ``done()`` or the deadline; one thread reads at a time."""
        me = threading.current_thread()
        while True:
            with self._cond:
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
                    self._cond.wait(min(remaining, 0.25))  # the reader notifies after each slice
            try:
                chunk = self._read_slice(ser)
            except ConnectionLost as exc:
                with self._cond:
                    self._reader = None
                self._fail(exc)
                raise
            except BaseException:
                with self._cond:
                    self._reader = None
                    self._cond.notify_all()
                raise
            with self._cond:
                self._reader = None
                try:
                    if chunk:
                        self._feed(chunk)
                finally:
                    self._cond.notify_all()

    def _read_slice(self, ser: serial.Serial | None) -> bytes:
        """What arrives within one read slice: wait for a first byte, then take all that is there."""
        if ser is None:
            raise _PortClosed(f"{self.port} is not open")
        try:
            data = ser.read(1)
            if data and (waiting := ser.in_waiting):
                data += ser.read(waiting)
        except (serial.SerialException, OSError) as exc:
            raise ConnectionLost(f"{self.port}: read failed: {exc}") from exc
        return data

    def _fail(self, error: ConnectionLost) -> None:
        """The port broke: remember it and release a waiting request."""
        with self._cond:
            if self._broken is None and self._ser is not None:
                self._broken = error
            if self._pending is not None and not self._pending.settled:
                self._pending.error = error
            self._cond.notify_all()

    def _feed(self, chunk: bytes) -> None:
        """Split complete lines off the buffer and route them (lock held)."""
        buf = self._buf
        buf += chunk
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if end - start > self.max_line:
                self._too_long(end - start)
            else:
                self._dispatch(bytes(buf[start:end]))
            start = end + 1
        del buf[:start]
        if len(buf) > self.max_line:  # no line end in sight: drop what we have
            self._too_long(len(buf))
            buf.clear()

    def _too_long(self, size: int) -> None:
        self.health.counters["lines_ignored"] += 1
        self.health.counters["parse_errors"] += 1
        log.warning("instrument=%s event=line_too_long bytes=%d", self.kind, size)

    def _dispatch(self, line: bytes) -> None:
        message = codec.parse_line(line)
        if isinstance(message, Publication):
            self._on_publication(message)
        elif isinstance(message, Response):
            self._on_response(message)
        else:
            self.health.counters["lines_ignored"] += 1
            if message.malformed:
                self.health.counters["parse_errors"] += 1
                log.warning(
                    "instrument=%s event=parse_error reason=%s line=%r",
                    self.kind,
                    message.reason,
                    message.line[:200],
                )
            else:
                log.debug(
                    "instrument=%s event=line_ignored reason=%s line=%r",
                    self.kind,
                    message.reason,
                    message.line[:200],
                )

    def _on_publication(self, pub: Publication) -> None:
        t_ns = self.now_ns()  # the line is complete now
        counters = self.health.counters
        dialect = DIALECT_BY_CHANNEL.get(pub.channel)
        if dialect is None:
            counters["lines_ignored"] += 1
            counters["unknown_channels"] += 1
            self._log_once(f"channel:{pub.channel}", "unknown publication path %r", pub.channel)
            return
        self._learn_dialect(dialect, "publication")
        counters["publications"] += 1
        mapped = map_items(pub.data, dialect)
        for key in mapped.unknown:
            if self._log_once(f"unknown:{key}", "item %r is not mapped to a soclab field; left out", key):
                counters["unknown_items"] += 1  # distinct names
        for key in mapped.non_numeric:
            counters["values_skipped"] += 1
            self._log_once(f"non_numeric:{key}", "item %r has a value that is not a number or bool", key)
        if not mapped.values:
            counters["empty_publications"] += 1
            log.warning("instrument=%s event=empty_publication channel=%r", self.kind, pub.channel)
            return
        if len(self._readings) >= self.max_buffered:
            self._readings.popleft()
            counters["readings_dropped"] += 1
            self._log_once("readings_dropped", "reading buffer full (%d): oldest dropped", self.max_buffered)
        self._readings.append(Reading(t_ns, mapped.values))

    def _on_response(self, response: Response) -> None:
        pending = self._pending
        if pending is None or pending.settled:
            self.health.counters["unexpected_responses"] += 1
            log.warning("instrument=%s event=unexpected_response response=%r", self.kind, response)
            return
        pending.response = response

    # --- identity and dialect ---------------------------------------------------------------------
    def _learn_dialect(self, dialect: Dialect, source: str) -> None:
        with self._cond:
            if self._dialect is not dialect:
                log.info("instrument=%s event=dialect dialect=%s source=%s", self.kind, dialect.name, source)
                self._dialect = dialect

    def _require_dialect(self, timeout: float | None) -> Dialect:
        with self._cond:
            if self._dialect is not None:
                return self._dialect
        wait = self.request_timeout_s if timeout is None else timeout
        self._pump_until(lambda: self._dialect is not None, time.monotonic() + wait)
        with self._cond:
            if self._dialect is None:
                raise DialectUnknown("no publication or identity has told the firmware generation yet")
            return self._dialect

    def _learn_identity(self) -> None:
        """Ask the controller who it is. Never fatal (identity may stay partial) unless the port is lost."""
        with self._cond:
            known = self._dialect
        candidates = [known] if known else [DIALECTS["v21"], DIALECTS["v0.5"]]  # v0.4 answers as v21
        identity: Identity = {}
        for dialect in candidates:
            try:
                identity = self._read_identity(dialect)
                break
            except NotFound:
                continue
            except (DeviceError, NoResponse, UnexpectedResponse) as exc:
                self._count("identity_failures")
                log.warning("instrument=%s event=identity_failed error=%r", self.kind, str(exc))
                break
        else:
            self._count("identity_failures")
            log.warning("instrument=%s event=identity_failed error='no identity group found'", self.kind)
        with self._cond:
            self._identity = identity
        log.info(
            "instrument=%s event=identity %s", self.kind, " ".join(f"{k}={v!r}" for k, v in identity.items())
        )

    def _read_identity(self, dialect: Dialect) -> Identity:
        groups: dict[str, dict[str, str]] = {}
        for role, (group, name) in dialect.identity.items():
            groups.setdefault(group, {})[name] = role
        identity: Identity = {}
        for group, roles in sorted(groups.items(), key=lambda kv: kv[0] == ""):  # root (optional) last
            if group:
                response = self._exchange(codec.format_get(group), self.identity_timeout_s, probe=True)
                data = response.payload if isinstance(response.payload, dict) else {}
                guess = self._guess_dialect(dialect, response, data)
                if guess is not None and self.dialect is None:
                    self._learn_dialect(guess, "identity")
            else:
                names = list(roles)
                try:
                    response = self._exchange(
                        codec.format_fetch("", names), self.identity_timeout_s, probe=True
                    )
                except (ThingSetError, NoResponse):
                    continue  # the node id is a nice-to-have
                if response is None or not isinstance(response.payload, list):
                    continue
                data = dict(zip(names, response.payload, strict=False))
            for name, role in roles.items():
                if isinstance(data.get(name), str | int | float | bool):
                    identity[role] = data[name]
        return identity

    @staticmethod
    def _guess_dialect(dialect: Dialect, response: Response, data: Mapping[str, Any]) -> Dialect | None:
        if dialect.name == "v21":
            return DIALECTS["v0.4"] if "MetadataURL" in data else DIALECTS["v21"]
        if dialect.nested:
            return DIALECTS["v0.5"] if response.description is not None else DIALECTS["v0.6"]
        return dialect

    # --- bookkeeping ------------------------------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        with self._cond:
            self.health.counters[name] += n

    def _log_once(self, key: str, message: str, *args: object) -> bool:
        with self._cond:
            if key in self._logged:
                return False
            self._logged.add(key)
        log.warning("instrument=%s " + message, self.kind, *args)
        return True

    def _unexpected(self, group: str, response: Response, wanted: str) -> UnexpectedResponse:
        self._count("request_errors")
        return UnexpectedResponse(f"{group!r}: expected {wanted}, got {response.payload!r}")
