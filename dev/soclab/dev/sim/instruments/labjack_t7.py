"""A stand-in for ``labjack.ljm``: the calls the driver makes, answered by a simulated T7.

Same function names, call signatures, ``LJMError`` (``errorCode``, ``errorString``) and error codes
as ``labjack.ljm`` 1.23. One simulated T7 per process, wired like the lab (``configure``): a LEM
LA 55-P with measuring resistor R_M on one AIN, a voltage divider on another, both fed by the
simulated battery, either an in-process ``Battery`` or a ``BatteryStateReader`` of the simulated
lab's shared file (interpolated between its two latest snapshots, held after the latest).

What it imitates:

* AIN volts: LEM ``V = (gain * I + offset) * N * R_M / 1000``, divider ``V = V_bat / ratio``, plus
  Gaussian noise (``noise_v`` RMS), clipped a little beyond the AIN's range; unwired AINs read
  noise. Resolution index and settling are accepted and checked, not modelled.
* Stream: the actual scan rate is quantised like the T7's (80 MHz core clock / integer divisor);
  the device's crystal is off by ``drift_ppm``, so scans come a little faster or slower than
  ``rate`` by the host's clock; ``eStreamRead`` blocks until ``scansPerRead`` scans are due in
  real time. Scans not yet read are the LJM backlog (the device backlog is reported as 0); more than
  ``BUFFER_S`` seconds of it stops the stream with LJM_BUFFER_FULL, as LJM does.
* Faults: ``skip_probability`` replaces samples by -9999.0 (as LJM's stream auto-recovery does);
  ``unplug()``: open handles fail with RECONNECT_FAILED and ``openS`` with DEVICE_NOT_FOUND until
  ``replug()`` (or ``for_s`` has passed); after a replug, command calls work again on old handles
  (LJM reconnects them) but a stream that was running is gone (STREAM_NOT_RUNNING).
* A shared battery file that is missing or stale looks like an unplugged device, with the reason
  in ``errorString``.
"""

# ruff: noqa: N801, N802, N803 - the LJM API's own names

from __future__ import annotations

import math
import random
import re
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import msgspec

from soclab.dev.sim.battery import Battery
from soclab.dev.sim.shared_battery import BatteryStateReader, SharedBatteryError

CORE_CLOCK_HZ = 80_000_000
MAX_SAMPLE_RATE = 100_000  # T7 stream, all channels together, samples/s
BUFFER_S = 20.0  # LJM's stream buffer, in seconds of scans
OVERRANGE = 1.05  # an AIN clips a little beyond its nominal range
SKIPPED = -9999.0


class LJMError(Exception):
    """As ``labjack.ljm.LJMError``."""

    def __init__(
        self, errorCode: int | None = None, errorAddress: int | None = None, errorString: str | None = None
    ) -> None:
        super().__init__(errorCode, errorString)
        self._errorCode = errorCode
        self._errorAddress = errorAddress
        self._errorString = errorString if errorString is not None else _NAMES.get(errorCode or 0, "")

    @property
    def errorCode(self) -> int | None:
        return self._errorCode

    @property
    def errorAddress(self) -> int | None:
        return self._errorAddress

    @property
    def errorString(self) -> str:
        return self._errorString

    def __str__(self) -> str:
        where = f"Address {self._errorAddress}, " if self._errorAddress is not None else ""
        code = f"LJM library error code {self._errorCode} " if self._errorCode is not None else ""
        return where + code + self._errorString


class errorcodes:
    """The codes of ``labjack.ljm.errorcodes`` this module uses (same numbers)."""

    NOERROR = 0
    MBE2_ILLEGAL_DATA_ADDRESS = 1202
    UNKNOWN_ERROR = 1221
    INVALID_HANDLE = 1223
    DEVICE_NOT_OPEN = 1224
    STREAM_NOT_INITIALIZED = 1225
    DEVICE_NOT_FOUND = 1227
    RECONNECT_FAILED = 1239
    INVALID_ADDRESS = 1250
    INVALID_PARAMETER = 1255
    INVALID_NAME = 1294
    LJM_BUFFER_FULL = 1301
    COULD_NOT_START_STREAM = 1302
    STREAM_NOT_RUNNING = 1303
    INVALID_VALUE = 1305


class constants:
    """The constants of ``labjack.ljm.constants`` this module uses."""

    UINT16 = 0
    UINT32 = 1
    FLOAT32 = 3
    DUMMY_VALUE = -9999
    INVALID_NAME_ADDRESS = -1


_NAMES = {v: k for k, v in vars(errorcodes).items() if k.isupper()}


# --- registers ------------------------------------------------------------------------------------
_FIXED = {  # name: (address, type, writable)
    "PRODUCT_ID": (60000, constants.FLOAT32, False),
    "HARDWARE_VERSION": (60002, constants.FLOAT32, False),
    "FIRMWARE_VERSION": (60004, constants.FLOAT32, False),
    "SERIAL_NUMBER": (60028, constants.UINT32, False),
    "STREAM_SCANRATE_HZ": (4002, constants.FLOAT32, False),
    "STREAM_SETTLING_US": (4008, constants.FLOAT32, True),
    "STREAM_RESOLUTION_INDEX": (4010, constants.UINT32, True),
    "STREAM_CLOCK_SOURCE": (4014, constants.UINT32, True),
    "STREAM_TRIGGER_INDEX": (4024, constants.UINT32, True),
    "STREAM_ENABLE": (4990, constants.UINT32, True),
}
_AIN = re.compile(r"^AIN(\d{1,2})(_RANGE|_NEGATIVE_CH|_RESOLUTION_INDEX)?$")
_AIN_REGS = {"": (0, 2, constants.FLOAT32), "_RANGE": (40000, 2, constants.FLOAT32)}
_AIN_REGS |= {"_NEGATIVE_CH": (41000, 1, constants.UINT16), "_RESOLUTION_INDEX": (41500, 1, constants.UINT16)}
NUM_AIN = 14
RANGES = (10.0, 1.0, 0.1, 0.01)


def _register(name: str) -> tuple[int, int, bool, int | None, str]:
    """(address, type, writable, AIN number or None, AIN suffix) of a register name."""
    if not isinstance(name, str):
        raise TypeError(f"Expected a string instead of {type(name)}.")
    if name in _FIXED:
        address, dtype, writable = _FIXED[name]
        return address, dtype, writable, None, ""
    m = _AIN.match(name)
    if m and int(m.group(1)) < NUM_AIN:
        n, suffix = int(m.group(1)), m.group(2) or ""
        base, step, dtype = _AIN_REGS[suffix]
        return base + step * n, dtype, suffix != "", n, suffix
    raise LJMError(errorcodes.INVALID_NAME, errorString=f"INVALID_NAME: {name!r}")


def _float32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


# --- the simulated device -------------------------------------------------------------------------
Sampler = Callable[[int], tuple[float, float]]  # wall t_ns -> (battery current A, voltage V)


def _live_sampler(battery: Battery) -> Sampler:
    state = battery.state()
    return lambda _t: (state.current_a, state.voltage_v)


def _shared_sampler(reader: BatteryStateReader) -> Sampler:
    (tb, b), (ta, a) = reader.pair()
    if tb <= ta:
        return lambda _t: (b.current_a, b.voltage_v)
    span = tb - ta

    def sample(t: int) -> tuple[float, float]:
        w = min(1.0, max(0.0, (t - ta) / span))
        return a.current_a + w * (b.current_a - a.current_a), a.voltage_v + w * (b.voltage_v - a.voltage_v)

    return sample


@dataclass(frozen=True, slots=True)
class Wiring:
    """How the simulated T7 is wired and how imperfect it is (see ``configure``)."""

    battery: Battery | BatteryStateReader
    current_ain: int = 1
    voltage_ain: int = 2
    resistor_ohm: float = 150.0
    turns: int = 1
    sensor_gain: float = 1.0
    sensor_offset_a: float = 0.0
    divider_ratio: float = 2.0
    noise_v: float = 200e-6
    drift_ppm: float = 20.0
    skip_probability: float = 0.0
    serial_number: int = 470023670
    firmware_version: float = 1.0299
    hardware_version: float = 1.30

    def sampler(self) -> Sampler:
        if isinstance(self.battery, Battery):
            return _live_sampler(self.battery)
        return _shared_sampler(self.battery)


@dataclass
class _Stream:
    ains: list[int]
    scans_per_read: int
    rate: float
    device_rate: float
    start_mono_ns: int
    start_wall_ns: int
    sent: int = 0


@dataclass
class _Handle:
    generation: int
    stream: _Stream | None = None


@dataclass
class _Device:
    wiring: Wiring | None = None
    rng: random.Random = field(default_factory=random.Random)
    normals: list[float] = field(default_factory=list)  # drawn from rng once, for streams (_scans)
    registers: dict[str, float] = field(default_factory=dict)
    handles: dict[int, _Handle] = field(default_factory=dict)
    next_handle: int = 1
    generation: int = 0
    unplugged_until: float | None = None  # monotonic s; inf until replug()
    stats: Counter[str] = field(default_factory=Counter)


_lock = threading.RLock()
_dev = _Device()


def configure(
    battery: Battery | BatteryStateReader,
    *,
    current_ain: str = "AIN1",
    voltage_ain: str = "AIN2",
    resistor_ohm: float = 150.0,
    turns: int = 1,
    sensor_gain: float = 1.0,
    sensor_offset_a: float = 0.0,
    divider_ratio: float = 2.0,
    noise_v: float = 200e-6,
    drift_ppm: float = 20.0,
    skip_probability: float = 0.0,
    seed: int | None = None,
    serial_number: int = 470023670,
    firmware_version: float = 1.0299,
    hardware_version: float = 1.30,
) -> None:
    """Wire the simulated T7 (and forget earlier wiring, handles and registers).

    ``sensor_gain``/``sensor_offset_a`` are the LEM's own errors (primary side, A), which a
    calibration should undo; ``divider_ratio`` is V_in / V_out (2.0 is an assumption, not the
    LJTick-Divider's datasheet value). ``seed`` makes noise and skipped samples repeatable.
    """
    ains = []
    for label, ain in (("current_ain", current_ain), ("voltage_ain", voltage_ain)):
        m = _AIN.match(ain)
        if not m or m.group(2) or int(m.group(1)) >= NUM_AIN:
            raise ValueError(f"{label} must be AIN0..AIN{NUM_AIN - 1}, got {ain!r}")
        ains.append(int(m.group(1)))
    if not (resistor_ohm > 0 and divider_ratio > 0 and noise_v >= 0 and 0 <= skip_probability < 1):
        raise ValueError("resistor_ohm, divider_ratio > 0; noise_v >= 0; 0 <= skip_probability < 1")
    if isinstance(turns, bool) or not isinstance(turns, int) or turns < 1:
        raise ValueError(f"turns must be an integer >= 1, got {turns!r}")
    if not isinstance(battery, Battery | BatteryStateReader):
        raise TypeError(f"battery must be a Battery or a BatteryStateReader, got {type(battery).__name__}")
    wiring = Wiring(
        battery,
        current_ain=ains[0],
        voltage_ain=ains[1],
        resistor_ohm=resistor_ohm,
        turns=turns,
        sensor_gain=sensor_gain,
        sensor_offset_a=sensor_offset_a,
        divider_ratio=divider_ratio,
        noise_v=noise_v,
        drift_ppm=drift_ppm,
        skip_probability=skip_probability,
        serial_number=serial_number,
        firmware_version=firmware_version,
        hardware_version=hardware_version,
    )
    global _dev
    with _lock:
        _dev = _Device(wiring=wiring, rng=random.Random(seed))


class StandinOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[instrument.standin]``: the simulated lab's battery file and ``configure``'s keywords."""

    battery_file: str
    max_age_s: float = 1.0
    current_ain: str = "AIN1"
    voltage_ain: str = "AIN2"
    resistor_ohm: float = 150.0
    turns: int = 1
    sensor_gain: float = 1.0
    sensor_offset_a: float = 0.0
    divider_ratio: float = 2.0
    noise_v: float = 200e-6
    drift_ppm: float = 20.0
    skip_probability: float = 0.0
    seed: int | None = None


def configure_from_config(table: Mapping[str, Any]) -> None:
    """From the publisher's ``[instrument.standin]`` table (values from the environment are text:
    converted here as the settings path converts them)."""
    try:
        options = msgspec.convert(dict(table), StandinOptions, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"[instrument.standin]: {exc}") from None
    settings = msgspec.structs.asdict(options)
    path, max_age_s = settings.pop("battery_file"), settings.pop("max_age_s")
    configure(BatteryStateReader(Path(path), max_age_s=max_age_s), **settings)


def reset() -> None:
    """Back to unconfigured: no wiring, no handles, plugged in, counters zero."""
    global _dev
    with _lock:
        _dev = _Device()


def unplug(for_s: float | None = None) -> None:
    """Pull the USB cable, for ``for_s`` seconds or until ``replug()``."""
    with _lock:
        _dev.unplugged_until = math.inf if for_s is None else time.monotonic() + for_s
        _dev.generation += 1
        _dev.stats["unplugs"] += 1


def replug() -> None:
    with _lock:
        _dev.unplugged_until = None


def stats() -> dict[str, int]:
    """What happened: opens, closes, stream_starts, stream_stops, scans, skipped, unplugs."""
    with _lock:
        return dict(_dev.stats)


def _plugged() -> bool:
    if _dev.unplugged_until is not None and time.monotonic() >= _dev.unplugged_until:
        _dev.unplugged_until = None
    return _dev.unplugged_until is None


def _handle(handle: int) -> _Handle:
    """The open handle; raises as LJM does when it is unknown or the device is gone."""
    h = _dev.handles.get(handle)
    if h is None:
        raise LJMError(errorcodes.INVALID_HANDLE)
    if not _plugged():
        raise LJMError(errorcodes.RECONNECT_FAILED)
    if h.generation != _dev.generation:  # replugged: LJM reconnected the handle, the stream is gone
        h.generation = _dev.generation
        h.stream = None
    return h


def _wiring() -> Wiring:
    if _dev.wiring is None:
        raise LJMError(
            errorcodes.UNKNOWN_ERROR,
            errorString="the LJM stand-in is not configured: call configure(battery=...) first",
        )
    return _dev.wiring


def _sampler(code: int) -> Sampler:
    try:
        return _wiring().sampler()
    except SharedBatteryError as exc:
        raise LJMError(code, errorString=f"stand-in has no battery: {exc}") from exc


def _ain_volts(w: Wiring, ain: int, current_a: float, voltage_v: float) -> float:
    if ain == w.current_ain:
        v = (w.sensor_gain * current_a + w.sensor_offset_a) * w.turns * w.resistor_ohm / 1000.0
    elif ain == w.voltage_ain:
        v = voltage_v / w.divider_ratio
    else:
        v = 0.0
    v += _dev.rng.gauss(0.0, w.noise_v) if w.noise_v else 0.0
    limit = _dev.registers.get(f"AIN{ain}_RANGE", 10.0) * OVERRANGE
    return min(limit, max(-limit, v))


def _read(name: str) -> float:
    _, _, _, ain, suffix = _register(name)
    w = _wiring()
    if ain is not None and suffix == "":
        current, voltage = _sampler(errorcodes.RECONNECT_FAILED)(time.time_ns())
        return _ain_volts(w, ain, current, voltage)
    fixed = {
        "PRODUCT_ID": 7.0,
        "SERIAL_NUMBER": float(w.serial_number),
        "FIRMWARE_VERSION": _float32(w.firmware_version),
        "HARDWARE_VERSION": _float32(w.hardware_version),
    }
    if name in fixed:
        return fixed[name]
    defaults = {"_RANGE": 10.0, "_NEGATIVE_CH": 199.0, "_RESOLUTION_INDEX": 0.0}
    return _dev.registers.get(name, defaults.get(suffix, 0.0))


def _write(name: str, value: float) -> None:
    address, _, writable, ain, suffix = _register(name)
    if not writable:
        raise LJMError(errorcodes.MBE2_ILLEGAL_DATA_ADDRESS, address, f"{name} is read-only")
    valid = {
        "_RANGE": value in RANGES,
        "_NEGATIVE_CH": value == 199 or (ain is not None and ain % 2 == 0 and value == ain + 1),
        "_RESOLUTION_INDEX": value in range(13),
    }.get(suffix)
    if name == "STREAM_RESOLUTION_INDEX":
        valid = value in range(9)
    elif name == "STREAM_SETTLING_US":
        valid = 0 <= value <= 4400
    elif name in ("STREAM_CLOCK_SOURCE", "STREAM_TRIGGER_INDEX", "STREAM_ENABLE"):
        valid = value == 0  # internal clock, no trigger; streams start with eStreamStart only
    if not valid:
        raise LJMError(errorcodes.INVALID_VALUE, address, f"{name} cannot be {value!r}")
    if name == "STREAM_ENABLE":
        for h in _dev.handles.values():
            h.stream = None
        return
    _dev.registers[name] = float(value)


# --- the labjack.ljm API ----------------------------------------------------------------------------
def openS(deviceType: str = "ANY", connectionType: str = "ANY", identifier: str = "ANY") -> int:
    if not isinstance(deviceType, str) or not isinstance(connectionType, str):
        raise TypeError("Expected a string for deviceType and connectionType.")
    with _lock:
        w = _wiring()
        dtype = deviceType.upper().removeprefix("LJM_DT")
        ctype = connectionType.upper().removeprefix("LJM_CT")
        ident = str(identifier).upper().removeprefix("LJM_ID")
        if dtype not in ("", "ANY", "T7") or ctype not in ("", "ANY", "USB"):
            raise LJMError(errorcodes.DEVICE_NOT_FOUND)
        if ident not in ("", "ANY", str(w.serial_number)) or not _plugged():
            raise LJMError(errorcodes.DEVICE_NOT_FOUND)
        _sampler(errorcodes.DEVICE_NOT_FOUND)  # a stale shared battery looks like no device
        handle = _dev.next_handle
        _dev.next_handle += 1
        _dev.handles[handle] = _Handle(_dev.generation)
        _dev.stats["opens"] += 1
        return handle


def close(handle: int) -> None:
    with _lock:
        if _dev.handles.pop(handle, None) is None:
            raise LJMError(errorcodes.INVALID_HANDLE)
        _dev.stats["closes"] += 1


def eReadName(handle: int, name: str) -> float:
    with _lock:
        _handle(handle)
        return _read(name)


def eReadNames(handle: int, numFrames: int, aNames: list[str]) -> list[float]:
    with _lock:
        _handle(handle)
        if len(aNames) < numFrames:
            raise LJMError(errorcodes.INVALID_PARAMETER, errorString="aNames is shorter than numFrames")
        return [_read(name) for name in aNames[:numFrames]]


def eWriteName(handle: int, name: str, value: float) -> None:
    with _lock:
        _handle(handle)
        _write(name, value)


def eWriteNames(handle: int, numFrames: int, aNames: list[str], aValues: list[float]) -> None:
    with _lock:
        _handle(handle)
        if len(aNames) < numFrames or len(aValues) < numFrames:
            raise LJMError(errorcodes.INVALID_PARAMETER, errorString="aNames/aValues shorter than numFrames")
        for name, value in zip(aNames[:numFrames], aValues[:numFrames], strict=True):
            _write(name, value)


def namesToAddresses(
    numFrames: int,
    aNames: list[str],
    aAddresses: list[int] | None = None,
    aDataTypes: list[int] | None = None,
) -> tuple[list[int], list[int]]:
    """Unknown names give address -1 (INVALID_NAME_ADDRESS), as LJM does."""
    addresses, types = [], []
    for name in aNames[:numFrames]:
        try:
            address, dtype, *_ = _register(name)
        except LJMError:
            address, dtype = constants.INVALID_NAME_ADDRESS, 0
        addresses.append(address)
        types.append(dtype)
    return addresses, types


def actual_scan_rate(scan_rate: float) -> float:
    """The T7's rate for a requested one: the 80 MHz core clock over an integer divisor."""
    return CORE_CLOCK_HZ / max(1, round(CORE_CLOCK_HZ / scan_rate))


def eStreamStart(
    handle: int, scansPerRead: int, numAddresses: int, aScanList: list[int], scanRate: float
) -> float:
    with _lock:
        h = _handle(handle)
        w = _wiring()
        if h.stream is not None:
            raise LJMError(errorcodes.COULD_NOT_START_STREAM, errorString="stream is already running")
        if not (scansPerRead >= 1 and numAddresses >= 1 and len(aScanList) == numAddresses and scanRate > 0):
            raise LJMError(
                errorcodes.INVALID_PARAMETER, errorString="scansPerRead, numAddresses, aScanList, scanRate"
            )
        if any(a % 2 or not 0 <= a < 2 * NUM_AIN for a in aScanList):
            raise LJMError(errorcodes.INVALID_ADDRESS, errorString=f"not AIN addresses: {aScanList}")
        rate = actual_scan_rate(scanRate)
        if rate * numAddresses > MAX_SAMPLE_RATE:
            raise LJMError(
                errorcodes.INVALID_PARAMETER, errorString=f"{rate * numAddresses:.0f} samples/s > T7 max"
            )
        _dev.registers["STREAM_SCANRATE_HZ"] = rate
        h.stream = _Stream(
            ains=[a // 2 for a in aScanList],
            scans_per_read=scansPerRead,
            rate=rate,
            device_rate=rate * (1 + w.drift_ppm * 1e-6),
            start_mono_ns=time.monotonic_ns(),
            start_wall_ns=time.time_ns(),
        )
        _dev.stats["stream_starts"] += 1
        return rate


def eStreamRead(handle: int) -> tuple[list[float], int, int]:
    with _lock:
        st = _running(handle)
        end = st.sent + st.scans_per_read
        due = st.start_mono_ns + math.ceil((end - 1) * 1e9 / st.device_rate)
    while (wait := due - time.monotonic_ns()) > 0:  # blocks like LJM, without holding the lock
        time.sleep(min(wait / 1e9, 0.02))
        with _lock:
            st = _running(handle)
    with _lock:
        st = _running(handle)
        w = _wiring()
        if _acquired(st) - end > BUFFER_S * st.rate:
            _dev.handles[handle].stream = None
            raise LJMError(errorcodes.LJM_BUFFER_FULL)
        sample = _sampler(errorcodes.RECONNECT_FAILED)
        data, skip = _scans(w, st, sample, end)
        st.sent = end
        _dev.stats["scans"] += st.scans_per_read
        _dev.stats["skipped"] += skip
        return data, 0, _acquired(st) - end  # the backlog as the data leaves


def _scans(w: Wiring, st: _Stream, sample: Sampler, end: int) -> tuple[list[float], int]:
    """Scans ``st.sent`` .. ``end`` - 1, interleaved as LJM gives them, and how many values were
    skipped: what ``_ain_volts`` gives each AIN (its noise from a table, ``_normals``), computed a
    channel at a time, because a stand-in streaming 100 kS/s must not cost the publisher's
    process what LJM's C code does not (a load generator must not be the bottleneck it measures)."""
    period_ns = 1e9 / st.device_rate
    states = [sample(st.start_wall_ns + round(k * period_ns)) for k in range(st.sent, end)]
    rng = _dev.rng
    columns = []
    for ain in st.ains:
        if ain == w.current_ain:
            scale = w.turns * w.resistor_ohm / 1000.0
            clean = [(w.sensor_gain * current + w.sensor_offset_a) * scale for current, _ in states]
        elif ain == w.voltage_ain:
            clean = [voltage / w.divider_ratio for _, voltage in states]
        else:
            clean = [0.0] * len(states)
        if w.noise_v:
            clean = [v + w.noise_v * z for v, z in zip(clean, _normals(len(clean)), strict=True)]
        limit = _dev.registers.get(f"AIN{ain}_RANGE", 10.0) * OVERRANGE
        columns.append([min(limit, max(-limit, v)) for v in clean])
    data = [v for scan in zip(*columns, strict=True) for v in scan]
    skip = 0
    if w.skip_probability:
        p, draw = w.skip_probability, rng.random
        data = [SKIPPED if draw() < p else v for v in data]
        skip = data.count(SKIPPED)
    return data, skip


NORMALS = 65_536


def _normals(count: int) -> islice[float]:
    """``count`` standard normal values: a table drawn from the device's ``rng`` once, read from
    a random place on (and round again), so that noise costs a stream next to nothing per sample."""
    if not _dev.normals:
        _dev.normals = [_dev.rng.gauss(0.0, 1.0) for _ in range(NORMALS)]
    start = _dev.rng.randrange(NORMALS)
    return islice(cycle(_dev.normals), start, start + count)


def _acquired(st: _Stream) -> int:
    """Scans the device has acquired by now."""
    return int((time.monotonic_ns() - st.start_mono_ns) * st.device_rate / 1e9) + 1


def _running(handle: int) -> _Stream:
    st = _handle(handle).stream
    if st is None:
        raise LJMError(errorcodes.STREAM_NOT_RUNNING)
    return st


def eStreamStop(handle: int) -> None:
    with _lock:
        h = _handle(handle)
        if h.stream is None:
            raise LJMError(errorcodes.STREAM_NOT_INITIALIZED)
        h.stream = None
        _dev.stats["stream_stops"] += 1
