"""From one MQTT message to line protocol, or to the reason it cannot be stored.

A data message is accepted when it is JSON, valid against ``soclab.data/1`` (the schema in
``soclab.wire``, whose ``decode`` is fast for valid messages and gives the reason for invalid
ones), its ``source`` names the same site, node and device as its topic,
and ``points.line_protocol`` can represent it. Anything else is rejected with a one-line reason
and becomes a ``soclab.deadletter/1`` message (``dead_letter()``).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable
from typing import Any

from soclab.cloud.bridge import points
from soclab.wire import DATA_SCHEMA, DEADLETTER_SCHEMA, InvalidMessage, Topic, TopicError, decode, encode

log = logging.getLogger("soclab.cloud.bridge")


class Rejected(ValueError):
    """A message the bridge will not store; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Intake:
    """Turns data messages into line protocol (``lines()``) or raises ``Rejected``."""

    def lines(self, topic: str, payload: bytes) -> list[str]:
        return self.accept(topic, payload)[0]

    def accept(self, topic: str, payload: bytes) -> tuple[list[str], list[list[int]]]:
        """The message's line protocol and the ranges of sequence numbers it carries."""
        message = self.decode(payload)
        return self._lines(topic, message), merge_ranges((s["seq"], s["seq"]) for s in message["samples"])

    def _lines(self, topic: str, message: dict[str, Any]) -> list[str]:
        source = message["source"]
        try:
            where = Topic.parse(topic)
        except TopicError as exc:
            raise Rejected(f"topic: {exc}") from None
        if where.kind != "data":
            raise Rejected(f"topic {topic!r} is not a data topic")
        if (source["site"], source["node"], source["device"]) != (where.site, where.node, where.device):
            raise Rejected(
                f"source {source['site']}/{source['node']}/{source['device']} does not match topic {topic}"
            )
        try:
            return points.line_protocol(message)
        except points.PointError as exc:
            raise Rejected(str(exc)) from None

    def decode(self, payload: bytes) -> dict[str, Any]:
        """The valid data message in ``payload``, or Rejected with ``soclab.wire``'s reason."""
        try:
            return decode(payload, DATA_SCHEMA)
        except InvalidMessage as exc:
            raise Rejected(exc.reason) from None
        except RecursionError:
            raise Rejected("not JSON: nested too deeply") from None
        except Exception as exc:  # the validator tripped over it: still an invalid payload, not a crash
            log.error("event=validator_error error=%r", repr(exc), exc_info=exc)
            raise Rejected(f"invalid message (the validator failed: {type(exc).__name__}: {exc})") from None


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Inclusive ranges, overlapping or adjacent ones joined: [(4, 6), (1, 3), (9, 9)] -> [[1, 6], [9, 9]]."""
    merged: list[list[int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(last, merged[-1][1])
        else:
            merged.append([first, last])
    return merged


def dead_letter(
    topic: str, payload: bytes, reason: str, *, received_ns: int, consumer: str, fallback_topic: str
) -> tuple[str, bytes]:
    """The dead-letter topic and ``soclab.deadletter/1`` message for a rejected message.

    It goes to the device's ``.../deadletter`` topic, or to ``fallback_topic`` when the original
    topic does not name a device (e.g. an invalid topic level).
    """
    try:
        target = str(Topic.parse(topic).with_kind("deadletter"))
    except TopicError:
        target = fallback_topic
    try:
        text, encoding = payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
    message = {
        "schema": DEADLETTER_SCHEMA,
        "topic": topic,
        "reason": reason,
        "received_ns": received_ns,
        "consumer": consumer,
        "encoding": encoding,
        "payload": text,
    }
    return target, encode(message)
