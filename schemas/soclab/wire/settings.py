"""Settings of every soclab process: a TOML table, then environment variables over it, into one typed class.

A settings class (a dataclass or a ``msgspec.Struct``) declares its keys, their types, limits and
defaults once. ``load_section`` fills it from ``[section]`` in the file with ``<PREFIX><KEY>``
variables over it (``SOCLAB_MQTT_HOST``); ``__`` reaches into a sub-table
(``SOCLAB_INSTRUMENT_CHANNELS__BAT_A__AIN`` sets ``[instrument.channels.bat_a] ain``).

Environment values are text: they are converted here, once, to the type the class gives the key
(a list from comma-separated text, a boolean from true/false, yes/no, on/off or 1/0). Values from
the file must already have their type: ``port = "8883"`` is an error, as is any key or variable
the class does not know. msgspec converts and checks the limits; its errors are rewritten in one
style that names the setting and where it came from::

    [mqtt] port must be int, got '8883'
    SOCLAB_INSTRUMENT_POLL_HZ='0' must be float > 0.0
    [instrument.channels.bat_a] has no setting 'ohms'; known: ain, range_v, ...
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from msgspec import inspect as mi

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


class ConfigError(ValueError):
    """A setting that is missing, misspelt or of the wrong type; the message names it."""


def read_toml(path: str | Path | None) -> dict[str, Any]:
    """The file's tables, or {} without a file."""
    if path is None:
        return {}
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_section(
    cls: type[T],
    table: Any,
    *,
    where: str,
    env: Mapping[str, str] | None = None,
    prefix: str | None = None,
    refused: Mapping[str, str] | None = None,
    ignore_unknown_variables: bool = False,
) -> T:
    """``cls`` from the table ``[where]`` with the variables ``<prefix><KEY>`` of ``env`` over it.

    ``refused`` maps keys that must come neither from the file nor from a variable here (secrets,
    which the caller reads) to the message that says where they come from instead. A variable
    with the prefix that names no setting is an error (a typo would pass unseen), unless
    ``ignore_unknown_variables``: for processes that share their environment with others whose
    sections have more keys (an operator's command beside a publisher's ``SOCLAB_MQTT_*``).
    """
    refused = refused or {}
    if table is None:
        table = {}
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{where}] must be a table")
    for key in table:
        if key in refused:
            raise ConfigError(f"[{where}] {key}: {refused[key]}")
    info = mi.type_info(cls)
    merged: dict[str, Any] = _copy_tables(table)
    origins: dict[tuple[str, ...], str] = {}  # path -> the variable that set it
    if env and prefix:
        for variable in sorted(env):
            if not variable.startswith(prefix):
                continue
            path = tuple(part.lower() for part in variable[len(prefix) :].split("__"))
            if path[0] in refused:
                continue
            if not all(path):
                raise ConfigError(f"{variable}: an empty name between '__'")
            try:
                target = _type_at(info, path, where, variable)
            except ConfigError:
                if ignore_unknown_variables:
                    continue
                raise
            _put(merged, path, _from_text(env[variable], target, variable), variable, where)
            origins[path] = f"{variable}={env[variable]!r}"
    _check_known(info, merged, where)
    try:
        return msgspec.convert(merged, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(str(exc), info, where, merged, origins)) from None


def load_sections(
    raw: Mapping[str, Any],
    sections: Mapping[str, type],
    *,
    env: Mapping[str, str],
    prefix: str,
    refused: Callable[[str], Mapping[str, str] | None] = lambda name: None,
) -> dict[str, Any]:
    """Every ``[name]`` of ``sections`` (name -> class) from the file's tables ``raw``, with the
    variables ``<prefix><NAME>_<KEY>`` over each (``SOCLAB_MQTT_HOST``); ``refused(name)`` gives a
    section's ``refused`` keys. A variable naming no setting of its section is an error."""
    return {
        name: load_section(
            cls,
            raw.get(name, {}),
            where=name,
            env=env,
            prefix=f"{prefix}{name.upper()}_",
            refused=refused(name),
        )
        for name, cls in sections.items()
    }


def section(
    name: str,
    cls: type,
    table: Any,
    env: Mapping[str, str],
    prefix: str,
    *,
    refused: dict[str, str] | None = None,
) -> Any:
    """``[name]`` of a process whose variables start with ``prefix`` (``SOCLAB_``: ``SOCLAB_MQTT_HOST``),
    ignoring variables that name no setting of ``cls`` (as before ``load_section`` existed); untyped,
    for a table of sections of several classes (``load_section`` keeps the type)."""
    return load_section(
        cls,
        table,
        where=name,
        env=env,
        prefix=f"{prefix}{name.upper()}_",
        refused=refused,
        ignore_unknown_variables=True,
    )


def parse(text: str, kind: type, where: str) -> Any:
    """An environment variable's text as ``kind`` (int, float, bool or str)."""
    return _from_text(text, mi.type_info(kind), where)


def check_type(where: str, value: Any, kind: type) -> None:
    """Raise ConfigError unless a value from a file has type ``kind`` (an int passes for a float)."""
    try:
        msgspec.convert(value, kind, strict=True)
    except msgspec.ValidationError:
        raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}") from None


# --- environment text -------------------------------------------------------------------------------
def _from_text(text: str, target: mi.Type, variable: str) -> Any:
    """The variable's text converted to ``target`` (see the module doc)."""
    if isinstance(target, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        return [
            _from_text(item.strip(), target.item_type, variable) for item in text.split(",") if item.strip()
        ]
    if isinstance(target, mi.BoolType):
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{variable}={text!r} is not a boolean (true/false)")
    if isinstance(target, mi.IntType | mi.FloatType):
        kind = int if isinstance(target, mi.IntType) else float
        try:
            return msgspec.convert(text.strip(), kind, strict=False)
        except msgspec.ValidationError:
            raise ConfigError(f"{variable}={text!r} is not a valid {kind.__name__}") from None
    if isinstance(target, mi.LiteralType) and all(isinstance(v, int) for v in target.values):
        return _from_text(text, mi.IntType(), variable)
    if isinstance(target, mi.StrType | mi.LiteralType | mi.AnyType):
        return text
    raise ConfigError(f"{variable}: this setting is a table; set its keys with '__' (e.g. {variable}__KEY)")


def _type_at(info: mi.Type, path: tuple[str, ...], where: str, variable: str) -> mi.Type:
    """The type the settings class gives the value at ``path``."""
    current = info
    for depth, name in enumerate(path):
        current = _unwrap(current)
        if isinstance(current, mi.AnyType):
            return current
        if isinstance(current, mi.DictType):
            current = current.value_type
            continue
        fields = _fields(current)
        if fields is None:
            raise ConfigError(f"{variable}: [{where}] {'.'.join(path[:depth])} is not a table")
        if name not in fields:
            location = ".".join((where, *path[:depth]))
            raise ConfigError(f"{variable}: [{location}] has no setting {name!r}; known: {', '.join(fields)}")
        current = fields[name]
    return _unwrap(current)


def _unwrap(t: mi.Type) -> mi.Type:
    """``X | None`` is ``X`` for a value that is given."""
    if isinstance(t, mi.UnionType):
        given = [m for m in t.types if not isinstance(m, mi.NoneType)]
        if len(given) == 1:
            return given[0]
    return t


def _fields(t: mi.Type) -> dict[str, mi.Type] | None:
    if isinstance(t, mi.StructType | mi.DataclassType):
        return {f.encode_name: f.type for f in t.fields}
    return None


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any, variable: str, where: str) -> None:
    target = data
    for name in path[:-1]:
        target = target.setdefault(name, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{variable}: [{where}] {name} is not a table")
    target[path[-1]] = value


def _copy_tables(table: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy_tables(v) if isinstance(v, Mapping) else v for k, v in table.items()}


def _check_known(info: mi.Type, data: Any, where: str) -> None:
    """Every key of the table (and of its sub-tables) is a setting of the class."""
    info = _unwrap(info)
    if isinstance(info, mi.DictType) and isinstance(data, Mapping):
        for key, value in data.items():
            _check_known(info.value_type, value, f"{where}.{key}")
        return
    fields = _fields(info)
    if fields is None or not isinstance(data, Mapping):
        return
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"[{where}] has no setting {key!r}; known: {', '.join(fields)}")
        _check_known(fields[key], value, f"{where}.{key}")


# --- msgspec's errors in soclab's words -------------------------------------------------------------
def _describe(
    error: str, info: mi.Type, where: str, data: dict[str, Any], origins: dict[tuple[str, ...], str]
) -> str:
    m = _AT.match(error)
    message, path_text = (m.group("message"), m.group("path")) if m else (error, None)
    keys = _resolve(tuple(a or b for a, b in _PATH_PART.findall(path_text or "")), info, data)
    if missing := re.fullmatch(r"Object missing required field `(.+)`", message):
        return f"[{'.'.join((where, *keys))}] {missing.group(1)} is required"
    if not keys:
        return f"[{where}]: {message}"
    location = origins.get(keys) or _location(where, keys)
    if expected := re.fullmatch(r"Expected `([^`]+)`(.*?)(?:, got `[^`]+`)?", message):
        wanted = f"{expected.group(1)}{expected.group(2)}"
        if keys in origins:
            return f"{location} must be {wanted}"
        return f"{location} must be {wanted}, got {_value_at(data, keys)!r}"
    return f"{location}: {message}"


def _resolve(path: tuple[str, ...], info: mi.Type, data: Any) -> tuple[str, ...]:
    """The error's path with msgspec's ``[...]`` (some key of a table) replaced by the key: the
    entry that fails on its own."""
    keys: list[str] = []
    current = info
    for part in path:
        current = _unwrap(current)
        if part == "..." and isinstance(current, mi.DictType) and isinstance(data, Mapping):
            current = current.value_type
            target = getattr(_unwrap(current), "cls", None)
            failing = next(
                (k for k, v in data.items() if target is not None and not _converts(v, target)), "*"
            )
            keys.append(str(failing))
            data = data.get(failing)
            continue
        keys.append(part)
        fields = _fields(current)
        current = fields.get(part, mi.AnyType()) if fields else mi.AnyType()
        data = data.get(part) if isinstance(data, Mapping) else None
    return tuple(keys)


def _converts(value: Any, cls: type) -> bool:
    try:
        msgspec.convert(value, cls, strict=True)
    except msgspec.ValidationError:
        return False
    return True


def _location(where: str, keys: tuple[str, ...]) -> str:
    """``[where.sub] key``, or ``[where] key[2]`` for an item of a list."""
    index = ""
    if len(keys) > 1 and keys[-1].isdigit():
        keys, index = keys[:-1], f"[{keys[-1]}]"
    return f"[{'.'.join((where, *keys[:-1]))}] {keys[-1]}{index}"


def _value_at(data: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        try:
            data = data[int(key)] if isinstance(data, list) else data[key]
        except (KeyError, IndexError, ValueError, TypeError):
            return None
    return data
