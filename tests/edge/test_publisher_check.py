"""The sender's check of a batch before it leaves: the typed decoder's verdict, the reference
validator's reason (``publisher.service._check_data``)."""

from __future__ import annotations

import json

import pytest

from soclab.edge.publisher.service import _check_data
from soclab.wire import InvalidMessage

T0 = 1_700_000_000_000_000_000


def message(*samples: dict) -> bytes:
    source = {"site": "lab1", "node": "pi-01", "device": "labjack", "kind": "labjack"}
    return json.dumps({"schema": "soclab.data/1", "source": source, "samples": list(samples)}).encode()


def test_a_valid_batch_passes() -> None:
    _check_data(
        message(*({"seq": i, "t_ns": T0 + i, "values": {"bat_v": 12.5, "bat_a": -1.0}} for i in range(5000)))
    )


def test_what_only_the_reference_accepts_passes() -> None:
    """The schema's integer takes 7.0; the typed decoder does not, the reference path decides."""
    _check_data(message({"seq": 7.0, "t_ns": T0, "values": {"bat_v": 12.5}}))


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        ({"seq": 3, "t_ns": T0, "values": {"Bat_v": 1.0}}, "samples/1/values"),
        ({"seq": 3, "t_ns": T0, "values": {}}, "samples/1"),
        ({"seq": -1, "t_ns": T0, "values": {"bat_v": 1.0}}, "samples/1/seq"),
        ({"seq": 3, "t_ns": T0, "values": {"bat_v": 1.0}, "flags": ["a", "a"]}, "samples/1/flags"),
    ],
)
def test_an_invalid_batch_is_refused_with_the_reference_reason(sample: dict, reason: str) -> None:
    good = {"seq": 2, "t_ns": T0, "values": {"bat_v": 1.0}}
    with pytest.raises(InvalidMessage) as refused:
        _check_data(message(good, sample))
    assert f"invalid at {reason}" in refused.value.reason
