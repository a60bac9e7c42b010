"""The EA EL 3000 (A) binary telegram, shared by the driver and the simulator.

``SD | DN | OBJ | DATA (0-16 bytes) | CS_hi CS_lo`` (PROTOCOLS.md section 2). The start
delimiter SD says what follows: bits 7-6 the transmission type, bit 5 the cast bit, bit 4 the
direction (1 = PC to device), bits 3-0 the data length - 1. A query carries no data: its length
bits name the length of the object asked for, so a query is always 5 bytes long, while a send or
an answer is ``6 + (SD & 0x0F)`` bytes. The checksum is the plain 16-bit sum of all bytes before it.

EA's object list for the EL 3000 A / EL 9000 A (user manual, section 9.3.2) says that an object
sent with a mask (54, control) answers a query with that mask and then its state byte.

Facts taken from the captures rather than a manual (so a simulator reproduces them):
answers come with DN 1 whatever DN the query had; error answers (object 0xFF) use SD 0xC0
(type "send data", device to PC, one byte); string objects are queried with length bits 0.
Floats are 4-byte IEEE-754, assumed big-endian like everything else on this wire.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import Enum, IntEnum

from soclab.edge.instruments.base import DeviceError, InstrumentError

CAST_BIT = 0x20
TO_DEVICE_BIT = 0x10
MAX_DATA = 16
MAX_FRAME = 3 + MAX_DATA + 2
QUERY_FRAME = 5
ERROR_OBJECT = 0xFF
FULL_SCALE = 25600  # a set or actual value word: 25600 = 100 % of the nominal value
ANSWER_NODE = 1  # the DN every captured answer carries


class Kind(IntEnum):
    """Transmission type, SD bits 7-6 (0 is reserved)."""

    QUERY = 0b01
    ANSWER = 0b10
    SEND = 0b11


# --- errors -------------------------------------------------------------------------------------
class TelegramError(InstrumentError):
    """Bytes that are not a valid telegram, or a telegram whose data does not fit its object."""


class ChecksumMismatch(TelegramError):
    """A frame whose checksum does not match its bytes (a wire fault)."""


ERROR_MEANINGS: dict[int, str] = {
    0x00: "ok",
    0x03: "checksum wrong",
    0x04: "start delimiter wrong",
    0x05: "wrong node",
    0x07: "object undefined",
    0x08: "object length incorrect",
    0x09: "no read/write access",
    0x0F: "device locked",
    0x30: "upper limit of object exceeded",
    0x31: "lower limit of object exceeded",
}


class EaDeviceError(DeviceError):
    """The load answered with an error telegram (object 0xFF); ``code`` is its error byte."""

    code: int = -1

    def __init__(self, code: int, context: str = "") -> None:
        self.code = code
        self.meaning = ERROR_MEANINGS.get(code, "unknown error")
        detail = f" ({context})" if context else ""
        super().__init__(f"device error {code:#04x}: {self.meaning}{detail}")


class ChecksumRejected(EaDeviceError):
    """Error 3: the device received our telegram with a wrong checksum (noise on our line)."""


class StartDelimiterRejected(EaDeviceError):
    """Error 4: the device did not accept our start delimiter."""


class WrongNode(EaDeviceError):
    """Error 5: no such device node / output."""


class UnknownObject(EaDeviceError):
    """Error 7: the device does not know the object."""


class WrongObjectLength(EaDeviceError):
    """Error 8: the length bits or data length do not match the object."""


class AccessDenied(EaDeviceError):
    """Error 9: no read/write access; set values and the input need remote control on."""


class DeviceLocked(EaDeviceError):
    """Error 0x0F: the device is locked (e.g. by its analogue interface)."""


class UpperLimitExceeded(EaDeviceError):
    """Error 0x30: the value is above the object's upper limit."""


class LowerLimitExceeded(EaDeviceError):
    """Error 0x31: the value is below the object's lower limit."""


_ERROR_CLASSES: dict[int, type[EaDeviceError]] = {
    0x03: ChecksumRejected,
    0x04: StartDelimiterRejected,
    0x05: WrongNode,
    0x07: UnknownObject,
    0x08: WrongObjectLength,
    0x09: AccessDenied,
    0x0F: DeviceLocked,
    0x30: UpperLimitExceeded,
    0x31: LowerLimitExceeded,
}

TRANSMISSION_ERRORS = frozenset({0x03, 0x04})  # the device saw a broken telegram: worth a retry


def device_error(code: int, context: str = "") -> EaDeviceError:
    """The typed exception for an error byte (EaDeviceError itself for codes not in the list)."""
    return _ERROR_CLASSES.get(code, EaDeviceError)(code, context)


# --- objects ------------------------------------------------------------------------------------
class Format(Enum):
    STRING = "string"  # NUL-terminated ASCII, up to 16 bytes
    FLOAT = "float"  # 4-byte IEEE-754, big-endian
    WORD = "word"  # unsigned big-endian, 25600 = 100 % of nominal
    CONTROL = "control"  # mask, value
    STATUS = "status"  # 2 bytes, bit layout not documented for the EL 3000 (see the simulator)
    ACTUAL = "actual"  # three words U, I, P


@dataclass(frozen=True, slots=True)
class EaObject:
    number: int
    name: str
    fmt: Format
    length: int
    readable: bool = True
    writable: bool = False

    @property
    def query_length(self) -> int:
        """The length bits the device expects in a query (strings: 1, as in the captures)."""
        return 1 if self.fmt is Format.STRING else self.length


OBJECTS: dict[int, EaObject] = {
    o.number: o
    for o in (
        EaObject(0, "device_type", Format.STRING, 16),
        EaObject(1, "serial_number", Format.STRING, 16),
        EaObject(2, "nominal_voltage", Format.FLOAT, 4),
        EaObject(3, "nominal_current", Format.FLOAT, 4),
        EaObject(4, "nominal_power", Format.FLOAT, 4),
        EaObject(9, "software_version", Format.STRING, 16),
        EaObject(50, "set_voltage", Format.WORD, 2, writable=True),
        EaObject(51, "set_current", Format.WORD, 2, writable=True),
        EaObject(52, "set_power", Format.WORD, 2, writable=True),
        EaObject(53, "set_resistance", Format.WORD, 2, writable=True),
        EaObject(54, "control", Format.CONTROL, 2, writable=True),  # a query answers mask, state
        EaObject(69, "ah_counter", Format.FLOAT, 4),
        EaObject(70, "status", Format.STATUS, 2),
        EaObject(71, "actual_values", Format.ACTUAL, 6),
    )
}

OBJ_DEVICE_TYPE, OBJ_SERIAL, OBJ_NOMINAL_U, OBJ_NOMINAL_I, OBJ_NOMINAL_P, OBJ_SOFTWARE = 0, 1, 2, 3, 4, 9
OBJ_SET_U, OBJ_SET_I, OBJ_SET_P, OBJ_CONTROL = 50, 51, 52, 54
OBJ_AH, OBJ_STATUS, OBJ_ACTUAL = 69, 70, 71

# Object 54 mask/value bits.
CONTROL_REMOTE = 0x10
CONTROL_INPUT = 0x01


# --- the telegram -------------------------------------------------------------------------------
def checksum(data: bytes) -> int:
    return sum(data) & 0xFFFF


def make_sd(kind: Kind, length: int, *, cast: bool, to_device: bool) -> int:
    if not 1 <= length <= MAX_DATA:
        raise ValueError(f"telegram length must be 1..{MAX_DATA}, got {length}")
    return kind << 6 | (CAST_BIT if cast else 0) | (TO_DEVICE_BIT if to_device else 0) | (length - 1)


def frame_length(sd: int) -> int | None:
    """Bytes in the whole frame that starts with ``sd``; None for the reserved type 0."""
    kind = sd >> 6
    if kind == 0:
        return None
    if kind == Kind.QUERY:
        return QUERY_FRAME
    return 3 + (sd & 0x0F) + 1 + 2


@dataclass(frozen=True, slots=True)
class Telegram:
    sd: int
    dn: int
    obj: int
    data: bytes = b""

    @property
    def kind(self) -> int:
        return self.sd >> 6

    @property
    def cast(self) -> bool:
        return bool(self.sd & CAST_BIT)

    @property
    def to_device(self) -> bool:
        return bool(self.sd & TO_DEVICE_BIT)

    @property
    def length(self) -> int:
        """The length bits + 1: the data length, or for a query the asked-for object's length."""
        return (self.sd & 0x0F) + 1

    @property
    def error_code(self) -> int | None:
        """The error byte of an error answer, else None."""
        if self.obj == ERROR_OBJECT and len(self.data) == 1:
            return self.data[0]
        return None

    def encode(self) -> bytes:
        body = bytes((self.sd, self.dn, self.obj)) + self.data
        return body + checksum(body).to_bytes(2, "big")


def query(obj: int, *, node: int = 0, cast: bool = True, length: int | None = None) -> Telegram:
    """PC -> device query; ``length`` defaults to what the device expects for the object."""
    if length is None:
        length = OBJECTS[obj].query_length
    return Telegram(make_sd(Kind.QUERY, length, cast=cast, to_device=True), node, obj)


def send(obj: int, data: bytes, *, node: int = 0, cast: bool = True) -> Telegram:
    """PC -> device: write ``data`` into an object."""
    return Telegram(make_sd(Kind.SEND, len(data), cast=cast, to_device=True), node, obj, bytes(data))


def answer(obj: int, data: bytes, *, node: int = ANSWER_NODE) -> Telegram:
    """Device -> PC answer to a query."""
    return Telegram(make_sd(Kind.ANSWER, len(data), cast=False, to_device=False), node, obj, bytes(data))


def error_answer(code: int, *, node: int = ANSWER_NODE) -> Telegram:
    """Device -> PC error (or, with code 0, acknowledgement), as captured: ``C0 01 FF <code> CS``."""
    sd = make_sd(Kind.SEND, 1, cast=False, to_device=False)
    return Telegram(sd, node, ERROR_OBJECT, bytes((code,)))


def decode(frame: bytes) -> Telegram:
    """One complete frame -> Telegram; TelegramError if its length or checksum is wrong."""
    if len(frame) < QUERY_FRAME:
        raise TelegramError(f"frame of {len(frame)} bytes is too short: {frame.hex(' ')}")
    expected = frame_length(frame[0])
    if expected is None:
        raise TelegramError(f"start delimiter {frame[0]:#04x} has the reserved type 0")
    if len(frame) != expected:
        raise TelegramError(f"SD {frame[0]:#04x} means {expected} bytes, got {len(frame)}: {frame.hex(' ')}")
    cs = int.from_bytes(frame[-2:], "big")
    if checksum(frame[:-2]) != cs:
        raise ChecksumMismatch(f"checksum {cs:#06x} != {checksum(frame[:-2]):#06x}: {frame.hex(' ')}")
    return Telegram(frame[0], frame[1], frame[2], bytes(frame[3:-2]))


class FrameScanner:
    """Finds telegrams in a byte stream that may also hold garbage, half or garbled frames.

    A frame is accepted where a plausible start delimiter (right direction and type) is followed
    by as many bytes as it announces and a matching checksum; bytes before it are skipped.
    """

    def __init__(self, *, to_device: bool) -> None:
        self._to_device = to_device
        self._buf = bytearray()
        self.skipped = 0  # bytes thrown away before a frame (or as hopeless)

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > 4 * MAX_FRAME:  # nothing valid in it so far: keep only a possible start
            drop = len(self._buf) - MAX_FRAME
            del self._buf[:drop]
            self.skipped += drop

    def _plausible(self, sd: int) -> bool:
        kind = sd >> 6
        if bool(sd & TO_DEVICE_BIT) != self._to_device:
            return False
        return kind in ((Kind.QUERY, Kind.SEND) if self._to_device else (Kind.ANSWER, Kind.SEND))

    def next(self) -> Telegram | None:
        """The next valid frame in the buffer, or None until more bytes arrive."""
        buf = self._buf
        for i in range(len(buf)):
            if not self._plausible(buf[i]):
                continue
            n = frame_length(buf[i]) or 0
            if i + n > len(buf):
                continue  # maybe a half frame; a complete one may still follow it
            frame = bytes(buf[i : i + n])
            if checksum(frame[:-2]) != int.from_bytes(frame[-2:], "big"):
                continue
            self.skipped += i
            del buf[: i + n]
            return decode(frame)
        return None

    @property
    def pending(self) -> bytes:
        return bytes(self._buf)

    def residue_kind(self) -> str | None:
        """What the unmatched bytes look like: 'checksum' (a whole frame, wrong sum), 'short', None."""
        buf = self._buf
        for i in range(len(buf)):
            if self._plausible(buf[i]):
                n = frame_length(buf[i]) or 0
                return "checksum" if i + n <= len(buf) else "short"
        return "short" if buf else None


# --- values -------------------------------------------------------------------------------------
def to_word(value: float, nominal: float) -> int:
    """A set value as the device's word (25600 = nominal), rounded; ValueError outside 0..0xFFFF."""
    if not (math.isfinite(value) and nominal > 0):
        raise ValueError(f"cannot scale {value} of nominal {nominal}")
    word = round(FULL_SCALE * value / nominal)
    if not 0 <= word <= 0xFFFF:
        raise ValueError(f"{value} is outside what a word can carry for nominal {nominal}")
    return word


def from_word(word: int, nominal: float) -> float:
    return word * nominal / FULL_SCALE


def quantise(value: float, nominal: float) -> int:
    """What the device's converter would report: the word, clamped to 0..0xFFFF."""
    if not math.isfinite(value):
        return 0
    return min(0xFFFF, max(0, round(FULL_SCALE * value / nominal)))


def decode_string(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("latin-1").strip()


def encode_string(text: str) -> bytes:
    data = text.encode("ascii") + b"\0"
    if len(data) > MAX_DATA:
        raise ValueError(f"{text!r} is longer than {MAX_DATA - 1} characters")
    return data


def decode_float(data: bytes) -> float:
    if len(data) != 4:
        raise TelegramError(f"a float object needs 4 bytes, got {len(data)}: {data.hex(' ')}")
    return float(struct.unpack(">f", data)[0])


def encode_float(value: float) -> bytes:
    return struct.pack(">f", value)


def decode_word(data: bytes) -> int:
    if len(data) != 2:
        raise TelegramError(f"a word object needs 2 bytes, got {len(data)}: {data.hex(' ')}")
    return int.from_bytes(data, "big")


@dataclass(frozen=True, slots=True)
class ActualValues:
    """Object 71 in physical units: what the load measures at its input (all >= 0)."""

    voltage_v: float
    current_a: float
    power_w: float


def decode_actual(data: bytes, nominal_v: float, nominal_a: float, nominal_w: float) -> ActualValues:
    if len(data) != 6:
        raise TelegramError(f"object 71 needs 6 bytes, got {len(data)}: {data.hex(' ')}")
    u, i, p = struct.unpack(">HHH", data)
    return ActualValues(from_word(u, nominal_v), from_word(i, nominal_a), from_word(p, nominal_w))


def encode_actual_words(u: int, i: int, p: int) -> bytes:
    return struct.pack(">HHH", u, i, p)
