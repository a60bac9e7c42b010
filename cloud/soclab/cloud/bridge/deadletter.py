"""Dead letters: a message the bridge will not store, republished with the reason.

A ``soclab.deadletter/1`` message goes to the device's ``.../deadletter`` topic, or to the
bridge's own fallback topic when the original topic names no device. It keeps the payload as text
when it is UTF-8, else base64, but at most ``excerpt_bytes`` of it (``truncated`` then says so),
and always the original's size and SHA-256: a hostile device's 2.9 MB of control characters,
escaped in JSON, would otherwise grow past the broker's packet limit, and the broker would drop
the bridge for each attempt to publish it.
"""

from __future__ import annotations

import base64
import hashlib

from soclab.wire import DEADLETTER_SCHEMA, Topic, TopicError, encode

REASON_LIMIT = 1000  # characters; InfluxDB's error for a large write can be long


def dead_letter(
    topic: str,
    payload: bytes,
    reason: str,
    *,
    received_ns: int,
    consumer: str,
    fallback_topic: str,
    excerpt_bytes: int,
) -> tuple[str, bytes]:
    """The dead-letter topic and ``soclab.deadletter/1`` message for a rejected message."""
    try:
        target = str(Topic.parse(topic).with_kind("deadletter"))
    except TopicError:
        target = fallback_topic
    excerpt = payload[:excerpt_bytes]
    truncated = len(excerpt) < len(payload)
    try:
        text, encoding = _utf8(excerpt, truncated), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(excerpt).decode("ascii"), "base64"
    if len(reason) > REASON_LIMIT:
        keep = REASON_LIMIT // 2 - 10
        reason = f"{reason[:keep]} ... {reason[-keep:]}"
    message = {
        "schema": DEADLETTER_SCHEMA,
        "topic": topic[:1000],
        "reason": reason,
        "received_ns": received_ns,
        "consumer": consumer,
        "encoding": encoding,
        "payload": text,
        "truncated": truncated,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    return target, encode(message)


def _utf8(excerpt: bytes, truncated: bool) -> str:
    """The excerpt as text; a cut through the last character is no reason to fall back to base64."""
    try:
        return excerpt.decode("utf-8")
    except UnicodeDecodeError as exc:
        if truncated and exc.start >= len(excerpt) - 3 and exc.reason == "unexpected end of data":
            return excerpt[: exc.start].decode("utf-8")
        raise
