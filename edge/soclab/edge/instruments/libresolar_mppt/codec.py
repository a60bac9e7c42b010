"""ThingSet text mode as the LibreSolar charge controllers speak it on serial, for both sides.

One line per message, ``\\n`` terminated (``\\r\\n`` accepted). What a host receives:

- publications: ``# {...}`` (v0.3, firmware v21.0), ``#serial {...}`` (v0.4), ``#mSerial {...}``
  (v0.5, nested), ``#mLive {...}`` (v0.6): ``#``, the path, a space, a JSON object;
- responses: ``:85 Content. [14.2]``, ``:84 Changed.``, ``:A4 Not Found.`` (v0.3-v0.5; with
  ``TS_VERBOSE_STATUS_MESSAGES=0`` just ``:85.``) or ``:85 [14.2]``, ``:84``, ``:A3 "why"`` (v0.6);
- anything else (the Zephyr boot banner, ``printf`` output, half lines after a reconnect) is noise.

A float item that is NaN comes out as ``nan`` (the device library's ``printf("%f")``; see the
real-library transcripts in tests/data): not JSON, but a value that is missing. It decodes to
``float("nan")``, as do ``inf``/``-inf``, and the driver leaves such a value out of its sample.

v0.6 may append `` XXXXXXXX#`` to any line: the CRC-32 of the bytes before that space, in
upper-case hex. The ThingSet Zephyr SDK computes it with Zephyr's ``crc32_ieee`` (reflected
polynomial 0xEDB88320, init and final XOR 0xFFFFFFFF), which is ``zlib.crc32``; it is verified here.

Parsing never raises: what cannot be used comes back as ``Ignored`` with a reason, also a line
that Python's ``json`` cannot read although it is JSON (nested deeper than its recursion limit,
an integer of more digits than ``int`` converts): a device, or anything on its line, can send one.
"""

from __future__ import annotations

import enum
import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

METHODS: Final = "?=+-!"


class Status(enum.IntEnum):
    """ThingSet status codes (thingset.h of the device library, v0.3 to v0.5)."""

    CREATED = 0x81
    DELETED = 0x82
    VALID = 0x83
    CHANGED = 0x84
    CONTENT = 0x85
    BAD_REQUEST = 0xA0
    UNAUTHORIZED = 0xA1
    FORBIDDEN = 0xA3
    NOT_FOUND = 0xA4
    METHOD_NOT_ALLOWED = 0xA5
    REQUEST_INCOMPLETE = 0xA8
    CONFLICT = 0xA9
    REQUEST_TOO_LARGE = 0xAD
    UNSUPPORTED_FORMAT = 0xAF
    INTERNAL_SERVER_ERROR = 0xC0
    NOT_IMPLEMENTED = 0xC1
    RESPONSE_TOO_LARGE = 0xE1


# The words of the verbose responses, exactly as thingset_txt.cpp prints them.
STATUS_TEXT: Final[dict[int, str]] = {
    Status.CREATED: "Created",
    Status.DELETED: "Deleted",
    Status.VALID: "Valid",
    Status.CHANGED: "Changed",
    Status.CONTENT: "Content",
    Status.BAD_REQUEST: "Bad Request",
    Status.UNAUTHORIZED: "Unauthorized",
    Status.FORBIDDEN: "Forbidden",
    Status.NOT_FOUND: "Not Found",
    Status.METHOD_NOT_ALLOWED: "Method Not Allowed",
    Status.REQUEST_INCOMPLETE: "Request Entity Incomplete",
    Status.CONFLICT: "Conflict",
    Status.REQUEST_TOO_LARGE: "Request Entity Too Large",
    Status.UNSUPPORTED_FORMAT: "Unsupported Content-Format",
    Status.INTERNAL_SERVER_ERROR: "Internal Server Error",
    Status.NOT_IMPLEMENTED: "Not Implemented",
    Status.RESPONSE_TOO_LARGE: "Response too large",
}


class _Absent:
    """Marks 'no payload' where None would be the JSON null."""

    def __repr__(self) -> str:
        return "NO_PAYLOAD"


NO_PAYLOAD: Final = _Absent()


@dataclass(frozen=True, slots=True)
class Publication:
    """A statement the device pushed: its path (None for v0.3's bare ``#``) and the JSON object."""

    channel: str | None
    data: dict[str, Any]
    crc_checked: bool = False


@dataclass(frozen=True, slots=True)
class Response:
    """The answer to a request: status code, the words or v0.6 message, and the JSON payload."""

    status: int
    description: str | None = None
    payload: Any = None

    @property
    def ok(self) -> bool:
        return self.status < 0xA0


# Reasons of Ignored: the first three are expected noise, the rest are malformed protocol lines.
NOISE_REASONS: Final = frozenset({"blank", "text", "fragment"})


@dataclass(frozen=True, slots=True)
class Ignored:
    """A line that carries nothing usable, and why (see NOISE_REASONS)."""

    line: str
    reason: str

    @property
    def malformed(self) -> bool:
        """It looked like a publication or response but could not be decoded."""
        return self.reason not in NOISE_REASONS


Message = Publication | Response | Ignored

_CRC_RE = re.compile(r"^(?P<body>.*) (?P<crc>[0-9A-Fa-f]{8})#$", re.DOTALL)
_PUB_RE = re.compile(r"^#(?P<path>[^ ]*) (?P<json>.*)$", re.DOTALL)
_RESP_RE = re.compile(r"^:(?P<status>[0-9A-Fa-f]{2})(?P<rest>.*)$", re.DOTALL)
_WORDS_RE = re.compile(r"^(?P<words>[A-Za-z][A-Za-z -]*?)\.(?: (?P<json>.*))?$", re.DOTALL)


# A JSON string (skipped), or what printf makes of a float that is not finite.
_NON_FINITE = re.compile(r'"(?:[^"\\]|\\.)*"|(?<![\w.])(-?)(nan|inf)(?![\w.])')
_CONSTANTS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _printf_constant(m: re.Match[str]) -> str:
    if m.group(2) is None:  # a string: unchanged
        return m.group(0)
    if m.group(2) == "nan":
        return "NaN"
    return "-Infinity" if m.group(1) else "Infinity"


def _loads(text: str) -> Any:
    """JSON as the device prints it: ``nan``/``inf`` (not JSON) become floats, ``NaN`` stays refused.

    Raises ValueError for anything it cannot read, nesting too deep for the decoder included."""
    try:
        if "nan" not in text and "inf" not in text:
            return json.loads(text, parse_constant=_reject_constant)
        return json.loads(_NON_FINITE.sub(_printf_constant, text), parse_constant=_CONSTANTS.__getitem__)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def crc32(text: str) -> int:
    """The CRC of a ThingSet v0.6 line (zlib's CRC-32 = Zephyr's crc32_ieee)."""
    return zlib.crc32(text.encode("utf-8")) & 0xFFFFFFFF


def parse_line(raw: bytes | str) -> Message:
    """Decode one received line (with or without its line end). Never raises."""
    line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes | bytearray) else raw
    line = line.rstrip("\r\n").strip()
    if not line:
        return Ignored(line, "blank")
    head = line[0]
    if head not in "#:":
        fragment = head in '",}' or '":' in line  # the tail of a JSON line
        return Ignored(line, "fragment" if fragment else "text")
    crc_checked = False
    if line.endswith("#") and (m := _CRC_RE.match(line)):
        body = m.group("body")
        if crc32(body) != int(m.group("crc"), 16):
            return Ignored(line, "bad_crc")
        line, crc_checked = body, True
    if head == "#":
        return _parse_publication(line, crc_checked)
    return _parse_response(line)


def _parse_publication(line: str, crc_checked: bool) -> Message:
    m = _PUB_RE.match(line)
    if m is None:
        return Ignored(line, "bad_publication")
    try:
        data = _loads(m.group("json"))
    except ValueError:
        return Ignored(line, "bad_json")
    if not isinstance(data, dict):
        return Ignored(line, "bad_publication")
    return Publication(m.group("path") or None, data, crc_checked)


def _parse_response(line: str) -> Message:
    m = _RESP_RE.match(line)
    if m is None:
        return Ignored(line, "bad_response")
    status = int(m.group("status"), 16)
    rest = m.group("rest")
    if rest in ("", "."):  # v0.6 without payload, or non-verbose ":85."
        return Response(status)
    if not rest.startswith(" "):
        return Ignored(line, "bad_response")
    body = rest[1:]
    description: str | None = None
    text: str | None = body
    if words := _WORDS_RE.match(body):
        description, text = words.group("words"), words.group("json")
    if text is None or text == "":
        return Response(status, description)
    try:
        payload = _loads(text)
    except ValueError:
        return Ignored(line, "bad_json")
    if description is None and status >= 0xA0 and isinstance(payload, str):
        return Response(status, payload)  # v0.6 error message: ':A3 "why"'
    return Response(status, description, payload)


# --- requests (host side) -------------------------------------------------------------------------


class RequestFormatError(ValueError):
    """A request that cannot be put on the wire (bad path, value not representable in JSON)."""


def encode_json(value: Any) -> str:
    """Compact JSON as the firmware's jsmn parser expects it: no spaces, no NaN."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    except (TypeError, ValueError) as exc:
        raise RequestFormatError(f"cannot encode {value!r} as JSON: {exc}") from exc


def _check_path(path: str) -> None:
    if any(c in path for c in " \r\n"):
        raise RequestFormatError(f"a ThingSet path has no spaces or line ends: {path!r}")


def format_request(method: str, path: str, payload: Any = NO_PAYLOAD) -> str:
    """``<method><path>[ <compact json>]``, e.g. ``=conf {"BatNom_Ah":12.0}``."""
    if len(method) != 1 or method not in METHODS:
        raise RequestFormatError(f"method must be one of {METHODS!r}, got {method!r}")
    _check_path(path)
    if payload is NO_PAYLOAD:
        return f"{method}{path}"
    return f"{method}{path} {encode_json(payload)}"


def format_get(path: str) -> str:
    """``?output``: a whole group; ``?conf/``: the names in it."""
    return format_request("?", path)


def format_fetch(path: str, names: Sequence[str]) -> str:
    """``?output ["Bat_V","Bat_A"]``: some items' values, in the order asked."""
    if isinstance(names, str):
        raise RequestFormatError("names must be a sequence of names, not one string")
    return format_request("?", path, list(names))


def format_update(path: str, values: Mapping[str, Any]) -> str:
    """``=input {"LoadEn":false}``: write items of one group."""
    return format_request("=", path, dict(values))


def format_exec(path: str, args: Sequence[Any] | None = None) -> str:
    """``!exec/reset``: call a function (with its arguments as a JSON array, if any)."""
    return format_request("!", path, NO_PAYLOAD if args is None else list(args))


def frame(line: str) -> bytes:
    """The bytes to send for a request line."""
    if "\n" in line or "\r" in line:
        raise RequestFormatError(f"a request is one line: {line!r}")
    return line.encode("ascii", errors="strict") + b"\n"


# --- requests and responses (device side, for the simulator) ------------------------------------


class MalformedRequest(ValueError):
    """The request's JSON payload does not parse (the device answers :A0 Bad Request.)."""


@dataclass(frozen=True, slots=True)
class Request:
    """A request as the device splits it: method, path, and the payload text (decoded on demand)."""

    method: str
    path: str
    payload_text: str | None = None

    @property
    def has_payload(self) -> bool:
        return self.payload_text is not None and self.payload_text != ""

    def payload(self) -> Any:
        """The decoded payload (NO_PAYLOAD if none); raises MalformedRequest."""
        if self.payload_text is None or self.payload_text == "":
            return NO_PAYLOAD
        try:
            return _loads(self.payload_text)
        except ValueError as exc:
            raise MalformedRequest(f"bad JSON in request: {exc}") from exc


def parse_request(raw: bytes | str) -> Request | None:
    """Split a received request line; None if it does not start with a method character."""
    line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes | bytearray) else raw
    line = line.rstrip("\r\n")
    if not line or line[0] not in METHODS:
        return None
    path, sep, rest = line[1:].partition(" ")
    return Request(line[0], path, rest if sep else None)


def format_response(
    status: int, payload: Any = NO_PAYLOAD, *, verbose: bool = True, message: str | None = None
) -> str:
    """``:85 Content. [14.2]`` (verbose, v0.3-v0.5) or ``:85 [14.2]`` / ``:A3 "why"`` (v0.6)."""
    head = f":{status:02X}"
    if verbose:
        head = f"{head} {STATUS_TEXT.get(status, 'Error')}."
    elif message is not None:
        head = f"{head} {encode_json(message)}"
    if payload is NO_PAYLOAD:
        return head
    return f"{head} {encode_json(payload)}"


def format_publication(data: Mapping[str, Any], channel: str | None = None) -> str:
    """``# {...}`` (v0.3, channel None) or ``#<channel> {...}``."""
    return f"#{channel or ''} {encode_json(dict(data))}"


def append_crc(line: str) -> str:
    """Add the v0.6 CRC suffix `` XXXXXXXX#``."""
    return f"{line} {crc32(line):08X}#"
