"""The run file: what a researcher writes, compiled to the run document the Pi executes.

A TOML file::

    name = "Two capacity cycles"
    capacity_ah = 9.0                 # optional: lets steps use C-rates ("Discharge at C/2 ...")

    [limits]                          # crossing one stops the run and makes everything safe
    min_v = 11.5                      # required
    max_v = 14.7                      # required
    max_a = 6.0                       # required: largest current, either direction
    max_degc = 45.0                   # optional, judged on the temperature channel
    max_duration = "12 hours"         # optional, PyBaMM's duration form

    [channels]                        # optional; these are the defaults
    voltage = "labjack.bat_v"         # <device>.<field>: end conditions and limits use these,
    current = "labjack.bat_a"         # falling back to the instruments' own readings
    temperature = "mppt.bat_degc"

    [instruments]                     # optional; these are the defaults
    load = "eload"
    charger = "mppt"

    [[cycle]]
    repeat = 2
    steps = [
        "Discharge at 3 A until 11.8 V",
        "Rest for 30 minutes",
        "Charge at 4 A until 14.4 V",
        "Hold at 14.4 V until 0.5 A",
    ]

Everything is checked here, before anything is sent: a step the lab cannot run, a step whose
value is beyond the limits, an end condition outside them (a discharge "until 10 V" below
min_v would never end before the limit stops the run) are errors that name the step.
"""

from __future__ import annotations

import re
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

from soclab.tools.runs.steps import StepError, parse_duration, parse_step
from soclab.wire import RUN_SCHEMA, InvalidMessage, validate

DEFAULT_CHANNELS = {"voltage": "labjack.bat_v", "current": "labjack.bat_a", "temperature": "mppt.bat_degc"}
DEFAULT_INSTRUMENTS = {"load": "eload", "charger": "mppt"}
_KEYS = {"name", "capacity_ah", "limits", "channels", "instruments", "cycle"}
_LIMIT_KEYS = {"min_v", "max_v", "max_a", "max_degc", "max_duration"}


class RunFileError(ValueError):
    """A run file that cannot be run; the message says where and why."""


def load(path: str | Path, *, run_id: str | None = None) -> dict[str, Any]:
    """The run document of the file at ``path`` (valid ``soclab.run/1``), or RunFileError."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RunFileError(f"{path}: {exc}") from None
    return compile_run(raw, run_id=run_id, where=str(path))


def compile_run(raw: dict[str, Any], *, run_id: str | None = None, where: str = "run file") -> dict[str, Any]:
    unknown = set(raw) - _KEYS
    if unknown:
        raise RunFileError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    capacity = raw.get("capacity_ah")
    if capacity is not None and not (isinstance(capacity, int | float) and capacity > 0):
        raise RunFileError(f"{where}: capacity_ah must be a positive number")
    limits = _limits(raw.get("limits"), where)
    instruments = {**DEFAULT_INSTRUMENTS, **_table(raw, "instruments", where)}
    channels = _channels({**DEFAULT_CHANNELS, **_table(raw, "channels", where)}, instruments, where)
    cycles = []
    for number, cycle in enumerate(raw.get("cycle") or [], start=1):
        if not isinstance(cycle, dict) or set(cycle) - {"repeat", "steps"} or "steps" not in cycle:
            raise RunFileError(f"{where}: [[cycle]] {number} needs steps = [...] and optionally repeat = N")
        repeat = cycle.get("repeat", 1)
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise RunFileError(f"{where}: [[cycle]] {number}: repeat must be a whole number >= 1")
        steps = []
        for index, text in enumerate(cycle["steps"], start=1):
            try:
                step = parse_step(text, capacity_ah=capacity)
            except StepError as exc:
                raise RunFileError(f"{where}: cycle {number}, step {index}: {exc}") from None
            _check_against_limits(step, limits, f"{where}: cycle {number}, step {index} ({text!r})")
            steps.append(step)
        if not steps:
            raise RunFileError(f"{where}: [[cycle]] {number} has no steps")
        cycles.append({"repeat": repeat, "steps": steps})
    if not cycles:
        raise RunFileError(f"{where}: no [[cycle]] with steps")
    document = {
        "schema": RUN_SCHEMA,
        "id": run_id or time.strftime("r-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:6],
        "name": str(raw.get("name", "")) or "run",
        "created_ns": time.time_ns(),
        "cycles": cycles,
        "limits": limits,
        "channels": channels,
        "instruments": instruments,
    }
    try:
        return validate(document, RUN_SCHEMA)
    except InvalidMessage as exc:
        raise RunFileError(f"{where}: {exc.reason}") from None


def _table(raw: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise RunFileError(f"{where}: [{name}] must be a table")
    return table


def _limits(table: Any, where: str) -> dict[str, float]:
    if not isinstance(table, dict):
        raise RunFileError(f"{where}: [limits] with min_v, max_v and max_a is required")
    unknown = set(table) - _LIMIT_KEYS
    if unknown:
        raise RunFileError(
            f"{where}: [limits] has unknown keys {sorted(unknown)}; known: {sorted(_LIMIT_KEYS)}"
        )
    limits: dict[str, float] = {}
    for key in ("min_v", "max_v", "max_a", "max_degc"):
        if key in table:
            value = table[key]
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise RunFileError(f"{where}: [limits] {key} must be a number")
            limits[key] = float(value)
    missing = [k for k in ("min_v", "max_v", "max_a") if k not in limits]
    if missing:
        raise RunFileError(f"{where}: [limits] needs {', '.join(missing)}: a run without them is not started")
    if "max_duration" in table:
        try:
            limits["max_duration_s"] = parse_duration("max_duration", str(table["max_duration"]))
        except StepError as exc:
            raise RunFileError(f"{where}: [limits] max_duration: {exc.why}") from None
    if not 0 < limits["min_v"] < limits["max_v"]:
        raise RunFileError(f"{where}: [limits] needs 0 < min_v < max_v")
    return limits


def _channels(table: dict[str, Any], instruments: dict[str, str], where: str) -> dict[str, Any]:
    fallbacks = {
        "voltage": [(instruments["load"], "bat_v"), (instruments["charger"], "bat_v")],
        "current": [(instruments["charger"], "bat_a"), (instruments["load"], "bat_a")],
        "temperature": [],
    }
    channels: dict[str, Any] = {}
    for quantity, spec in table.items():
        if quantity not in fallbacks:
            raise RunFileError(f"{where}: [channels] {quantity}: known quantities are {', '.join(fallbacks)}")
        match = re.fullmatch(r"([a-z0-9][a-z0-9_-]*)\.([a-z][a-z0-9_]*)", str(spec))
        if not match:
            raise RunFileError(f"{where}: [channels] {quantity} = {spec!r}: write <device>.<field>")
        device, field = match[1], match[2]
        channel: dict[str, Any] = {"device": device, "field": field}
        others = [{"device": d, "field": f} for d, f in fallbacks[quantity] if (d, f) != (device, field)]
        if others:
            channel["fallback"] = others
        channels[quantity] = channel
    return channels


def _check_against_limits(step: dict[str, Any], limits: dict[str, float], where: str) -> None:
    current = step.get("current_a")
    if current is not None and current > limits["max_a"]:
        raise RunFileError(f"{where}: {current:g} A is above the limit max_a = {limits['max_a']:g} A")
    volts = step.get("voltage_v")
    if volts is not None and not limits["min_v"] < volts < limits["max_v"]:
        raise RunFileError(
            f"{where}: {volts:g} V is outside the limits {limits['min_v']:g}..{limits['max_v']:g} V"
        )
    for condition in step.get("until", []):
        if condition["quantity"] == "voltage" and not limits["min_v"] < condition["value"] < limits["max_v"]:
            raise RunFileError(
                f"{where}: it ends at {condition['value']:g} V, outside the limits "
                f"{limits['min_v']:g}..{limits['max_v']:g} V: the limit would stop the run first"
            )
