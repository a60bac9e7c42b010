"""Settings of every soclab process: a TOML file, then environment variables over it.

A section is a dataclass; ``[section] key`` in the file, overridden by ``<PREFIX><SECTION>_<KEY>``
in the environment (``SOCLAB_MQTT_HOST`` for a publisher, ``SOCLAB_BRIDGE_MQTT_HOST`` for the
bridge). Unknown sections and keys, and values of the wrong type, are errors that name the setting.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any


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


def section(
    name: str,
    cls: type,
    table: Any,
    env: dict[str, str],
    prefix: str,
    *,
    refused: dict[str, str] | None = None,
) -> Any:
    """``cls`` built from ``[name]`` with the environment over it.

    ``refused`` maps keys that must not come from the file nor be read here (secrets, which the
    caller reads) to the message that says where they come from instead.
    """
    refused = refused or {}
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: _kind(f.type) for f in fields(cls)}
    for key in table:
        if key in refused:
            raise ConfigError(f"[{name}] {key}: {refused[key]}")
        if key not in known:
            raise ConfigError(f"[{name}] has no setting {key!r}; known: {', '.join(known)}")
    values = dict(table)
    for key, kind in known.items():
        variable = f"{prefix}{name.upper()}_{key.upper()}"
        if variable in env and key not in refused:
            values[key] = parse(env[variable], kind, variable)
    for key, value in values.items():
        check_type(f"[{name}] {key}", value, known[key])
    return cls(**values)


def parse(text: str, kind: type, where: str) -> Any:
    """An environment variable's text as ``kind``."""
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}={text!r} is not a boolean (true/false)")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{where}={text!r} is not a valid {kind.__name__}") from None


def check_type(where: str, value: Any, kind: type) -> None:
    accepted: tuple[type, ...] = (int, float) if kind is float else (kind,)
    if not isinstance(value, accepted) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")


def _kind(annotation: Any) -> type:
    """The type of a dataclass field, whose annotation is a string under postponed evaluation."""
    return {"int": int, "float": float, "bool": bool, "str": str}[str(annotation)]
