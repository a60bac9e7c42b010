"""A fast yes-check compiled from a JSON Schema document, in front of the full validator.

Why: the reference validator (jsonschema, behind ``soclab.wire.decode``) spends about 60 µs per
sample of a data message, which caps the bridge near 8k samples/s of CPU on the lab server, under
the 10k+ points/s it must sustain. This module compiles the *same* schema document (the file in
``soclab/wire/schema/``; nothing is restated here) once into plain Python closures that run in a
few µs per sample.

The check is only trusted to say *yes*. When it says no, the bridge calls
``soclab.wire.decode``, whose verdict and reason are authoritative. So anything this compiler
handles conservatively costs speed, never correctness, as long as a yes is never wrong;
tests/cloud/test_schemacheck.py compares it with jsonschema on valid and mutated messages.

Only the keywords soclab's schemas use are compiled (types, ``properties``, ``required``,
``additionalProperties``, ``propertyNames``, ``min/maxProperties``, ``items``,
``min/maxItems``, ``uniqueItems``, ``const``/``enum`` of strings, ``pattern``,
``min/maxLength``, ``minimum``/``maximum`` and their exclusive forms, local ``$ref``, ``allOf``,
``anyOf``). Any other keyword raises ``Unsupported`` at compile time, and the caller falls back to
jsonschema alone (and logs it). ``oneOf`` and ``not`` are left out on purpose: a conservative no
inside them could turn into a wrong yes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "$defs", "title", "description", "examples", "default", "format"}
    | {"deprecated", "readOnly", "writeOnly"}
)
_OBJECT = frozenset(
    {"properties", "required", "additionalProperties", "propertyNames", "minProperties", "maxProperties"}
)
_ARRAY = frozenset({"items", "minItems", "maxItems", "uniqueItems"})
_STRING = frozenset({"pattern", "minLength", "maxLength"})
_NUMBER = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
_KNOWN = (
    _ANNOTATIONS | _OBJECT | _ARRAY | _STRING | _NUMBER | {"type", "const", "enum", "$ref", "allOf", "anyOf"}
)

# jsonschema's type semantics (Draft 2020-12): bool is not a number; 1.0 is an integer.
_TYPES: dict[str, Check] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "number": lambda x: isinstance(x, int | float) and not isinstance(x, bool),
    "integer": lambda x: (
        (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, float) and x.is_integer())
    ),
}


class Unsupported(ValueError):
    """The schema uses something this compiler does not handle; use the full validator."""


def compile_schema(root: dict[str, Any]) -> Check:
    """A function that returns True only for instances valid against ``root``."""
    return _Compiler(root).compile(root, is_root=True)


class _Compiler:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.refs: dict[str, Check] = {}

    def compile(self, schema: Any, is_root: bool = False) -> Check:
        if schema is True:
            return _always
        if schema is False:
            return _never
        if not isinstance(schema, dict):
            raise Unsupported(f"schema {schema!r} is not an object or boolean")
        unknown = set(schema) - _KNOWN
        if unknown:
            raise Unsupported(f"keyword(s) {sorted(unknown)}")
        if "$id" in schema and not is_root:
            raise Unsupported("$id below the root changes the base URI")
        checks: list[Check] = []
        if "type" in schema:
            checks.append(self._type(schema["type"]))
        if "const" in schema:
            checks.append(self._enum([schema["const"]]))
        if "enum" in schema:
            checks.append(self._enum(schema["enum"]))
        if "$ref" in schema:
            checks.append(self._ref(schema["$ref"]))
        if "allOf" in schema:
            checks.extend(self.compile(sub) for sub in self._subschemas(schema["allOf"]))
        if "anyOf" in schema:
            checks.append(_any([self.compile(sub) for sub in self._subschemas(schema["anyOf"])]))
        if _OBJECT & set(schema):
            checks.append(self._object(schema))
        if _ARRAY & set(schema):
            checks.append(self._array(schema))
        if _STRING & set(schema):
            checks.append(self._string(schema))
        if _NUMBER & set(schema):
            checks.append(self._number(schema))
        return _all(checks)

    @staticmethod
    def _subschemas(value: Any) -> list[Any]:
        if not isinstance(value, list) or not value:
            raise Unsupported("allOf/anyOf that is not a non-empty list")
        return value

    def _type(self, names: Any) -> Check:
        names = [names] if isinstance(names, str) else names
        try:
            tests = [_TYPES[n] for n in names]
        except (KeyError, TypeError):
            raise Unsupported(f"type {names!r}") from None
        if len(tests) == 1:
            return tests[0]
        return lambda x: any(t(x) for t in tests)

    def _enum(self, values: Any) -> Check:
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise Unsupported("const/enum of other than strings")
        allowed = frozenset(values)
        return lambda x: isinstance(x, str) and x in allowed

    def _ref(self, ref: Any) -> Check:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise Unsupported(f"$ref {ref!r} is not local")
        if ref not in self.refs:
            slot: list[Check] = []
            self.refs[ref] = lambda x: slot[0](x)  # resolved below; allows recursive schemas
            slot.append(self.compile(self._resolve(ref)))
        return self.refs[ref]

    def _resolve(self, ref: str) -> Any:
        node: Any = self.root
        pointer = unquote(ref[1:])
        if pointer and not pointer.startswith("/"):
            raise Unsupported(f"$ref {ref!r} is an anchor, not a JSON pointer")
        for part in pointer.split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise Unsupported(f"$ref {ref!r} does not resolve") from None
        return node

    def _object(self, schema: dict[str, Any]) -> Check:
        properties = {name: self.compile(sub) for name, sub in schema.get("properties", {}).items()}
        required = tuple(schema.get("required", ()))
        additional = schema.get("additionalProperties", True)
        extra = None if additional is True else self.compile(additional)
        names = self.compile(schema["propertyNames"]) if "propertyNames" in schema else None
        low = schema.get("minProperties", 0)
        high = schema.get("maxProperties")

        def check(x: Any) -> bool:
            if not isinstance(x, dict):
                return True
            if len(x) < low or (high is not None and len(x) > high):
                return False
            for name in required:
                if name not in x:
                    return False
            for name, value in x.items():
                sub = properties.get(name)
                if sub is not None:
                    if not sub(value):
                        return False
                elif extra is not None and not extra(value):
                    return False
                if names is not None and not names(name):
                    return False
            return True

        return check

    def _array(self, schema: dict[str, Any]) -> Check:
        items = self.compile(schema["items"]) if "items" in schema else None
        low = schema.get("minItems", 0)
        high = schema.get("maxItems")
        unique = schema.get("uniqueItems", False)

        def check(x: Any) -> bool:
            if not isinstance(x, list):
                return True
            if len(x) < low or (high is not None and len(x) > high):
                return False
            if items is not None:
                for item in x:
                    if not items(item):
                        return False
            # Uniqueness is decided here only for strings; otherwise say no and let jsonschema judge.
            return not unique or (all(isinstance(i, str) for i in x) and len(set(x)) == len(x))

        return check

    def _string(self, schema: dict[str, Any]) -> Check:
        pattern = re.compile(schema["pattern"]).search if "pattern" in schema else None
        low = schema.get("minLength", 0)
        high = schema.get("maxLength")

        def check(x: Any) -> bool:
            if not isinstance(x, str):
                return True
            if len(x) < low or (high is not None and len(x) > high):
                return False
            return pattern is None or pattern(x) is not None

        return check

    def _number(self, schema: dict[str, Any]) -> Check:
        bounds = [schema.get(k) for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")]
        if not all(b is None or (isinstance(b, int | float) and not isinstance(b, bool)) for b in bounds):
            raise Unsupported("a numeric bound that is not a number")
        low, high, xlow, xhigh = bounds

        def check(x: Any) -> bool:
            if not isinstance(x, int | float) or isinstance(x, bool):
                return True
            return not (
                (low is not None and x < low)
                or (high is not None and x > high)
                or (xlow is not None and x <= xlow)
                or (xhigh is not None and x >= xhigh)
            )

        return check


def _always(x: Any) -> bool:
    return True


def _never(x: Any) -> bool:
    return False


def _any(checks: list[Check]) -> Check:
    def check(x: Any) -> bool:
        for c in checks:  # noqa: SIM110 - as in _all
            if c(x):
                return True
        return False

    return check


def _all(checks: list[Check]) -> Check:
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]

    def check(x: Any) -> bool:
        for c in checks:  # noqa: SIM110 - faster than all() over a generator, and this is the hot path
            if not c(x):
                return False
        return True

    return check
