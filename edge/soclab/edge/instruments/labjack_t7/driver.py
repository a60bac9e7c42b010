"""Driver for the LabJack T7 through LJM: calibrated AIN channels, command-response or stream.

Each channel is a field (``bat_a``, ``bat_v``) read from one AIN and turned into its unit by its
calibration; the field's suffix must be the calibration's unit (``_a`` for a LEM, ``_v`` for a
divider or raw volts), so raw volts can never pass for amps again.

* ``mode="command"``: ``eReadNames`` of all channels every 1/``rate_hz`` s, one Reading each, stamped
  with ``stamp()`` just before the request (the T7 samples when the request arrives).
* ``mode="stream"``: ``eStreamStart`` at ``scan_rate_hz``; each ``eStreamRead`` gives
  ``scans_per_read`` scans, one Reading per scan, stamped from the scan counter and the actual
  scan rate (``stream_clock`` has the drift policy) and compared with the acquisition clock. A
  step of the wall clock moves the stream's stamps by the step, at once, both ways (the first
  scan after it is flagged ``clock_step``); while the clock is not synchronised every scan is
  flagged ``clock_unsynced``. A read blocks for up to scans_per_read /
  scan_rate seconds whatever ``timeout`` says (that is how eStreamRead works).

A skipped sample (-9999.0, LJM's stream auto-recovery) is left out of ``values`` and named in the
flags (``skipped:<field>``); a scan where every channel was skipped still yields a Reading, with
no values and only flags, so its sequence number and time stay in the record (``skipped_scans``).

Errors: a vanished device -> ConnectionLost (the base reopens: opens, configures, restarts the
stream); a stopped stream -> StreamLost (the same); anything else LJM says -> LabJackError with
its code; an unusable backend -> LJMUnavailable. Health: counters ``scans_read``,
``skipped_samples``, ``skipped_scans``, ``stream_starts``, ``clock_reanchors``,
``command_overruns``, ``ljm_errors``; gauges ``scan_rate_hz``, ``device_backlog``,
``ljm_backlog``, ``ljm_backlog_max``, ``clock_offset_ms``, ``clock_drift_ppm``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from soclab.edge.instruments.base import Identity, Instrument, InstrumentError, Reading
from soclab.edge.instruments.clock import STEP, UNSYNCED
from soclab.edge.instruments.labjack_t7.backend import (
    LabJackError,
    LJMBackend,
    LJMUnavailable,
    code_names,
    load_backend,
    native_missing,
    translate,
)
from soclab.edge.instruments.labjack_t7.options import LabJackOptions
from soclab.edge.instruments.labjack_t7.stream_clock import StreamClock

log = logging.getLogger(__name__)

SKIPPED = -9999.0  # LJM_DUMMY_VALUE
PRODUCTS = {4: "T4", 7: "T7", 8: "T8"}
_IDENTITY_NAMES = ["PRODUCT_ID", "SERIAL_NUMBER", "FIRMWARE_VERSION", "HARDWARE_VERSION"]


class LabJackDriver(Instrument):
    """LabJack T7 with calibrated channels; see the module doc.

    ``backend`` overrides ``options.backend`` with a module of one's own (``labjack.ljm``'s calls).
    """

    kind = "labjack"

    def __init__(self, options: LabJackOptions, *, backend: LJMBackend | None = None) -> None:
        super().__init__()
        self.options = options
        self.channels = options.specs()
        self.mode = options.mode
        self.rate_hz = options.rate_hz
        self.scan_rate_hz = options.scan_rate_hz
        self.scans_per_read = options.scans_per_read
        self.stream_settling_us = options.stream_settling_us
        self.stream_resolution_index = options.stream_resolution_index
        self.max_clock_offset_ns = int(options.max_clock_offset_ms * 1e6)
        self.device_type = options.device_type
        self.connection_type = options.connection_type
        self.identifier = options.identifier
        self.backend_name: str
        if backend is None:
            self.backend_name = options.backend
            backend = load_backend(options.backend)
            if options.standin is not None:
                backend.configure_from_config(options.standin)  # type: ignore[attr-defined]
        else:
            self.backend_name = str(getattr(backend, "__name__", "custom"))
        self._ljm: LJMBackend = backend
        self._code_names = code_names(self._ljm)
        self._fields = [(name, spec.calibration) for name, spec in self.channels.items()]
        self._ains = [spec.ain for spec in self.channels.values()]
        self._handle: int | None = None
        self._streaming = False
        self._stream_clock: StreamClock | None = None
        self._step_unflagged = False  # a clock step the next scan must be flagged with
        self._scan = 0
        self._next_due = 0.0
        self._identity: Identity = {}

    def identity(self) -> Identity:
        ident: Identity = dict(self._identity)
        ident.update(backend=self.backend_name, mode=self.mode, connection=self.connection_type)
        if self.mode == "command":
            ident["rate_hz"] = self.rate_hz
        else:
            ident["scan_rate_hz"] = self._stream_clock.scan_rate_hz if self._stream_clock else None
            ident["scans_per_read"] = self.scans_per_read
        for name, spec in self.channels.items():
            ident[f"channel_{name}"] = spec.describe()
        return ident

    # --- Instrument -----------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            handle = self._ljm.openS(self.device_type, self.connection_type, self.identifier)
        except AttributeError as exc:  # labjack.ljm with a null native library
            raise LJMUnavailable(native_missing(str(exc))) from exc
        except self._ljm.LJMError as exc:
            raise self._error(
                exc, f"open {self.device_type} {self.connection_type} {self.identifier}"
            ) from exc
        self._handle = handle
        try:
            self._read_identity()
            self._configure()
            if self.mode == "stream":
                self._start_stream()
            else:
                self._next_due = time.monotonic()
        except BaseException:
            self._close()
            raise
        log.info(
            "instrument=labjack event=opened model=%s serial=%s firmware=%s mode=%s backend=%s",
            self._identity.get("model"),
            self._identity.get("serial_number"),
            self._identity.get("firmware"),
            self.mode,
            self.backend_name,
        )

    def _close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        if self._streaming:
            self._streaming = False
            try:
                self._ljm.eStreamStop(handle)
            except self._ljm.LJMError as exc:  # often: the device is gone, with its stream
                log.info("instrument=labjack event=stream_stop_failed error=%r", str(exc))
        try:
            self._ljm.close(handle)
        except self._ljm.LJMError as exc:
            log.info("instrument=labjack event=close_failed error=%r", str(exc))

    def _read(self, timeout: float) -> list[Reading]:
        return self._read_stream() if self.mode == "stream" else self._read_command(timeout)

    # --- opening --------------------------------------------------------------------------------
    def _call(self, doing: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(self._handle, *args)
        except self._ljm.LJMError as exc:
            raise self._error(exc, doing) from exc

    def _read_identity(self) -> None:
        product, serial, firmware, hardware = self._call(
            "read identity", self._ljm.eReadNames, len(_IDENTITY_NAMES), _IDENTITY_NAMES
        )
        self._identity = {
            "model": PRODUCTS.get(int(product), f"product {int(product)}"),
            "serial_number": int(serial),
            "firmware": round(firmware, 4),
            "hardware": round(hardware, 4),
        }

    def _configure(self) -> None:
        settings = [s for spec in self.channels.values() for s in spec.settings()]
        if self.mode == "stream":
            assert self._handle is not None  # _open set it
            try:  # a stream left running (a crashed process) would refuse eStreamStart
                self._ljm.eWriteName(self._handle, "STREAM_ENABLE", 0)
            except self._ljm.LJMError as exc:
                log.debug("instrument=labjack event=stream_enable_0 error=%r (none was running)", str(exc))
            settings += [
                ("STREAM_TRIGGER_INDEX", 0),  # start at once, no trigger
                ("STREAM_CLOCK_SOURCE", 0),  # the T7's own crystal
                ("STREAM_SETTLING_US", self.stream_settling_us),
                ("STREAM_RESOLUTION_INDEX", self.stream_resolution_index),
            ]
        names = [name for name, _ in settings]
        values = [float(value) for _, value in settings]
        self._call("configure analog inputs", self._ljm.eWriteNames, len(names), names, values)

    def _start_stream(self) -> None:
        try:
            addresses, _ = self._ljm.namesToAddresses(len(self._ains), self._ains)
        except self._ljm.LJMError as exc:
            raise self._error(exc, "namesToAddresses") from exc
        bad = [ain for ain, a in zip(self._ains, addresses, strict=True) if a < 0]
        if bad:
            raise LabJackError(f"LJM does not know {bad}")
        rate = self._call(
            "eStreamStart",
            self._ljm.eStreamStart,
            self.scans_per_read,
            len(addresses),
            list(addresses),
            self.scan_rate_hz,
        )
        self._streaming = True
        self._scan = 0
        t0 = self.stamp()
        self._stream_clock = StreamClock(t0.t_ns, rate, max_offset_ns=self.max_clock_offset_ns)
        self._step_unflagged = STEP in t0.flags
        self.health.count("stream_starts")
        self.health.set_gauge("scan_rate_hz", rate)
        for gauge in ("device_backlog", "ljm_backlog", "clock_offset_ms", "clock_drift_ppm"):
            self.health.set_gauge(gauge, None)
        log.info(
            "instrument=labjack event=stream_started requested_hz=%s actual_hz=%s", self.scan_rate_hz, rate
        )

    # --- reading --------------------------------------------------------------------------------
    def _read_command(self, timeout: float) -> list[Reading]:
        wait = self._next_due - time.monotonic()
        if wait > timeout:
            time.sleep(max(0.0, timeout))
            return []
        if wait > 0:
            time.sleep(wait)
        stamp = self.stamp()
        volts = self._call("eReadNames", self._ljm.eReadNames, len(self._ains), self._ains)
        period = 1.0 / self.rate_hz
        self._next_due += period
        now = time.monotonic()
        if self._next_due < now:  # fell behind by more than a period: skip, don't catch up in a burst
            self.health.count("command_overruns")
            self._next_due = now + period
        return [self._reading(stamp.t_ns, volts, stamp.flags)]

    def _read_stream(self) -> list[Reading]:
        assert self._stream_clock is not None
        data, device_backlog, ljm_backlog = self._call("eStreamRead", self._ljm.eStreamRead)
        now = self._clock_health(self.clock.read())  # not a sample's stamp: the scans are older
        if now.step_ns:
            self._stream_clock.shift(now.step_ns)
            self._step_unflagged = True
        n = len(self._fields)
        scans, rest = divmod(len(data), n)
        if rest:
            raise LabJackError(f"eStreamRead gave {len(data)} values for {n} channels")
        stamps = self._stream_clock.stamps(self._scan, scans, self.clock.last_ns)
        unsynced = (UNSYNCED,) if UNSYNCED in now.flags else ()
        first = (STEP, *unsynced) if self._step_unflagged and stamps else unsynced  # the first scan's
        if SKIPPED in data:  # LJM's auto-recovery: scan by scan, each skipped value flagged
            readings = [
                self._reading(t_ns, data[j * n : (j + 1) * n], unsynced if j else first)
                for j, t_ns in enumerate(stamps)
            ]
        else:  # the usual read: calibrated a channel at a time (at 100 kS/s every µs per scan counts)
            names = [name for name, _ in self._fields]
            columns = [map(calibration.apply, data[i::n]) for i, (_, calibration) in enumerate(self._fields)]
            readings = [
                Reading(t_ns, dict(zip(names, scan, strict=True)), unsynced)
                for t_ns, scan in zip(stamps, zip(*columns, strict=True), strict=True)
            ]
            if first is not unsynced:
                readings[0] = Reading(readings[0].t_ns, readings[0].values, first)
        self._scan += scans
        if stamps:
            self._step_unflagged = False
            self.clock.issued(stamps[-1])  # keeps stamp() after the stream
        self._stream_health(scans, device_backlog, ljm_backlog, now.t_ns)
        return readings

    def _stream_health(self, scans: int, device_backlog: int, ljm_backlog: int, now_ns: int) -> None:
        assert self._stream_clock is not None
        h = self.health
        h.count("scans_read", scans)
        h.set_gauge("device_backlog", device_backlog)
        h.set_gauge("ljm_backlog", ljm_backlog)
        h.set_gauge("ljm_backlog_max", max(ljm_backlog, h.gauge("ljm_backlog_max") or 0))
        reanchored = self._stream_clock.observe(now_ns, self._scan + ljm_backlog + device_backlog)
        offset, drift = self._stream_clock.offset_ns, self._stream_clock.drift_ppm
        if reanchored:
            h.count("clock_reanchors")
            log.info("instrument=labjack event=clock_reanchor offset_ns=%s drift_ppm=%s", offset, drift)
        h.set_gauge("clock_offset_ms", None if offset is None else round(offset / 1e6, 3))
        h.set_gauge("clock_drift_ppm", None if drift is None else round(drift, 2))

    def _reading(self, t_ns: int, volts: list[float], clock_flags: tuple[str, ...]) -> Reading:
        values: dict[str, float] = {}
        flags: list[str] = []
        for (name, calibration), v in zip(self._fields, volts, strict=True):
            if v == SKIPPED:
                flags.append(f"skipped:{name}")
            else:
                values[name] = calibration.apply(v)
        if flags:
            self.health.count("skipped_samples", len(flags))
        if not values:
            self.health.count("skipped_scans")
        return Reading(t_ns, values, (*flags, *clock_flags))

    def _error(self, exc: Exception, doing: str) -> InstrumentError:
        error = translate(exc, self._code_names, doing)
        if isinstance(error, LabJackError):
            self.health.count("ljm_errors")
        self.health.last_error = str(error)[:500]
        return error
