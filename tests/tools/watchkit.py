"""Messages as publishers and bridges send them, for feeding ``soclab watch``'s model in tests."""

from __future__ import annotations

import json
from typing import Any

from soclab.wire import DATA_SCHEMA, DEADLETTER_SCHEMA, STATUS_SCHEMA, STORED_SCHEMA, encode

T0 = 1_700_000_000.0  # the tests' clock starts here (seconds)
SITE, NODE = "lab1", "pi-01"


def topic(device: str, kind: str = "data", site: str = SITE, node: str = NODE) -> str:
    return f"soclab/{site}/{node}/{device}/{kind}"


def data(
    device: str,
    seqs: list[int] | range,
    *,
    t: float = T0,
    period_s: float = 1.0,
    kind: str | None = None,
    values: dict[str, Any] | None = None,
) -> bytes:
    """A data message: one sample per seq, acquired from ``t`` on every ``period_s``."""
    samples = [
        {
            "seq": seq,
            "t_ns": int((t + i * period_s) * 1e9),
            "values": values or {"bat_v": 12.5 + seq / 1000, "bat_a": -1.25},
        }
        for i, seq in enumerate(seqs)
    ]
    source = {"site": SITE, "node": NODE, "device": device, "kind": kind or device}
    return encode({"schema": DATA_SCHEMA, "source": source, "samples": samples})


def status(
    device: str,
    state: str = "online",
    *,
    t: float = T0,
    kind: str | None = None,
    reason: str | None = None,
    gauges: dict[str, Any] | None = None,
    counters: dict[str, int] | None = None,
    last_error: str | None = None,
) -> bytes:
    message: dict[str, Any] = {
        "schema": STATUS_SCHEMA,
        "source": {"site": SITE, "node": NODE, "device": device, "kind": kind or device},
        "state": state,
        "t_ns": int(t * 1e9),
        "counters": counters or {"samples_read": 1},
        "gauges": gauges if gauges is not None else {"spool_depth": 0, "backlog_samples": 0, "seq_next": 0},
        "last_error": last_error,
    }
    if reason:
        message["reason"] = reason
    return encode(message)


def stored(ranges: list[list[int]], *, t: float, bridge: str = "lab") -> bytes:
    message = {"schema": STORED_SCHEMA, "consumer": f"soclab-bridge/{bridge}", "t_ns": int(t * 1e9)}
    message["stored"] = ranges
    return encode(message)


def dead_letter(refused_topic: str, reason: str, payload: str = "junk", bridge: str = "lab") -> bytes:
    return encode(
        {
            "schema": DEADLETTER_SCHEMA,
            "topic": refused_topic,
            "reason": reason,
            "received_ns": int(T0 * 1e9),
            "consumer": f"soclab-bridge/{bridge}",
            "encoding": "utf-8",
            "payload": payload,
        }
    )


def bridge_status(state: str = "online", *, t: float = T0, **counters: int) -> bytes:
    body = {"bridge": "lab", "state": state, "t_ns": int(t * 1e9), "counters": counters, "gauges": {}}
    return json.dumps({**body, "last_error": None}).encode()
