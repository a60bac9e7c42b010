"""The fast validator (fastjsonschema), whose verdict ``soclab.wire.validate`` follows, judges as
the reference (jsonschema) does, but for jsonschema's Python-regex quirk: a pattern's ``$``
matching before a trailing newline."""

from __future__ import annotations

import contextlib
import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from soclab.wire import DATA_SCHEMA, InvalidMessage, validate
from soclab.wire.messages import is_valid_fast, schema_document

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
