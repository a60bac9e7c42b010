"""Load the JSON Schemas, encode, decode and validate messages against them.

Two validators read the same schema files. ``fastjsonschema`` compiles each schema to Python
once and judges a message in a few µs per sample, which the bridge and a LabJack streaming on a
Pi both need; its verdict stands. ``jsonschema`` (the reference implementation of draft 2020-12)
is asked only for the reason when a message is refused. The tests compare the two verdicts on
thousands of mutated messages: they agree, except that jsonschema lets a pattern's ``$`` match
before a trailing newline (Python's ``re``), so it would accept a topic level "lab1\n", which
ECMA-262 regular expressions, and fastjsonschema, refuse.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

DATA_SCHEMA = "soclab.data/1"
STATUS_SCHEMA = "soclab.status/1"
DEADLETTER_SCHEMA = "soclab.deadletter/1"
STORED_SCHEMA = "soclab.stored/1"
CMD_SCHEMA = "soclab.cmd/1"
CMD_RESULT_SCHEMA = "soclab.cmd.result/1"
RUN_SCHEMA = "soclab.run/1"
RUN_STATUS_SCHEMA = "soclab.run.status/1"
JOURNAL_SCHEMA = "soclab.journal/1"

_FILES = {
    DATA_SCHEMA: "data.v1.json",
    STATUS_SCHEMA: "status.v1.json",
    DEADLETTER_SCHEMA: "deadletter.v1.json",
    STORED_SCHEMA: "stored.v1.json",
    CMD_SCHEMA: "cmd.v1.json",
    CMD_RESULT_SCHEMA: "cmd-result.v1.json",
    RUN_SCHEMA: "run.v1.json",
    RUN_STATUS_SCHEMA: "run-status.v1.json",
    JOURNAL_SCHEMA: "journal.v1.json",
}


class InvalidMessage(ValueError):
    """A payload that is not JSON, or not a valid soclab message. ``reason`` says why, briefly."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def schema_document(name: str) -> dict[str, Any]:
    """The JSON Schema of one message kind, e.g. ``schema_document("soclab.data/1")``."""
    return _schemas()[_FILES[name]]


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    folder = files("soclab.wire") / "schema"
    return {f: json.loads((folder / f).read_text(encoding="utf-8")) for f in _FILES.values()}


@cache
def _validator(name: str) -> Draft202012Validator:
    docs = _schemas()
    registry = Registry().with_resources((doc["$id"], Resource.from_contents(doc)) for doc in docs.values())
    schema = docs[_FILES[name]]
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry)


@cache
def _fast(name: str) -> Any:
    by_id = {doc["$id"]: doc for doc in _schemas().values()}
    return fastjsonschema.compile(
        _schemas()[_FILES[name]], handlers={"https": lambda uri: by_id[uri.split("#")[0]]}
    )


def is_valid_fast(message: Any, name: str) -> bool:
    """The fast validator's verdict, which ``validate`` follows."""
    try:
        _fast(name)(message)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def validate(message: Any, expected: str | None = None) -> dict[str, Any]:
    """Return ``message`` if it is a valid soclab message (of kind ``expected`` if given).

    Raises InvalidMessage naming the first violation, where it is and why, in at most about
    ``REASON_LIMIT`` characters.
    """
    if not isinstance(message, dict):
        raise InvalidMessage(f"message is {type(message).__name__}, not a JSON object")
    name = message.get("schema")
    if not isinstance(name, str) or name not in _FILES:
        raise InvalidMessage(f"unknown schema {_short(repr(name), 80)}")
    if expected is not None and name != expected:
        raise InvalidMessage(f"schema is {name!r}, expected {expected!r}")
    try:
        _fast(name)(message)
    except fastjsonschema.JsonSchemaException as fast_error:
        raise InvalidMessage(_reason(name, message, fast_error)) from None
    return message


REASON_LIMIT = 300


def _reason(name: str, message: dict[str, Any], fast_error: Exception) -> str:
    """The reference validator's first error, found in bounded time.

    jsonschema walks a message until its first error; for a large data message whose last sample
    is wrong that is seconds. The fast validator already knows which sample failed: the reference
    then judges a message holding only that sample, and its path gets the sample's index back.
    """
    index = _failed_sample(name, message, fast_error)
    error = None
    if index is not None:
        reduced = {**message, "samples": [message["samples"][index]]}
        error = next(iter(_validator(name).iter_errors(reduced)), None)
    if error is None:
        index = None
        error = next(iter(_validator(name).iter_errors(message)), None)
    if error is None:
        return f"{name} invalid: {_short(str(fast_error), REASON_LIMIT)}"
    path = list(error.absolute_path)
    if index is not None:
        path[1] = index
    where = "/".join(str(p) for p in path) or "(root)"
    text = error.message
    shown = repr(error.instance)
    if len(shown) > 60 and shown in text:  # the value comes first; keep room for why it is wrong
        text = text.replace(shown, _short(shown, 60))
    return f"{name} invalid at {where}: {_short(text, REASON_LIMIT)}"


def _failed_sample(name: str, message: dict[str, Any], fast_error: Exception) -> int | None:
    path = getattr(fast_error, "path", None)
    samples = message.get("samples")
    if name != DATA_SCHEMA or not isinstance(samples, list) or len(samples) < 2 or not path:
        return None
    if len(path) < 3 or path[:2] != ["data", "samples"] or not str(path[2]).isdigit():
        return None
    index = int(path[2])
    return index if index < len(samples) else None


def _short(text: str, limit: int) -> str:
    """``text`` cut in the middle to at most about ``limit`` characters: its start says what, its
    end (often) why."""
    if len(text) <= limit:
        return text
    keep = (limit - 30) // 2
    return f"{text[:keep]}...({len(text) - 2 * keep} characters)...{text[-keep:]}"


def decode(payload: bytes, expected: str | None = None) -> dict[str, Any]:
    """Parse and validate an MQTT payload: UTF-8 JSON (no byte order mark), a soclab message."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"not JSON: not UTF-8 (byte {payload[exc.start]:#04x} at {exc.start})") from None
    if text.startswith("\ufeff"):
        raise InvalidMessage("not JSON: starts with a byte order mark (the contract is UTF-8 without one)")
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidMessage(f"not JSON: {exc}") from None
    except RecursionError:
        raise InvalidMessage("not JSON this side can read: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise InvalidMessage(f"not JSON this side can read: {_short(str(exc), 200)}") from None
    return validate(message, expected)


def _reject_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


def encode(message: dict[str, Any], *, check: bool = True) -> bytes:
    """Serialise a message compactly, validating it first unless told not to."""
    if check:
        validate(message)
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
