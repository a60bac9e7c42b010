"""The fast validator (fastjsonschema), whose verdict ``soclab.wire.validate`` follows, judges as
the reference (jsonschema) does, but for jsonschema's Python-regex quirk: a pattern's ``$``
matching before a trailing newline. The typed decoder (``soclab.wire.typed``) is never more
lenient than either. Reasons say why, in bounded time."""

from __future__ import annotations

import contextlib
import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator

from soclab.wire import DATA_SCHEMA, InvalidMessage, decode, messages, validate
from soclab.wire.messages import is_valid_fast, schema_document
from soclab.wire.typed import NotFast, decode_data, from_valid

T0 = 1_700_000_000_000_000_000
EXAMPLES = Path(__file__).parents[2] / "schemas/examples"

# Values that break something somewhere: wrong types, edges of the ranges, bad names.
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.0, 1.5, 2**53, 2**53 - 1, 2**63, float("inf"), -1e300, "", "x", "A",
    "lab1\n", "a/b", "+", "#", "a" * 64, "a" * 63, [], [1], ["a", "a"], {}, {"x": 1},
    T0, 946684800000000000 - 1, 4102444800000000000 + 1, 4102444800000000000, 946684800000000000,
    "mppt", "labjack", "soclab.data/1", "soclab.status/1",
]  # fmt: skip


def examples(kind: str) -> list[dict[str, Any]]:
    """The schema's own examples of data messages (``valid`` or ``invalid``)."""
    files = sorted((EXAMPLES / kind).glob("data-*.json"))
    assert files, f"no examples in {EXAMPLES / kind}"
    return [json.loads(f.read_text(encoding="utf-8")) for f in files]


def valid_messages() -> list[dict[str, Any]]:
    source = {"site": "lab1", "node": "pi-01", "device": "labjack", "kind": "labjack"}
    return [
        *examples("valid"),
        {
            "schema": "soclab.data/1",
            "source": source,
            "samples": [{"seq": 0, "t_ns": T0, "values": {"a": 1}}],
        },
        {
            "schema": "soclab.data/1",
            "source": {**source, "kind": "mppt"},
            "samples": [
                {
                    "seq": i,
                    "t_ns": T0 + i,
                    "values": {"bat_v": 12.5, "load_en": True},
                    "flags": ["skipped:ain1"],
                }
                for i in range(5)
            ],
        },
        {
            "schema": "soclab.data/1",
            "source": source,
            "samples": [{"seq": 9, "t_ns": T0, "values": {}, "flags": ["skipped:ain0", "skipped:ain1"]}],
        },
    ]


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, (*prefix, index))


def mutations(message: dict[str, Any], rng: random.Random) -> Iterator[dict[str, Any]]:
    """Every place set to every odd value, deleted, or given an extra key."""
    for path in list(paths(message)):
        if not path:
            continue
        for value in ODD_VALUES:
            m = copy.deepcopy(message)
            parent = m
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = copy.deepcopy(value)
            yield m
        m = copy.deepcopy(message)
        parent = m
        for part in path[:-1]:
            parent = parent[part]
        del parent[path[-1]]
        yield m
        m = copy.deepcopy(message)
        target = m
        for part in path:
            target = target[part]
        if isinstance(target, dict):
            target[rng.choice(["extra", "Bad", "seq", "flags", "x" * 65])] = rng.choice(ODD_VALUES)
            yield m


JSONSCHEMA = Draft202012Validator(schema_document(DATA_SCHEMA))


def jsonschema_says(message: Any) -> bool:
    return JSONSCHEMA.is_valid(message)


def has_trailing_newline(node: Any) -> bool:
    if isinstance(node, str):
        return node.endswith("\n")
    if isinstance(node, dict):
        return any(has_trailing_newline(k) or has_trailing_newline(v) for k, v in node.items())
    if isinstance(node, list):
        return any(has_trailing_newline(v) for v in node)
    return False


def quick(message: Any) -> bool:
    return is_valid_fast(message, DATA_SCHEMA)


def test_the_schemas_examples_are_judged_as_jsonschema_judges_them() -> None:
    assert all(quick(m) for m in examples("valid"))
    assert not any(quick(m) for m in examples("invalid"))


def test_the_fast_validator_agrees_with_jsonschema_on_valid_and_mutated_messages() -> None:
    rng = random.Random(1)
    checked = quirks = 0
    for message in valid_messages():
        assert quick(message)
        for mutated in mutations(message, rng):
            verdict = jsonschema_says(mutated)
            checked += 1
            if quick(mutated) != verdict:
                assert verdict, f"fast validator accepted what jsonschema refuses: {mutated}"
                assert has_trailing_newline(mutated), f"validators disagree on {mutated}"
                quirks += 1
            with contextlib.suppress(InvalidMessage):
                assert validate(mutated) is mutated
                assert quick(mutated)
    assert checked > 1000
    assert 0 < quirks < checked / 20


# --- the typed decoder (soclab.wire.typed), which the bridge uses for data messages -----------


def typed_says(payload: bytes) -> bool:
    try:
        decode_data(payload)
    except NotFast:
        return False
    return True


def reference_says(payload: bytes) -> bool:
    """The verdict of the reference path (``decode``: the fast validator, held to jsonschema above)."""
    try:
        message = json.loads(payload, parse_constant=lambda name: float("nan"))
    except ValueError:
        return False
    return not has_nan(message) and quick(message)


def has_nan(node: Any) -> bool:
    if isinstance(node, float):
        return node != node
    if isinstance(node, dict):
        return any(has_nan(v) for v in node.values())
    return isinstance(node, list) and any(has_nan(v) for v in node)


def test_the_typed_decoder_never_accepts_what_the_schema_refuses_and_its_strictness_is_covered() -> None:
    """Its verdict on valid and mutated messages: the reference's, or stricter in known ways that
    the reference path then handles (an integer written as 1.0, a number beyond a double)."""
    rng = random.Random(2)
    checked = stricter = 0
    for message in valid_messages():
        for mutated in [message, *mutations(message, rng)]:
            payload = json.dumps(mutated).encode()
            typed, reference = typed_says(payload), reference_says(payload)
            checked += 1
            if typed:
                assert reference, f"the typed decoder accepted what the schema refuses: {mutated}"
                expected = json.loads(payload)
                got = msgspec.to_builtins(decode_data(payload))
                for sample in expected["samples"]:
                    sample["values"] = {
                        k: v if isinstance(v, bool) else float(v) for k, v in sample["values"].items()
                    }
                    sample.setdefault("flags", [])
                assert got == expected
            elif reference:
                stricter += 1
                assert from_valid(json.loads(payload)) is not None, (
                    f"the reference path cannot carry {mutated}"
                )
    assert checked > 1000
    assert stricter < checked / 50


@pytest.mark.parametrize(
    "payload",
    [
        json.dumps(valid_messages()[-1]).encode("utf-16"),
        b"\xef\xbb\xbf" + json.dumps(valid_messages()[-1]).encode(),
        json.dumps(valid_messages()[-1]).encode("utf-32"),
    ],
)
def test_only_utf8_without_a_byte_order_mark_is_json_here(payload: bytes) -> None:
    assert not typed_says(payload)
    with pytest.raises(InvalidMessage, match=r"^not JSON: "):
        decode(payload, DATA_SCHEMA)


def test_a_reason_keeps_what_was_wrong_after_a_long_value() -> None:
    message = valid_messages()[-1]
    message["samples"][0]["flags"] = ["x" * 700_000]
    with pytest.raises(InvalidMessage) as refused:
        validate(message)
    assert refused.value.reason.startswith("soclab.data/1 invalid at samples/0/flags/0: 'xxxxx")
    assert refused.value.reason.endswith("does not match '^[a-z][a-z0-9_:.-]{0,63}$'")
    assert len(refused.value.reason) < 400


def test_the_reason_for_a_bad_last_sample_is_found_without_walking_the_whole_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = valid_messages()[-2]
    message["samples"] = [{**message["samples"][0], "seq": i, "t_ns": T0 + i} for i in range(20_000)]
    message["samples"][-1]["seq"] = -1
    judged: list[int] = []
    reference = messages._validator(DATA_SCHEMA)

    class Counting:
        def iter_errors(self, m: dict[str, Any]) -> Any:
            judged.append(len(m["samples"]))
            return reference.iter_errors(m)

    monkeypatch.setattr(messages, "_validator", lambda name: Counting())
    with pytest.raises(InvalidMessage) as refused:
        validate(message)
    assert (
        refused.value.reason == "soclab.data/1 invalid at samples/19999/seq: -1 is less than the minimum of 0"
    )
    assert judged == [1]  # the reference judged one sample, not 20,000


def test_an_integer_beyond_what_python_reads_is_an_invalid_message_not_a_crash() -> None:
    payload = b'{"schema": "soclab.stored/1", "consumer": "x", "t_ns": ' + b"9" * 5000 + b"}"
    with pytest.raises(InvalidMessage, match="not JSON this side can read"):
        decode(payload)


def test_values_and_flags_per_sample_are_bounded() -> None:
    message = valid_messages()[-2]
    message["samples"][0]["values"] = {f"v{i}": 1.0 for i in range(2000)}
    assert not reference_says(json.dumps(message).encode())
    assert not typed_says(json.dumps(message).encode())
    message = valid_messages()[-2]
    message["samples"][0]["flags"] = [f"f{i}" for i in range(1000)]
    assert not reference_says(json.dumps(message).encode())
    assert not typed_says(json.dumps(message).encode())
