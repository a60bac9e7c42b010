"""Driver for the EA EL 3160-60A electronic load (EL 3000 A series) over RS232, 57600 8O1.

Queries are sent exactly as the lab's scripts sent them, which the device answered for years:
node 0 with the cast bit set, i.e. ``75 00 47 00 BC`` for the actual values (object 71),
``73 00 45 00 B8`` for the Ah counter (69) and ``70 00 00 00 70`` for the device type (strings
are queried with length bits 0, as in the captures). ``node=1, cast=False`` gives the other
captured form, ``55 01 47 00 9D``.

Each poll (``poll_hz``, default 2 Hz) asks for objects 71 and 69 and yields one Reading:
``bat_v`` (input voltage = battery voltage), ``bat_a`` (the current the load draws, from the
battery's side: negative = discharge, 0 with the input off), ``power_w`` (power the load
absorbs, >= 0) and ``ah`` (the load's Ah counter). A value whose answer failed after the retries
is absent and named in the flags (``missing:<name>``); a poll where both failed yields no
Reading. No value is ever repeated from an earlier answer.

Control (``remote``, ``input``, ``set_current``/``set_voltage``/``set_power``) sends object 54
or 50-52 and waits for the acknowledgement; the device's refusals come back as typed errors
(``AccessDenied`` without remote control, ``UpperLimitExceeded`` ...), a value outside 0..nominal
is refused before anything is sent. What the device is doing can be read back: its set values
(``read_setpoints``) and remote/input (``read_control``: object 54 queried, which EA's object
list answers with the mask and the control byte). Status (object 70) is not used: its bit layout
for the EL 3000 is not in the documentation found so far.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from soclab.edge.instruments.base import ConnectionLost, Identity, Instrument, InstrumentError, Reading, Value
from soclab.edge.instruments.clock import Stamp
from soclab.edge.instruments.ea_el3000 import telegram as tg
from soclab.edge.instruments.ea_el3000.options import EaLoadOptions
from soclab.edge.instruments.serial_port import (
    EIGHTBITS,
    PARITY_ODD,
    SERIAL_ERRORS,
    STOPBITS_ONE,
    SerialFactory,
    SerialPort,
    open_serial,
)

log = logging.getLogger(__name__)

BAUD = 57600
READ_SLICE_S = 0.02  # one blocking serial read; the answer deadline is checked between reads


class NoAnswer(InstrumentError):
    """No valid answer after the retries (timeouts, half or garbled answers); the link is still up."""


class _Failed(Exception):
    """One attempt without a usable answer; the text says why."""


@dataclass(frozen=True, slots=True)
class Setpoints:
    """The set values the load holds (objects 50, 51, 52), in V, A and W."""

    voltage_v: float
    current_a: float
    power_w: float


@dataclass(frozen=True, slots=True)
class Control:
    """Remote control and the DC input as the load reports them (object 54)."""

    remote: bool
    input_on: bool


class EaLoadDriver(Instrument):
    """EA EL 3000 A electronic load; see the module doc for what it sends and reports."""

    kind = "eload"

    def __init__(self, options: EaLoadOptions, *, serial_factory: SerialFactory = open_serial) -> None:
        super().__init__()
        self.options = options
        self.port = options.port
        self.node = options.node
        self.cast = options.cast
        self.poll_period_s = 1.0 / options.poll_hz
        self.answer_timeout_s = options.answer_timeout_s
        self.retries = options.retries
        self._serial_factory = serial_factory
        self._ser: SerialPort | None = None
        self._lock = threading.RLock()  # one transaction on the wire at a time
        self._identity: Identity = {}
        self._nominal = (0.0, 0.0, 0.0)
        self._next_poll = 0.0
        self._failing: set[int] = set()  # objects whose last poll failed (log on change only)

    # --- Instrument -----------------------------------------------------------------------------
    def _open(self) -> None:
        with self._lock:
            try:
                self._ser = self._serial_factory(
                    self.port,
                    BAUD,
                    bytesize=EIGHTBITS,
                    parity=PARITY_ODD,
                    stopbits=STOPBITS_ONE,
                    timeout=READ_SLICE_S,
                    write_timeout=1.0,
                )
            except SERIAL_ERRORS as exc:
                raise ConnectionLost(f"cannot open {self.port}: {exc}") from exc
            try:
                self._read_identity()
            except ConnectionLost:
                self._close()
                raise
            except (InstrumentError, ValueError) as exc:
                self._close()
                raise ConnectionLost(f"no identity from the load at {self.port}: {exc}") from exc
            self._next_poll = time.monotonic()
            self._failing.clear()
            log.info(
                "instrument=eload event=opened port=%s model=%r serial=%r firmware=%r",
                self.port,
                self._identity["model"],
                self._identity["serial_number"],
                self._identity["firmware"],
            )

    def _close(self) -> None:
        with self._lock:
            ser, self._ser = self._ser, None
            if ser is not None:
                try:
                    ser.close()
                except SERIAL_ERRORS as exc:
                    log.debug("instrument=eload event=close_failed error=%r", str(exc))

    def _read(self, timeout: float) -> list[Reading]:
        wait = self._next_poll - time.monotonic()
        if wait > timeout:
            time.sleep(max(0.0, timeout))
            return []
        if wait > 0:
            time.sleep(wait)
        reading = self._poll()
        self._next_poll += self.poll_period_s
        now = time.monotonic()
        if self._next_poll < now:  # a slow cycle (retries): skip the missed slots, do not burst
            self.health.count("poll_overruns")
            self._next_poll = now + self.poll_period_s
        return [reading] if reading is not None else []

    def identity(self) -> Identity:
        with self._lock:
            return dict(self._identity)

    # --- control --------------------------------------------------------------------------------
    def remote(self, on: bool) -> None:
        """Take (or give back) remote control; set values and the input need it."""
        value = tg.CONTROL_REMOTE if on else 0
        self._command(tg.send(tg.OBJ_CONTROL, bytes((tg.CONTROL_REMOTE, value)), **self._addr()))

    def input(self, on: bool) -> None:
        """Switch the load's DC input on or off (AccessDenied without remote control)."""
        value = tg.CONTROL_INPUT if on else 0
        self._command(tg.send(tg.OBJ_CONTROL, bytes((tg.CONTROL_INPUT, value)), **self._addr()))

    def set_current(self, amps: float) -> None:
        """Set the current the load sinks, 0..nominal A (object 51); ValueError before anything is sent."""
        self._set_value(tg.OBJ_SET_I, amps, 1, "current", "A")

    def set_voltage(self, volts: float) -> None:
        """Set the voltage the load regulates its input to, 0..nominal V (object 50)."""
        self._set_value(tg.OBJ_SET_U, volts, 0, "voltage", "V")

    def set_power(self, watts: float) -> None:
        """Set the power the load absorbs at most, 0..nominal W (object 52)."""
        self._set_value(tg.OBJ_SET_P, watts, 2, "power", "W")

    def read_setpoints(self) -> Setpoints:
        """The set values U, I, P the load holds now."""
        nominal = self._require_nominal()
        u, i, p = (
            tg.from_word(tg.decode_word(self._query(obj).data), nominal[k])
            for k, obj in enumerate((tg.OBJ_SET_U, tg.OBJ_SET_I, tg.OBJ_SET_P))
        )
        return Setpoints(u, i, p)

    def read_control(self) -> Control:
        """Remote control and input as the load says: object 54 answers its mask and control byte."""
        data = self._query(tg.OBJ_CONTROL).data
        if len(data) != 2:
            raise tg.TelegramError(f"object 54 needs 2 bytes (mask, state), got {data.hex(' ')}")
        state = data[1]
        return Control(remote=bool(state & tg.CONTROL_REMOTE), input_on=bool(state & tg.CONTROL_INPUT))

    def _set_value(self, obj: int, value: float, which: int, name: str, unit: str) -> None:
        nominal = self._require_nominal()[which]
        if not (math.isfinite(value) and 0.0 <= value <= nominal):
            raise ValueError(f"{name} must be within 0..{nominal:g} {unit}, got {value}")
        word = tg.to_word(value, nominal)
        self._command(tg.send(obj, word.to_bytes(2, "big"), **self._addr()))

    def _require_nominal(self) -> tuple[float, float, float]:
        with self._lock:
            nominal = self._nominal
        if nominal[0] <= 0:
            raise ConnectionLost("the load is not open: its nominal values are unknown")
        return nominal

    # --- polling --------------------------------------------------------------------------------
    def _poll(self) -> Reading | None:
        values: dict[str, Value] = {}
        missing: list[str] = []
        stamp: Stamp | None = None
        try:
            answer = self._query(tg.OBJ_ACTUAL)
            stamp = self.stamp()
            actual = tg.decode_actual(answer.data, *self._nominal)
        except (NoAnswer, tg.EaDeviceError, tg.TelegramError) as exc:
            self._poll_failed(tg.OBJ_ACTUAL, exc)
            missing += ["bat_v", "bat_a", "power_w"]
        else:
            self._poll_ok(tg.OBJ_ACTUAL)
            values["bat_v"] = actual.voltage_v
            values["bat_a"] = -actual.current_a if actual.current_a else 0.0
            values["power_w"] = actual.power_w
        try:
            answer = self._query(tg.OBJ_AH)
            if stamp is None:
                stamp = self.stamp()
            ah = tg.decode_float(answer.data)
            if not math.isfinite(ah):
                raise tg.TelegramError(f"Ah counter is not a number: {answer.data.hex(' ')}")
        except (NoAnswer, tg.EaDeviceError, tg.TelegramError) as exc:
            self._poll_failed(tg.OBJ_AH, exc)
            missing.append("ah")
        else:
            self._poll_ok(tg.OBJ_AH)
            values["ah"] = ah
        failed_polls = 0.0 if values else (self.health.gauge("consecutive_failed_polls") or 0.0) + 1
        self.health.set_gauge("consecutive_failed_polls", failed_polls)
        if stamp is None or not values:
            self.health.count("polls_without_sample")
            return None
        if missing:
            self.health.count("partial_samples")
        return Reading(stamp.t_ns, values, tuple(f"missing:{name}" for name in missing) + stamp.flags)

    def _poll_failed(self, obj: int, exc: Exception) -> None:
        self.health.count("failed_polls")
        self.health.last_error = f"object {obj}: {exc}"
        if obj not in self._failing:
            self._failing.add(obj)
            log.warning("instrument=eload event=poll_failed object=%d error=%r", obj, str(exc))
        else:
            log.debug("instrument=eload event=poll_failed object=%d error=%r", obj, str(exc))

    def _poll_ok(self, obj: int) -> None:
        if obj in self._failing:
            self._failing.discard(obj)
            log.info("instrument=eload event=answers_resumed object=%d", obj)

    # --- transactions ---------------------------------------------------------------------------
    def _addr(self) -> dict[str, Any]:
        return {"node": self.node, "cast": self.cast}

    def _read_identity(self) -> None:
        model = tg.decode_string(self._query(tg.OBJ_DEVICE_TYPE).data)
        serial_number = tg.decode_string(self._query(tg.OBJ_SERIAL).data)
        firmware = tg.decode_string(self._query(tg.OBJ_SOFTWARE).data)
        nominal = tuple(
            tg.decode_float(self._query(obj).data)
            for obj in (tg.OBJ_NOMINAL_U, tg.OBJ_NOMINAL_I, tg.OBJ_NOMINAL_P)
        )
        if not all(math.isfinite(x) and x > 0 for x in nominal):
            raise tg.TelegramError(f"implausible nominal values {nominal}")
        self._nominal = (nominal[0], nominal[1], nominal[2])
        self._identity = {
            "vendor": "Elektro-Automatik",
            "model": model,
            "serial_number": serial_number,
            "firmware": firmware,
            "nominal_v": nominal[0],
            "nominal_a": nominal[1],
            "nominal_w": nominal[2],
            "port": self.port,
            "node": self.node,
        }

    def _query(self, obj: int) -> tg.Telegram:
        return self._transact(tg.query(obj, **self._addr()), obj)

    def _command(self, request: tg.Telegram) -> None:
        self._transact(request, tg.ERROR_OBJECT)
        self.health.count("commands")
        log.info("instrument=eload event=command object=%d data=%s", request.obj, request.data.hex())

    def _transact(self, request: tg.Telegram, expect_obj: int) -> tg.Telegram:
        """Send, wait for the answer; retry wire faults; raise typed device errors at once."""
        frame = request.encode()
        reason = ""
        with self._lock:
            for attempt in range(1 + self.retries):
                if attempt:
                    self.health.count("retries")
                try:
                    return self._exchange(frame, request.obj, expect_obj)
                except _Failed as exc:
                    reason = str(exc)
                except tg.EaDeviceError as exc:
                    if exc.code not in tg.TRANSMISSION_ERRORS:
                        self.health.count("device_errors")
                        self.health.last_error = f"object {request.obj}: {exc}"
                        raise
                    self.health.count("device_rejected_frames")
                    reason = str(exc)
                log.debug(
                    "instrument=eload event=attempt_failed object=%d attempt=%d why=%r",
                    request.obj,
                    attempt,
                    reason,
                )
        raise NoAnswer(f"no valid answer to object {request.obj} after {1 + self.retries} attempts: {reason}")

    def _exchange(self, frame: bytes, obj: int, expect_obj: int) -> tg.Telegram:
        ser = self._ser
        if ser is None:
            raise ConnectionLost(f"{self.port} is not open")
        count = self.health.count
        try:
            stray = ser.in_waiting
            if stray:  # e.g. a late answer to an earlier attempt: never take it for this one
                count("stray_bytes", len(ser.read(stray)))
            ser.write(frame)
            scanner = tg.FrameScanner(to_device=False)
            deadline = time.monotonic() + self.answer_timeout_s
            while True:
                chunk = ser.read(max(1, ser.in_waiting))
                if chunk:
                    scanner.feed(chunk)
                while (answer := scanner.next()) is not None:
                    if scanner.skipped:
                        count("resyncs")
                        count("skipped_bytes", scanner.skipped)
                        scanner.skipped = 0
                    if answer.obj == tg.ERROR_OBJECT and answer.error_code is not None:
                        if answer.error_code == 0 and expect_obj == tg.ERROR_OBJECT:
                            return answer
                        if answer.error_code != 0:
                            raise tg.device_error(answer.error_code, f"object {obj}")
                    if answer.obj == expect_obj and expect_obj != tg.ERROR_OBJECT:
                        return answer
                    count("unexpected_answers")
                    log.debug("instrument=eload event=unexpected_answer object=%d got=%s", obj, answer)
                if time.monotonic() >= deadline:
                    break
        except SERIAL_ERRORS as exc:
            raise ConnectionLost(f"{self.port}: {exc}") from exc
        residue = scanner.residue_kind()
        if residue == "checksum":
            count("checksum_errors")
            raise _Failed(f"garbled answer {scanner.pending.hex(' ')}")
        if residue == "short":
            count("short_answers")
            raise _Failed(f"short answer {scanner.pending.hex(' ')}")
        count("timeouts")
        raise _Failed(f"timeout after {self.answer_timeout_s:g} s")
