"""Driver for the LibreSolar MPPT-1210-HUS charge controller: ThingSet text mode over USB serial.

The line itself (framing, the reader, request correlation) is ``link.ThingSetLink``; this module
is what the controller means: which firmware generation it runs (dialect, see ``fields``), who it
is, which of its items are soclab fields, and how it is switched.

The controller publishes a statement about once a second; each becomes one Reading, stamped when
its line was complete. The dialect is learnt from the publication path (``#``, ``#serial``,
``#mSerial``, ``#mLive``) and, before the first publication, from which identity group answers
(``?info`` or ``?Device``). A value the firmware sends as ``nan`` is left out of the sample and
named in its flags (``invalid:<field>``).

Items the firmware does not publish (the temperatures ``int_degc``, ``bat_degc`` ...) can be
asked for every ``extra_every_s`` (``extra_fields``): their values ride on the publication that
came just before the request, so they carry its time stamp although they were measured up to one
request round trip (milliseconds) later. An item this firmware lacks (``:A4 Not Found.``: the
MPPT-1210-HUS has no ``Mosfet_degC``) is an answer, not an error: it is logged once, left out
from then on, and asked again only when the port opens on another firmware or controller.
A failed request costs the extras, never the publications.

Control: ``set_charging`` (the DC/DC converter, ``DcdcEn``), ``set_load_output`` (``LoadEn``),
``set_charge_limits`` (``conf`` items such as ``BatChgMax_A``, ``Topping_V``) and their read-backs
``read_inputs``, ``read_charge_limits``. The controller's refusals are typed errors
(``NotFound``, ``Forbidden``, ``Unauthorized``, ``BadRequest``); what a firmware generation
cannot do raises ``Unsupported`` before anything is sent.

Counters (``health``), besides the link's and the base's: ``publications``; ``unknown_items``
(distinct item names soclab does not map, each logged once, the first 1000 of them);
``values_skipped`` (mapped items whose value was not a number or bool, or an integer beyond 64
bits); ``invalid_values`` (nan/inf); ``empty_publications``, ``unknown_channels``,
``readings_dropped``, ``identity_failures``; ``extra_reads`` and ``extra_errors``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from soclab.edge.instruments.base import (
    ConnectionLost,
    DeviceError,
    Identity,
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
    Dialect,
    Item,
    map_items,
)
from soclab.edge.instruments.libresolar_mppt.link import (
    BadRequest,
    Forbidden,
    NoResponse,
    NotFound,
    PortClosed,
    ServerError,
    ThingSetError,
    ThingSetLink,
    Unauthorized,
)
from soclab.edge.instruments.libresolar_mppt.options import MpptOptions
from soclab.edge.instruments.serial_port import SerialFactory, open_serial

log = logging.getLogger("soclab.edge.instruments.libresolar_mppt")

__all__ = [
    "BadRequest",
    "ChargeLimits",
    "DialectUnknown",
    "Forbidden",
    "Inputs",
    "MpptDriver",
    "NoResponse",
    "NotFound",
    "ServerError",
    "ThingSetError",
    "Unauthorized",
    "UnexpectedResponse",
    "Unsupported",
]


class UnexpectedResponse(InstrumentError):
    """A success response whose payload does not have the expected shape."""


class DialectUnknown(InstrumentError):
    """No publication or identity has told which firmware generation this is yet."""


class Unsupported(InstrumentError):
    """This firmware generation has no item for what was asked; nothing was sent."""


@dataclass(frozen=True, slots=True)
class Inputs:
    """The controller's switches: load output, USB output, DC/DC converter (the charger)."""

    load: bool
    usb: bool
    charging: bool


@dataclass(frozen=True, slots=True)
class ChargeLimits:
    """Charging settings (``conf``): maximum charge current, charge (topping) voltage, and the
    current below which topping ends. None: not changed (writing) or not in this firmware."""

    current_max_a: float | None = None
    voltage_v: float | None = None
    topping_cutoff_a: float | None = None


_LIMIT_ROLES = {
    "current_max_a": "charge_current_max_a",
    "voltage_v": "charge_voltage_v",
    "topping_cutoff_a": "topping_cutoff_a",
}
_INPUT_KEYS = {"load": "LoadEn", "usb": "UsbEn", "charging": "DcdcEn"}
_LOGGED_MAX = 1000


class MpptDriver(Instrument):
    """The charge controller on a serial port; ``read()`` yields its publications as Readings."""

    kind: ClassVar[str] = "mppt"

    def __init__(self, options: MpptOptions, *, serial_factory: SerialFactory = open_serial) -> None:
        super().__init__()
        self.options = options
        self.port = options.port
        self.extra_fields = options.extra_fields
        self.extra_every_s = options.extra_every_s
        self.request_timeout_s = options.request_timeout_s
        self.identity_timeout_s = options.identity_timeout_s
        self.max_buffered = options.max_buffered
        self._link = ThingSetLink(
            options.port,
            options.baudrate,
            health=self.health,
            on_publication=self._on_publication,
            serial_factory=serial_factory,
            read_slice_s=options.read_slice_s,
            max_line=options.max_line,
        )
        self._lock = self._link.lock  # guards the state below, as the link's
        self._dialect: Dialect | None = DIALECTS[options.dialect] if options.dialect else None
        self._readings: deque[Reading] = deque()
        self._identity: Identity = {}
        self._logged: set[str] = set()  # things logged once (unknown items, ...)
        self._extras_due = 0.0  # time.monotonic() of the next extra read
        self._extras_missing: set[str] = set()  # fields the controller answered NotFound for
        self._extras_for: tuple[Any, ...] | None = None  # the controller those answers came from

    # --- Instrument -------------------------------------------------------------------------------
    def _open(self) -> None:
        self._link.open()
        try:
            self._learn_identity()
        except ConnectionLost:
            self._link.close()
            raise
        with self._lock:
            controller = (
                self._dialect,
                self._identity.get("serial_number"),
                self._identity.get("firmware_version"),
            )
        if controller != self._extras_for:  # another firmware or controller: ask for everything again
            self._extras_for, self._extras_missing = controller, set()
        self._extras_due = 0.0

    def _close(self) -> None:
        self._link.close()

    def _read(self, timeout: float) -> list[Reading]:
        # A break raises ConnectionLost (the base reopens); what was read before it stays buffered.
        with contextlib.suppress(PortClosed):  # closed on purpose while reading
            self._link.pump_until(lambda: bool(self._readings), time.monotonic() + timeout)
        with self._lock:
            out = list(self._readings)
            self._readings.clear()
        if out and self.extra_fields and time.monotonic() >= self._extras_due:
            self._extras_due = time.monotonic() + self.extra_every_s
            out[-1] = self._add_extras(out[-1])
        return out

    def identity(self) -> Identity:
        with self._lock:
            ident = dict(self._identity)
            ident["dialect"] = self._dialect.name if self._dialect else None
        return ident

    @property
    def dialect(self) -> str | None:
        """The firmware generation as learnt so far."""
        with self._lock:
            return self._dialect.name if self._dialect else None

    # --- requests ---------------------------------------------------------------------------------
    def request(self, line: str, timeout: float | None = None) -> Response:
        """Send one request line (e.g. ``?output``) and return its success response.

        Raises a ThingSetError subclass (with ``.status``) for an error response, NoResponse on a
        time-out, ConnectionLost if the port is gone (``read()`` then reopens it).
        """
        response = self._link.request(line, self._timeout(timeout))
        assert response is not None  # a response was expected
        return response

    def read_items(
        self,
        group: str,
        names: Iterable[str] | None = None,
        timeout: float | None = None,
        *,
        expected: tuple[type[ThingSetError], ...] = (),
    ) -> dict[str, Any]:
        """Item values of one group by firmware name: all of them (``?output``) or some (fetch)."""
        if names is None:
            response = self._link.request(codec.format_get(group), self._timeout(timeout), expected=expected)
            assert response is not None
            if not isinstance(response.payload, dict):
                raise self._unexpected(group, response, "an object")
            return dict(response.payload)
        wanted = list(names)
        line = codec.format_fetch(group, wanted)
        response = self._link.request(line, self._timeout(timeout), expected=expected)
        assert response is not None
        if not isinstance(response.payload, list) or len(response.payload) != len(wanted):
            raise self._unexpected(group, response, f"a list of {len(wanted)} values")
        return dict(zip(wanted, response.payload, strict=True))

    def read_fields(self, timeout: float | None = None) -> dict[str, Value]:
        """Every mapped item, also those not published (``bat_w``, ``int_degc`` ...), by soclab name."""
        dialect = self._require_dialect(timeout)
        values: dict[str, Value] = {}
        for group in dict.fromkeys(item.group for item in dialect.items):
            try:
                data = self.read_items(group, timeout=timeout)
            except NotFound:  # a group this firmware does not have (v0.4's "output" is "meas")
                continue
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
        self._link.request(codec.format_exec(dialect.reset), self._timeout(timeout), expect_response=False)

    # --- control ----------------------------------------------------------------------------------
    def set_charging(self, on: bool, timeout: float | None = None) -> None:
        """Switch the charger (the DC/DC converter, ``DcdcEn``) on or off."""
        self.set_input(DcdcEn=_boolean("charging", on), timeout=timeout)

    def set_load_output(self, on: bool, timeout: float | None = None) -> None:
        """Switch the controller's load output (``LoadEn``) on or off."""
        self.set_input(LoadEn=_boolean("load output", on), timeout=timeout)

    def read_inputs(self, timeout: float | None = None) -> Inputs:
        """The switches as the controller reports them."""
        dialect = self._require_dialect(timeout)
        by_group: dict[str, list[str]] = {}
        for group, name in dialect.inputs.values():
            by_group.setdefault(group, []).append(name)
        raw: dict[tuple[str, str], Any] = {}
        for group, names in by_group.items():
            whole = len(by_group) == 1  # v21, v0.4: "?input" is the three switches
            data = self.read_items(group, None if whole else names, timeout)
            raw.update({(group, name): data.get(name) for name in names})
        values = {attr: raw[dialect.inputs[key]] for attr, key in _INPUT_KEYS.items()}
        if not all(isinstance(v, bool) for v in values.values()):
            raise UnexpectedResponse(f"the switches are not all booleans: {values}")
        return Inputs(**values)

    def set_charge_limits(
        self,
        *,
        current_max_a: float | None = None,
        voltage_v: float | None = None,
        topping_cutoff_a: float | None = None,
        timeout: float | None = None,
    ) -> None:
        """Write the charge limits given (``=conf {"BatChgMax_A":8.0,"Topping_V":14.2}`` on v21).

        Each must be a finite number > 0; a limit this firmware has no item for raises
        ``Unsupported``. Both are checked before anything is sent."""
        given = {"current_max_a": current_max_a, "voltage_v": voltage_v, "topping_cutoff_a": topping_cutoff_a}
        wanted = {name: value for name, value in given.items() if value is not None}
        if not wanted:
            raise ValueError("set_charge_limits needs at least one limit")
        for name, value in wanted.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        dialect = self._require_dialect(timeout)
        items: dict[str, Value] = {}
        for name, value in wanted.items():
            group, item = self._conf_item(dialect, _LIMIT_ROLES[name])
            items[f"{group}/{item}" if dialect.conf_group is None else item] = float(value)
        self.write_conf(items, timeout)

    def read_charge_limits(self, timeout: float | None = None) -> ChargeLimits:
        """The charge limits the controller holds (None for those this firmware lacks)."""
        dialect = self._require_dialect(timeout)
        found: dict[str, float | None] = {}
        for name, role in _LIMIT_ROLES.items():
            where = dialect.conf.get(role)
            if where is None:
                found[name] = None
                continue
            value = self.read_items(where[0], [where[1]], timeout)[where[1]]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UnexpectedResponse(f"{where[1]} is not a number: {value!r}")
            found[name] = float(value)
        return ChargeLimits(**found)

    @staticmethod
    def _conf_item(dialect: Dialect, role: str) -> tuple[str, str]:
        where = dialect.conf.get(role)
        if where is None:
            raise Unsupported(f"firmware {dialect.name} has no setting for {role}")
        return where

    # --- publications (called by the link, its lock held) ------------------------------------------
    def _on_publication(self, pub: Publication) -> None:
        stamp = self.stamp()  # the line is complete now
        count = self.health.count
        dialect = DIALECT_BY_CHANNEL.get(pub.channel)
        if dialect is None:
            count("lines_ignored")
            count("unknown_channels")
            self._log_once(f"channel:{pub.channel}", "unknown publication path %r", pub.channel)
            return
        self._learn_dialect(dialect, "publication")
        count("publications")
        mapped = map_items(pub.data, dialect)
        for key in mapped.unknown:
            if self._log_once(f"unknown:{key}", "item %r is not mapped to a soclab field; left out", key):
                count("unknown_items")  # distinct names
        for key in mapped.non_numeric:
            count("values_skipped")
            self._log_once(f"non_numeric:{key}", "item %r has a value that is not a number or bool", key)
        if mapped.invalid:
            count("invalid_values", len(mapped.invalid))
        if not mapped.values and not mapped.invalid:
            count("empty_publications")
            log.warning("instrument=mppt event=empty_publication channel=%r", pub.channel)
            return
        if len(self._readings) >= self.max_buffered:
            self._readings.popleft()
            count("readings_dropped")
            self._log_once("readings_dropped", "reading buffer full (%d): oldest dropped", self.max_buffered)
        self._readings.append(Reading(stamp.t_ns, mapped.values, mapped.flags + stamp.flags))

    # --- extras -----------------------------------------------------------------------------------
    def _add_extras(self, reading: Reading) -> Reading:
        """Ask for the extra fields, one request per group, and return ``reading`` with them."""
        dialect = self._dialect
        if dialect is None:
            return reading
        wanted = set(self.extra_fields) - self._extras_missing - set(reading.values)
        batches: list[list[Item]] = []
        for group in dict.fromkeys(item.group for item in dialect.items):
            batch = [item for item in dialect.items if item.group == group and item.field in wanted]
            batches += [batch] if batch else []
        for name in wanted - {item.field for batch in batches for item in batch}:
            self._forget_extra(name, dialect)
        values, flags = dict(reading.values), list(reading.flags)
        while batches:
            batch = batches.pop()
            try:
                data = self.read_items(batch[0].group, [item.name for item in batch], expected=(NotFound,))
            except NotFound:  # which item is missing is not said: ask for each alone
                if len(batch) > 1:
                    batches += [[item] for item in batch]
                else:
                    self._forget_extra(batch[0].field, dialect)
                continue
            except InstrumentError:  # logged by the request; a broken port shows at the next read
                self.health.count("extra_errors")
                break
            mapped = map_items({batch[0].group: data} if dialect.nested else data, dialect)
            for name, value in mapped.values.items():
                values.setdefault(name, value)
            flags += [flag for flag in mapped.flags if flag not in flags]
            self.health.count("extra_reads")
        return replace(reading, values=values, flags=tuple(flags))

    def _forget_extra(self, name: str, dialect: Dialect) -> None:
        self._extras_missing.add(name)
        firmware = self._identity.get("firmware_version")
        self._log_once(
            f"extra:{name}:{firmware}",
            "event=extra_unavailable field=%s dialect=%s firmware=%s: the controller has no such item",
            name,
            dialect.name,
            firmware,
        )

    # --- identity and dialect ---------------------------------------------------------------------
    def _learn_dialect(self, dialect: Dialect, source: str) -> None:
        with self._lock:
            if self._dialect is not dialect:
                log.info("instrument=mppt event=dialect dialect=%s source=%s", dialect.name, source)
                self._dialect = dialect

    def _require_dialect(self, timeout: float | None) -> Dialect:
        """The dialect, waiting (reading the line) up to the time-out for a publication to tell it."""
        self._link.pump_until(lambda: self._dialect is not None, time.monotonic() + self._timeout(timeout))
        with self._lock:
            dialect = self._dialect
        if dialect is None:
            raise DialectUnknown("no publication or identity has told the firmware generation yet")
        return dialect

    def _learn_identity(self) -> None:
        """Ask the controller who it is. Never fatal (identity may stay partial) unless the port is lost."""
        with self._lock:
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
                self.health.count("identity_failures")
                log.warning("instrument=mppt event=identity_failed error=%r", str(exc))
                break
        else:
            self.health.count("identity_failures")
            log.warning("instrument=mppt event=identity_failed error='no identity group found'")
        with self._lock:
            self._identity = identity
        log.info("instrument=mppt event=identity %s", " ".join(f"{k}={v!r}" for k, v in identity.items()))

    def _read_identity(self, dialect: Dialect) -> Identity:
        groups: dict[str, dict[str, str]] = {}
        for role, (group, name) in dialect.identity.items():
            groups.setdefault(group, {})[name] = role
        identity: Identity = {}
        probes = (ThingSetError,)  # an error answer is an outcome here, not a fault
        for group, roles in sorted(groups.items(), key=lambda kv: kv[0] == ""):  # root (optional) last
            if group:
                response = self._link.request(
                    codec.format_get(group), self.identity_timeout_s, expected=probes
                )
                assert response is not None
                data = response.payload if isinstance(response.payload, dict) else {}
                guess = self._guess_dialect(dialect, response, data)
                if guess is not None and self.dialect is None:
                    self._learn_dialect(guess, "identity")
            else:
                names = list(roles)
                try:
                    fetched = self._link.request(
                        codec.format_fetch("", names), self.identity_timeout_s, expected=probes
                    )
                except (ThingSetError, NoResponse):
                    continue  # the node id is a nice-to-have
                if fetched is None or not isinstance(fetched.payload, list):
                    continue
                data = dict(zip(names, fetched.payload, strict=False))
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
    def _timeout(self, timeout: float | None) -> float:
        return self.request_timeout_s if timeout is None else timeout

    def _log_once(self, key: str, message: str, *args: object) -> bool:
        """Log once per key; at most ``_LOGGED_MAX`` keys are remembered (a line full of made-up
        item names must not grow memory or flood the log), later ones are not logged."""
        with self._lock:
            if key in self._logged or len(self._logged) >= _LOGGED_MAX:
                return False
            self._logged.add(key)
        log.warning("instrument=mppt " + message, *args)
        return True

    def _unexpected(self, group: str, response: Response, wanted: str) -> UnexpectedResponse:
        self.health.count("request_errors")
        return UnexpectedResponse(f"{group!r}: expected {wanted}, got {response.payload!r}")


def _boolean(what: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be switched with a bool, got {value!r}")
    return value
