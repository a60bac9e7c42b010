"""A simulated EA EL 3160-60A on a pseudo-terminal, answering byte for byte like the device.

It parses what arrives as the device does (start delimiter, length, checksum: no scanning for
frames), answers the objects in ``telegram.OBJECTS`` and the error telegrams of the captures.
While its input is on it sinks current from the battery (``battery.set_current("eload", -amps)``)
as the load's three set values allow together: at most the set current, at most the set power,
and no more than keeps its input at the set voltage (CV: a battery below it gets nothing, one
near it a tapering current). It counts Ah in the battery's model time, and latches off when the
battery voltage falls below ``cutoff_v`` (until the input is switched on again), like a
discharge test ending.

What the captures do not show, chosen here and marked as such:
- a successful send is acknowledged with error code 0 (``C0 01 FF 00 01 C0``);
- object 70 (status) carries, as on the PS 2000 B: byte 0 bits 1-0 = 01 in remote control,
  byte 1 bit 0 = input on. Nothing in the driver relies on this layout;
- object 54 answers a query with its mask and the control byte (EA's object list says so), 50-53
  are readable;
- the resistance set value (53) is stored, not applied; the set values are those at power-up:
  U 0 V, I 0 A, P nominal.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from pathlib import Path

from soclab.dev.sim.battery import Battery
from soclab.dev.sim.simulator import WireSimulator
from soclab.edge.instruments.ea_el3000 import telegram as tg

log = logging.getLogger(__name__)

INTERBYTE_TIMEOUT_S = 0.05  # a half telegram older than this is dropped, as the device would


class EaLoadSimulator(WireSimulator):
    """The electronic load: remote control over the wire, or ``local_set`` at its front panel."""

    name = "eload"

    def __init__(
        self,
        battery: Battery,
        link: str | Path,
        *,
        device_type: str = "EL 3160-60A",
        serial_number: str = "2649810226",
        software_version: str = "V5.05 02.08.12",
        nominal_v: float = 160.0,
        nominal_a: float = 60.0,
        nominal_w: float = 400.0,
        accepted_nodes: tuple[int, ...] = (0, 1),
        cutoff_v: float = 10.5,
        answer_delay_s: float = 0.0,
    ) -> None:
        super().__init__(battery, link)
        self.device_type = device_type
        self.serial_number = serial_number
        self.software_version = software_version
        self.nominal = (nominal_v, nominal_a, nominal_w)
        self.accepted_nodes = accepted_nodes
        self.cutoff_v = cutoff_v
        self.answer_delay_s = answer_delay_s
        self._lock = threading.Lock()
        self._rx = bytearray()
        self._rx_at = 0.0
        # device state
        self._remote = False
        self._input_on = False
        self._cut_off = False
        self._set_words = {tg.OBJ_SET_U: 0, tg.OBJ_SET_I: 0, tg.OBJ_SET_P: tg.FULL_SCALE, 53: 0}
        self._sink_a = 0.0
        self._ah = 0.0
        self._last_t_s: float | None = None
        self._refusing_local = False
        # faults
        self._muted = False
        self._short = 0
        self._garble = 0
        self._prefix = b""
        # for tests and logs
        self.counters: Counter[str] = Counter()
        self.transcript: deque[tuple[bytes, bytes]] = deque(maxlen=200)

    # --- front panel and state --------------------------------------------------------------------
    def local_set(self, current_a: float, input_on: bool) -> bool:
        """A person at the front panel; refused (False, counted) while in remote control."""
        if not (math.isfinite(current_a) and 0 <= current_a <= self.nominal[1]):
            raise ValueError(f"current must be within 0..{self.nominal[1]:g} A, got {current_a}")
        with self._lock:
            if self._remote:
                if not self._refusing_local:  # the lab's profile calls this every tick: log once
                    log.info("simulator=eload event=front_panel_locked reason=remote_control")
                self._refusing_local = True
                self.counters["local_refused"] += 1
                return False
            self._refusing_local = False
            self._set_words[tg.OBJ_SET_I] = tg.to_word(current_a, self.nominal[1])
            self._switch_input(input_on)
        self._update_load()  # takes effect at once, as a knob does
        return True

    @property
    def remote_on(self) -> bool:
        return self._remote

    @property
    def input_on(self) -> bool:
        return self._input_on

    @property
    def set_current_a(self) -> float:
        return tg.from_word(self._set_words[tg.OBJ_SET_I], self.nominal[1])

    @property
    def sink_a(self) -> float:
        """The current the load draws now (0 with the input off or after the cut-off)."""
        return self._sink_a

    @property
    def ah(self) -> float:
        return self._ah

    # --- fault hooks ------------------------------------------------------------------------------
    def mute(self, on: bool = True) -> None:
        """Stop answering (requests are still read and acted on), or answer again."""
        with self._lock:
            self._muted = on

    def respond_short(self, count: int = 1) -> None:
        """Send only the first half of the next ``count`` answers."""
        with self._lock:
            self._short += count

    def garble(self, count: int = 1) -> None:
        """Flip a byte inside each of the next ``count`` answers (their checksum no longer fits)."""
        with self._lock:
            self._garble += count

    def prefix_garbage(self, data: bytes) -> None:
        """Put ``data`` on the wire just before the next answer."""
        with self._lock:
            self._prefix += data

    def unplug(self) -> None:
        self.port.vanish()

    def replug(self) -> None:
        self.port.reappear()

    # --- the device's loop ------------------------------------------------------------------------
    def _serve_once(self) -> None:
        data = self.port.read(4096, timeout=0.02)
        now = time.monotonic()
        if data:
            self._rx += data
            self._rx_at = now
        self._update_load()
        while (request := self._take_frame()) is not None:
            answer = self._handle(request)
            self._emit(request, answer)
        if self._rx and now - self._rx_at > INTERBYTE_TIMEOUT_S:
            self.counters["half_telegrams_dropped"] += 1
            log.debug("simulator=eload event=half_telegram bytes=%s", self._rx.hex(" "))
            self._rx.clear()

    def _take_frame(self) -> bytes | None:
        """The next whole telegram at the start of the buffer; a bad start delimiter is answered."""
        if not self._rx:
            return None
        sd = self._rx[0]
        n = tg.frame_length(sd)
        if n is None or not sd & tg.TO_DEVICE_BIT or sd >> 6 == tg.Kind.ANSWER:
            bad = bytes(self._rx)
            self._rx.clear()
            self._emit(bad, tg.error_answer(0x04).encode())
            return None
        if len(self._rx) < n:
            return None
        frame = bytes(self._rx[:n])
        del self._rx[:n]
        return frame

    def _handle(self, frame: bytes) -> bytes:
        try:
            request = tg.decode(frame)
        except tg.ChecksumMismatch:
            return self._error(0x03)
        if request.dn not in self.accepted_nodes:
            return self._error(0x05)
        spec = tg.OBJECTS.get(request.obj)
        if spec is None:
            return self._error(0x07)
        if request.kind == tg.Kind.QUERY:
            return self._answer_query(request, spec)
        return self._apply_send(request, spec)

    def _answer_query(self, request: tg.Telegram, spec: tg.EaObject) -> bytes:
        if not spec.readable:
            return self._error(0x09)
        if spec.fmt is not tg.Format.STRING and request.length != spec.length:
            return self._error(0x08)
        self.counters[f"query_{spec.number}"] += 1
        return tg.answer(spec.number, self._object_data(spec.number)).encode()

    def _object_data(self, obj: int) -> bytes:
        nominal_v, nominal_a, nominal_w = self.nominal
        if obj == tg.OBJ_DEVICE_TYPE:
            return tg.encode_string(self.device_type)
        if obj == tg.OBJ_SERIAL:
            return tg.encode_string(self.serial_number)
        if obj == tg.OBJ_SOFTWARE:
            return tg.encode_string(self.software_version)
        if obj in (tg.OBJ_NOMINAL_U, tg.OBJ_NOMINAL_I, tg.OBJ_NOMINAL_P):
            return tg.encode_float(self.nominal[obj - tg.OBJ_NOMINAL_U])
        if obj == tg.OBJ_AH:
            return tg.encode_float(self._ah)
        if obj == tg.OBJ_STATUS:
            return bytes((0x01 if self._remote else 0x00, 0x01 if self._input_on else 0x00))
        if obj == tg.OBJ_CONTROL:
            state = (tg.CONTROL_REMOTE if self._remote else 0) | (tg.CONTROL_INPUT if self._input_on else 0)
            return bytes((tg.CONTROL_REMOTE | tg.CONTROL_INPUT, state))
        if obj == tg.OBJ_ACTUAL:
            volts = self.battery.state().voltage_v
            amps = self._sink_a
            return tg.encode_actual_words(
                tg.quantise(volts, nominal_v),
                tg.quantise(amps, nominal_a),
                tg.quantise(volts * amps, nominal_w),
            )
        return self._set_words[obj].to_bytes(2, "big")

    def _apply_send(self, request: tg.Telegram, spec: tg.EaObject) -> bytes:
        if not spec.writable:
            return self._error(0x09)
        if len(request.data) != spec.length:
            return self._error(0x08)
        with self._lock:
            if spec.number == tg.OBJ_CONTROL:
                mask, value = request.data
                if mask & tg.CONTROL_REMOTE:
                    self._remote = bool(value & tg.CONTROL_REMOTE)
                if mask & tg.CONTROL_INPUT:
                    if not self._remote:
                        return self._error(0x09)
                    self._switch_input(bool(value & tg.CONTROL_INPUT))
            else:
                if not self._remote:
                    return self._error(0x09)
                word = tg.decode_word(request.data)
                if word > tg.FULL_SCALE:
                    return self._error(0x30)
                self._set_words[spec.number] = word
        self.counters[f"send_{spec.number}"] += 1
        self._update_load()
        return tg.error_answer(0).encode()

    def _error(self, code: int) -> bytes:
        self.counters[f"error_{code}"] += 1
        return tg.error_answer(code).encode()

    def _emit(self, request: bytes, answer: bytes) -> None:
        with self._lock:
            if self._muted:
                self.counters["muted_answers"] += 1
                self.transcript.append((request, b""))
                return
            if self._short:
                self._short -= 1
                answer = answer[: len(answer) // 2]
            if self._garble:
                self._garble -= 1
                i = min(3, len(answer) - 3)
                answer = answer[:i] + bytes((answer[i] ^ 0x5A,)) + answer[i + 1 :]
            answer, self._prefix = self._prefix + answer, b""
        if self.answer_delay_s:
            time.sleep(self.answer_delay_s)
        self.transcript.append((request, answer))
        self.port.write(answer)

    # --- physics ----------------------------------------------------------------------------------
    def _switch_input(self, on: bool) -> None:
        if on and not self._input_on:
            self._cut_off = False  # switching on again re-arms the discharge after a cut-off
        self._input_on = on

    def _regulated(self, volts: float) -> float:
        """What the load sinks now: the least of its set current, its set power at this voltage,
        and (a set voltage given) the current that holds its input at that voltage, approached in
        damped steps through the battery's series resistance (as the MPPT simulator's CV does)."""
        nominal_v, nominal_a, nominal_w = self.nominal
        sink = tg.from_word(self._set_words[tg.OBJ_SET_I], nominal_a)
        if volts > 0:
            sink = min(sink, tg.from_word(self._set_words[tg.OBJ_SET_P], nominal_w) / volts)
        set_v = tg.from_word(self._set_words[tg.OBJ_SET_U], nominal_v)
        if set_v > 0:
            series_ohm = max(self.battery.params.r0_ohm, 1e-3)
            sink = min(sink, max(0.0, self._sink_a + 0.7 * (volts - set_v) / series_ohm))
        return max(0.0, sink)

    def _update_load(self) -> None:
        state = self.battery.state()
        with self._lock:
            if self._last_t_s is not None and state.t_s > self._last_t_s:
                self._ah += self._sink_a * (state.t_s - self._last_t_s) / 3600.0
            self._last_t_s = state.t_s
            if self._input_on and self._sink_a > 0 and state.voltage_v < self.cutoff_v:
                self._cut_off = True
                log.info("simulator=eload event=cut_off voltage_v=%.3f", state.voltage_v)
            sink = 0.0
            if self._input_on and not self._cut_off:
                sink = self._regulated(state.voltage_v)
            if sink != self._sink_a:
                self._sink_a = sink
                self.battery.set_current(self.name, -sink)  # under our lock: never an older value
