"""The schema files and their examples: valid ones pass, invalid ones are refused with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soclab.wire import InvalidMessage, Topic, TopicError, decode, encode, validate

EXAMPLES = Path(__file__).parents[2] / "schemas" / "examples"


@pytest.mark.parametrize("path", sorted((EXAMPLES / "valid").glob("*.json")), ids=lambda p: p.stem)
def test_valid_examples_pass(path):
    message = json.loads(path.read_text())
    assert validate(message) is message
    assert decode(encode(message)) == message


@pytest.mark.parametrize("path", sorted((EXAMPLES / "invalid").glob("*.json")), ids=lambda p: p.stem)
def test_invalid_examples_are_refused(path):
    with pytest.raises(InvalidMessage) as error:
        decode(path.read_bytes())
    assert error.value.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b'{"schema": "soclab.data/1", "x": NaN}', "not JSON"),
        (b'{"schema": "soclab.data/9"}', "unknown schema"),
        (b"[]", "not a JSON object"),
        (b'{"schema": []}', "unknown schema"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_undecodable_payloads_say_why(payload, reason):
    with pytest.raises(InvalidMessage, match=reason):
        decode(payload)


def test_expected_kind_is_enforced():
    status = json.loads((EXAMPLES / "valid" / "status-online.json").read_text())
    with pytest.raises(InvalidMessage, match=r"expected 'soclab\.data/1'"):
        validate(status, "soclab.data/1")


def test_topics_round_trip_and_refuse_wildcards():
    topic = Topic.parse("soclab/lab1/pi-01/mppt/data")
    assert topic == Topic("lab1", "pi-01", "mppt", "data")
    assert str(topic.with_kind("status")) == "soclab/lab1/pi-01/mppt/status"
    assert Topic.subscription("data") == "soclab/+/+/+/data"
    for bad in (
        "soclab/lab1\n/pi-01/mppt/data",
        "soclab/lab1/pi-01/+/data",
        "other/lab1/pi-01/mppt/data",
        "soclab/lab1/mppt/data",
    ):
        with pytest.raises(TopicError):
            Topic.parse(bad)
