"""The run schemas (commands, results, run documents, run status, the run journal): the fast
validator judges every mutation of their valid examples as the reference does, and the
cross-file references between them resolve."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from soclab.wire import messages
from soclab.wire.messages import is_valid_fast, schema_document

sys.path.insert(0, str(Path(__file__).parents[1] / "schemas"))
from test_fast_validation import has_trailing_newline, mutations

EXAMPLES = Path(__file__).parents[2] / "schemas" / "examples"
RUN_SCHEMAS = {
    "cmd": messages.CMD_SCHEMA,
    "cmd-result": messages.CMD_RESULT_SCHEMA,
    "run": messages.RUN_SCHEMA,
    "run-status": messages.RUN_STATUS_SCHEMA,
    "journal": messages.JOURNAL_SCHEMA,
}


def reference(name: str) -> Draft202012Validator:
    docs = [schema_document(n) for n in messages._FILES]
    registry = Registry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs)
    return Draft202012Validator(schema_document(name), registry=registry)


def examples(kind: str, prefix: str) -> list[dict[str, Any]]:
    found = []
    folder = EXAMPLES / kind
    for path in sorted(folder.glob(f"{prefix}-*.json")) + sorted(folder.glob(f"{prefix}.json")):
        message = json.loads(path.read_text(encoding="utf-8"))
        if message["schema"] == RUN_SCHEMAS[prefix]:
            found.append(message)
    return found


@pytest.mark.parametrize("prefix", sorted(RUN_SCHEMAS))
def test_each_run_schema_has_valid_and_invalid_examples(prefix: str) -> None:
    assert examples("valid", prefix), f"no valid example of {prefix}"
    assert examples("invalid", prefix), f"no invalid example of {prefix}"


@pytest.mark.parametrize("prefix", sorted(RUN_SCHEMAS))
def test_the_fast_validator_agrees_with_jsonschema_on_mutated_run_messages(prefix: str) -> None:
    name = RUN_SCHEMAS[prefix]
    ref = reference(name)
    rng = random.Random(2)
    checked = 0
    for message in examples("valid", prefix):
        assert is_valid_fast(message, name)
        assert ref.is_valid(message)
        for mutated in mutations(message, rng):
            verdict = ref.is_valid(mutated)
            if is_valid_fast(mutated, name) != verdict:
                assert verdict, f"fast validator accepted what jsonschema refuses: {mutated}"
                assert has_trailing_newline(mutated), f"validators disagree on {mutated}"
            checked += 1
    assert checked > 100
