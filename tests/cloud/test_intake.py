"""What the bridge accepts, what it rejects and why, and the dead letters it makes."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from soclab.cloud.bridge.deadletter import dead_letter
from soclab.cloud.bridge.intake import Intake, Rejected
from soclab.wire import DEADLETTER_SCHEMA, validate

NOW = 1_700_000_000_000_000_000  # the bridge's clock in these tests
T0 = NOW - 10**9
TOPIC = "soclab/lab1/pi-01/mppt/data"
LETTER = {
    "received_ns": 5,
    "consumer": "soclab-bridge/x",
    "fallback_topic": "soclab-bridge/x/deadletter",
    "excerpt_bytes": 64 * 1024,
}


def message(**changes: Any) -> dict[str, Any]:
    return {
        "schema": "soclab.data/1",
        "source": {"site": "lab1", "node": "pi-01", "device": "mppt", "kind": "mppt"},
        "samples": [{"seq": 1, "t_ns": T0, "values": {"bat_v": 12.5}}],
        **changes,
    }


def payload(**changes: Any) -> bytes:
    return json.dumps(message(**changes)).encode()


def lines(topic: str, body: bytes, intake: Intake | None = None) -> list[bytes]:
    return (intake or Intake()).accept(topic, body, NOW).body.split(b"\n")


def test_a_valid_message_becomes_lines_and_ranges() -> None:
    accepted = Intake().accept(TOPIC, payload(), NOW)
    assert accepted.body == f"mppt,device=mppt,node=pi-01,site=lab1 bat_v=12.5,seq=1i {T0}".encode()
    assert (accepted.ranges, accepted.samples, accepted.where.confirmations) == (
        [[1, 1]],
        1,
        "soclab/lab1/pi-01/mppt/stored",
    )


def test_a_replay_is_confirmed_on_its_own_topic() -> None:
    accepted = Intake().accept("soclab/lab1/pi-01/mppt/replay", payload(), NOW)
    assert accepted.where.replay
    assert accepted.where.confirmations == "soclab/lab1/pi-01/mppt/replay/stored"


def test_integers_written_as_floats_take_the_reference_path_and_stay_integers() -> None:
    # The typed decoder refuses 7.0 for an integer; the schema accepts it: the reference decides.
    body = payload(samples=[{"seq": 7.0, "t_ns": float(T0), "values": {"a": 1}}])
    (line,) = lines(TOPIC, body)
    assert line.endswith(f"a=1.0,seq=7i {T0}".encode())


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
        ("soclab/lab1/pi-01/mppt/status", payload(), "is not a data or replay topic"),
        (TOPIC, payload().replace(b"12.5", b"1e999"), "values/bat_v: inf is not a finite float"),
        (TOPIC, payload().replace(b"12.5", b"1" * 400), "values/bat_v: 11111111111111111111...(400 digits)"),
        (TOPIC, payload(samples=[{"seq": 1, "t_ns": T0, "values": {"seq": 1}}]), "'seq' does not match"),
    ],
)
def test_invalid_messages_are_rejected_with_a_reason(topic: str, body: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as rejected:
        Intake().accept(topic, body, NOW)
    assert reason in rejected.value.reason


def test_dead_letters_keep_the_payload_with_its_size_and_digest() -> None:
    topic, text = dead_letter(TOPIC, b"caf\xc3\xa9", "why", **LETTER)
    letter = validate(json.loads(text), DEADLETTER_SCHEMA)
    assert topic == "soclab/lab1/pi-01/mppt/deadletter"
    assert (letter["encoding"], letter["payload"], letter["reason"]) == ("utf-8", "café", "why")
    assert (letter["topic"], letter["received_ns"], letter["consumer"]) == (TOPIC, 5, "soclab-bridge/x")
    assert (letter["truncated"], letter["size"]) == (False, 5)
    assert letter["sha256"] == hashlib.sha256(b"caf\xc3\xa9").hexdigest()

    topic, text = dead_letter("soclab/BAD/x/y/data", b"\x00\xff", "why", **LETTER)
    letter = json.loads(text)
    assert topic == "soclab-bridge/x/deadletter"
    assert letter["encoding"] == "base64"
    assert base64.b64decode(letter["payload"]) == b"\x00\xff"
