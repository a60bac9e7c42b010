"""What the bridge accepts, what it rejects and why, and the dead letters it makes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from soclab.cloud.bridge.intake import Intake, Rejected, dead_letter
from soclab.wire import DEADLETTER_SCHEMA, validate

T0 = 1_700_000_000_000_000_000
TOPIC = "soclab/lab1/pi-01/mppt/data"


def payload(**changes: Any) -> bytes:
    message = {
        "schema": "soclab.data/1",
        "source": {"site": "lab1", "node": "pi-01", "device": "mppt", "kind": "mppt"},
        "samples": [{"seq": 1, "t_ns": T0, "values": {"bat_v": 12.5}}],
        **changes,
    }
    return json.dumps(message).encode()


def test_a_valid_message_becomes_lines() -> None:
    assert Intake().lines(TOPIC, payload()) == [
        f"mppt,device=mppt,node=pi-01,site=lab1 bat_v=12.5,seq=1i {T0}"
    ]


@pytest.mark.parametrize(
    ("topic", "body", "reason"),
    [
        (TOPIC, b"\xff\xfe", "not JSON"),
        (TOPIC, b"[" * 100_000, "not JSON"),
        (TOPIC, b"NaN", "not JSON"),
        (TOPIC, b'{"schema": []}', "unknown schema []"),
        (TOPIC, payload(samples=[]), "soclab.data/1 invalid at samples"),
        (TOPIC, payload(schema="soclab.status/1"), "schema is 'soclab.status/1', expected 'soclab.data/1'"),
        ("soclab/lab1/pi-01/eload/data", payload(), "source lab1/pi-01/mppt does not match topic"),
        ("soclab/Lab1/pi-01/mppt/data", payload(), "topic: site 'Lab1' is not a valid topic level"),
        (TOPIC, payload().replace(b"12.5", b"1e999"), "values/bat_v: inf is not a finite float"),
        (TOPIC, payload(samples=[{"seq": 1, "t_ns": T0, "values": {"seq": 1}}]), "'seq' does not match"),
    ],
)
def test_invalid_messages_are_rejected_with_a_reason(topic: str, body: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as rejected:
        Intake().lines(topic, body)
    assert reason in rejected.value.reason


def test_dead_letters_keep_the_payload_whole() -> None:
    args = {"received_ns": 5, "consumer": "soclab-bridge/x", "fallback_topic": "soclab-bridge/x/deadletter"}
    topic, text = dead_letter(TOPIC, b"caf\xc3\xa9", "why", **args)
    letter = validate(json.loads(text), DEADLETTER_SCHEMA)
    assert topic == "soclab/lab1/pi-01/mppt/deadletter"
    assert (letter["encoding"], letter["payload"], letter["reason"]) == ("utf-8", "café", "why")
    assert (letter["topic"], letter["received_ns"], letter["consumer"]) == (TOPIC, 5, "soclab-bridge/x")

    topic, text = dead_letter("soclab/BAD/x/y/data", b"\x00\xff", "why", **args)
    letter = json.loads(text)
    assert topic == "soclab-bridge/x/deadletter"
    assert letter["encoding"] == "base64"
    assert base64.b64decode(letter["payload"]) == b"\x00\xff"
