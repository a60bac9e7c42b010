"""Driver for the LabJack T7 through LJM: calibrated AIN channels, command-response or stream.

Each channel is a field (``bat_a``, ``bat_v``) read from one AIN and turned into its unit by its
calibration; the field's suffix must be the calibration's unit (``_a`` for a LEM, ``_v`` for a
divider or raw volts), so raw volts can never pass for amps again.

* ``mode="command"``: ``eReadNames`` of all channels every 1/``rate_hz`` s, one Reading each, stamped
  with ``now_ns()`` just before the request (the T7 samples when the request arrives).
* ``mode="stream"``: ``eStreamStart`` at ``scan_rate_hz``; each ``eStreamRead`` gives
  ``scans_per_read`` scans, one Reading per scan, stamped from the scan counter and the actual
  scan rate (``stream_clock`` has the drift policy). A read blocks for up to scans_per_read /
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

import dataclasses
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from soclab.edge.instruments.base import Instrument, InstrumentError, Reading
from soclab.edge.instruments.labjack_t7.backend import (
    LabJackError,
    LJMBackend,
    LJMUnavailable,
    code_names,
    load_backend,
    native_missing,
    translate,
)
from soclab.edge.instruments.labjack_t7.calibration import Calibration, Raw, calibration_from_config
from soclab.edge.instruments.labjack_t7.stream_clock import StreamClock

log = logging.getLogger(__name__)

SKIPPED = -9999.0  # LJM_DUMMY_VALUE
SINGLE_ENDED = 199  # AIN#_NEGATIVE_CH for single-ended (GND)
T7_RANGES = (10.0, 1.0, 0.1, 0.01)
MAX_STREAM_SAMPLES = 100_000  # T7, all channels together, samples/s
MAX_READ_S = 5.0  # one eStreamRead blocks this long at most: a stop waits for it
PRODUCTS = {4: "T4", 7: "T7", 8: "T8"}
_FIELD = re.compile(r"^[a-z][a-z0-9_]{0,55}$")  # "skipped:<field>" must fit a 64-char flag
_AIN = re.compile(r"^AIN(\d{1,3})$")
_IDENTITY_NAMES = ["PRODUCT_ID", "SERIAL_NUMBER", "FIRMWARE_VERSION", "HARDWARE_VERSION"]


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One analog input: which AIN, its analog settings, its calibration."""

    ain: str
    _: KW_ONLY
    calibration: Calibration = field(default_factory=Raw)
    range_v: float = 10.0  # AIN#_RANGE: +-10, 1, 0.1 or 0.01 V
    resolution_index: int = 0  # AIN#_RESOLUTION_INDEX (command mode; 0 = default)
    negative_ch: int = SINGLE_ENDED  # AIN#_NEGATIVE_CH: 199 single-ended, or the odd neighbour

    def __post_init__(self) -> None:
        m = _AIN.match(self.ain)
        if not m:
            raise ValueError(f"ain must look like AIN1, got {self.ain!r}")
        n = int(m.group(1))
        if self.range_v not in T7_RANGES:
            raise ValueError(f"{self.ain}: range_v must be one of {T7_RANGES}, got {self.range_v!r}")
        if not isinstance(self.resolution_index, int) or not 0 <= self.resolution_index <= 12:
            raise ValueError(f"{self.ain}: resolution_index must be 0..12, got {self.resolution_index!r}")
        if self.negative_ch != SINGLE_ENDED and not (n % 2 == 0 and n <= 12 and self.negative_ch == n + 1):
            raise ValueError(
                f"{self.ain}: negative_ch must be {SINGLE_ENDED} (single-ended) or AIN{n + 1} for a"
                f" differential pair on an even AIN, got {self.negative_ch!r}"
            )

    @property
    def number(self) -> int:
        return int(self.ain[3:])

    def settings(self) -> list[tuple[str, float]]:
        n = self.number
        return [
            (f"AIN{n}_RANGE", self.range_v),
            (f"AIN{n}_RESOLUTION_INDEX", self.resolution_index),
            (f"AIN{n}_NEGATIVE_CH", self.negative_ch),
        ]

    def describe(self) -> str:
        wiring = "single-ended" if self.negative_ch == SINGLE_ENDED else f"- AIN{self.negative_ch}"
        return f"{self.ain} {wiring} +-{self.range_v:g} V, {self.calibration.describe()}"

    @classmethod
    def from_config(cls, name: str, table: Mapping[str, Any]) -> ChannelSpec:
        """``ain``, ``range_v``, ``resolution_index``, ``negative_ch``, ``calibration`` (kind) and
        the calibration's own keys (``resistor_ohm``, ``turns``, ``gain``, ``offset_a``, ``ratio``...)."""
        options = dict(table)
        if "ain" not in options:
            raise ValueError(f"[instrument.channels.{name}] needs ain (e.g. AIN1)")
        own = {f.name for f in dataclasses.fields(cls)} - {"calibration"}
        spec = {k: options.pop(k) for k in list(options) if k in own}
        kind = options.pop("calibration", "raw")
        try:
            return cls(**spec, calibration=calibration_from_config(kind, options))
        except ValueError as exc:
            raise ValueError(f"[instrument.channels.{name}]: {exc}") from None


class LabJackDriver(Instrument):
    """LabJack T7 with calibrated channels; see the module doc."""

    kind = "labjack"

    def __init__(
        self,
        channels: Mapping[str, ChannelSpec],
        *,
        mode: str = "command",
        rate_hz: float = 1.0,
        scan_rate_hz: float = 1000.0,
        scans_per_read: int = 100,
        stream_settling_us: float = 0.0,
        stream_resolution_index: int = 0,
        max_clock_offset_ms: float = 5.0,
        device_type: str = "T7",
        connection_type: str = "USB",
        identifier: str = "ANY",
        backend: str | LJMBackend = "ljm",
    ) -> None:
        super().__init__()
        self.channels = dict(channels)
        self._check(mode, rate_hz, scan_rate_hz, scans_per_read, stream_settling_us, stream_resolution_index)
        if not (math.isfinite(max_clock_offset_ms) and max_clock_offset_ms > 0):
            raise ValueError(f"max_clock_offset_ms must be > 0, got {max_clock_offset_ms}")
        self.mode = mode
        self.rate_hz = float(rate_hz)
        self.scan_rate_hz = float(scan_rate_hz)
        self.scans_per_read = scans_per_read
        self.stream_settling_us = float(stream_settling_us)
        self.stream_resolution_index = stream_resolution_index
        self.max_clock_offset_ns = int(max_clock_offset_ms * 1e6)
        self.device_type = device_type
        self.connection_type = connection_type
        self.identifier = str(identifier)
        self.backend_name = backend if isinstance(backend, str) else getattr(backend, "__name__", "custom")
        self._ljm: LJMBackend = load_backend(backend) if isinstance(backend, str) else backend
        self._code_names = code_names(self._ljm)
        self._fields = [(name, spec.calibration) for name, spec in self.channels.items()]
        self._ains = [spec.ain for spec in self.channels.values()]
        self._handle: int | None = None
        self._streaming = False
        self._clock: StreamClock | None = None
        self._scan = 0
        self._next_due = 0.0
        self._identity: dict[str, str | float | int | bool | None] = {}

    def _check(self, mode: str, rate: float, scan_rate: float, spr: int, settling: float, res: int) -> None:
        if not self.channels:
            raise ValueError("channels: at least one")
        for name, spec in self.channels.items():
            if not _FIELD.match(name):
                raise ValueError(f"channel field {name!r} must match {_FIELD.pattern}")
            if not isinstance(spec, ChannelSpec):
                raise ValueError(f"channel {name!r} must be a ChannelSpec, got {type(spec).__name__}")
            unit = spec.calibration.unit
            if not name.endswith(f"_{unit}"):
                raise ValueError(
                    f"channel {name!r} ({spec.calibration.kind}) gives {unit.upper()}: name it *_{unit}"
                )
        ains = [spec.ain for spec in self.channels.values()]
        if len(set(ains)) != len(ains):
            raise ValueError(f"each AIN at most once, got {ains}")
        if mode not in ("command", "stream"):
            raise ValueError(f"mode must be 'command' or 'stream', got {mode!r}")
        if not (math.isfinite(rate) and 0 < rate <= 100):
            raise ValueError(f"rate_hz must be in (0, 100], got {rate}")
        if not (math.isfinite(scan_rate) and scan_rate > 0 and scan_rate * len(ains) <= MAX_STREAM_SAMPLES):
            raise ValueError(f"scan_rate_hz * channels must be in (0, {MAX_STREAM_SAMPLES}], got {scan_rate}")
        if not (isinstance(spr, int) and spr >= 1 and spr / scan_rate <= MAX_READ_S):
            raise ValueError(f"scans_per_read must be an integer >= 1 lasting <= {MAX_READ_S} s, got {spr}")
        if not (math.isfinite(settling) and settling >= 0):
            raise ValueError(f"stream_settling_us must be >= 0, got {settling}")
        if not (isinstance(res, int) and 0 <= res <= 8):
            raise ValueError(f"stream_resolution_index must be 0..8, got {res}")

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> LabJackDriver:
        """From the publisher's ``[instrument]`` table (see the README's example).

        Keys are the keyword arguments above; ``[instrument.channels.<field>]`` tables give the
        channels (``ChannelSpec.from_config``); with ``backend = "standin"``, an optional
        ``[instrument.standin]`` table wires the stand-in (its ``configure_from_config``).
        Numbers may come as strings (``SOCLAB_INSTRUMENT_*`` environment overrides).
        """
        options = dict(table)
        channels_table = options.pop("channels", None)
        if not isinstance(channels_table, Mapping) or not channels_table:
            raise ValueError("[instrument] needs [instrument.channels.<field>] tables, e.g. channels.bat_a")
        standin = options.pop("standin", None)
        known = {
            "mode": str,
            "rate_hz": float,
            "scan_rate_hz": float,
            "scans_per_read": int,
            "stream_settling_us": float,
            "stream_resolution_index": int,
            "max_clock_offset_ms": float,
            "device_type": str,
            "connection_type": str,
            "identifier": str,
            "backend": str,
        }
        unknown = set(options) - set(known)
        if unknown:
            raise ValueError(f"[instrument] has no setting(s) {sorted(unknown)}; known: {', '.join(known)}")
        for key, value in options.items():
            if isinstance(value, str) and known[key] is not str:
                try:
                    options[key] = known[key](value)
                except ValueError:
                    raise ValueError(f"[instrument] {key}={value!r} is not {known[key].__name__}") from None
        channels = {}
        for name, spec in channels_table.items():
            if not isinstance(spec, Mapping):
                raise ValueError(f"[instrument.channels.{name}] must be a table")
            channels[name] = ChannelSpec.from_config(name, spec)
        if standin is not None:
            if options.get("backend") != "standin":
                raise ValueError("[instrument.standin] is only for backend = 'standin'")
            load_backend("standin").configure_from_config(standin)  # type: ignore[attr-defined]
        return cls(channels, **options)

    def identity(self) -> dict[str, str | float | int | bool | None]:
        ident: dict[str, str | float | int | bool | None] = dict(self._identity)
        ident.update(backend=self.backend_name, mode=self.mode, connection=self.connection_type)
        if self.mode == "command":
            ident["rate_hz"] = self.rate_hz
        else:
            ident["scan_rate_hz"] = self._clock.scan_rate_hz if self._clock else None
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
        self._clock = StreamClock(self.now_ns(), rate, max_offset_ns=self.max_clock_offset_ns)
        self.health.counters["stream_starts"] += 1
        self.health.gauges["scan_rate_hz"] = rate
        for gauge in ("device_backlog", "ljm_backlog", "clock_offset_ms", "clock_drift_ppm"):
            self.health.gauges[gauge] = None
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
        t_ns = self.now_ns()
        volts = self._call("eReadNames", self._ljm.eReadNames, len(self._ains), self._ains)
        period = 1.0 / self.rate_hz
        self._next_due += period
        now = time.monotonic()
        if self._next_due < now:  # fell behind by more than a period: skip, don't catch up in a burst
            self.health.counters["command_overruns"] += 1
            self._next_due = now + period
        reading = self._reading(t_ns, volts)
        return [] if reading is None else [reading]

    def _read_stream(self) -> list[Reading]:
        assert self._clock is not None
        data, device_backlog, ljm_backlog = self._call("eStreamRead", self._ljm.eStreamRead)
        now = time.time_ns()
        n = len(self._fields)
        scans, rest = divmod(len(data), n)
        if rest:
            raise LabJackError(f"eStreamRead gave {len(data)} values for {n} channels")
        stamps = self._clock.stamps(self._scan, scans, self._last_t_ns)
        readings = []
        for j, t_ns in enumerate(stamps):
            reading = self._reading(t_ns, data[j * n : (j + 1) * n])
            if reading is not None:
                readings.append(reading)
        self._scan += scans
        if stamps:
            self._last_t_ns = max(self._last_t_ns, stamps[-1])  # keeps now_ns() after the stream
        self._stream_health(scans, device_backlog, ljm_backlog, now)
        return readings

    def _stream_health(self, scans: int, device_backlog: int, ljm_backlog: int, now_ns: int) -> None:
        assert self._clock is not None
        h = self.health
        h.counters["scans_read"] += scans
        h.gauges["device_backlog"] = device_backlog
        h.gauges["ljm_backlog"] = ljm_backlog
        h.gauges["ljm_backlog_max"] = max(ljm_backlog, h.gauges.get("ljm_backlog_max") or 0)
        reanchored = self._clock.observe(now_ns, self._scan + ljm_backlog + device_backlog)
        offset, drift = self._clock.offset_ns, self._clock.drift_ppm
        if reanchored:
            h.counters["clock_reanchors"] += 1
            log.info("instrument=labjack event=clock_reanchor offset_ns=%s drift_ppm=%s", offset, drift)
        h.gauges["clock_offset_ms"] = None if offset is None else round(offset / 1e6, 3)
        h.gauges["clock_drift_ppm"] = None if drift is None else round(drift, 2)

    def _reading(self, t_ns: int, volts: list[float]) -> Reading | None:
        values: dict[str, float] = {}
        flags: list[str] = []
        for (name, calibration), v in zip(self._fields, volts, strict=True):
            if v == SKIPPED:
                flags.append(f"skipped:{name}")
            else:
                values[name] = calibration.apply(v)
        if flags:
            self.health.counters["skipped_samples"] += len(flags)
        if not values:
            self.health.counters["skipped_scans"] += 1
        return Reading(t_ns, values, tuple(flags))

    def _error(self, exc: Exception, doing: str) -> InstrumentError:
        error = translate(exc, self._code_names, doing)
        if isinstance(error, LabJackError):
            self.health.counters["ljm_errors"] += 1
        self.health.last_error = str(error)[:500]
        return error
