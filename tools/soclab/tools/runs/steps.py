"""PyBaMM's experiment strings, parsed as PyBaMM parses them, into run-document steps.

The grammar is PyBaMM's (``pybamm.step.string``, version 26.10): an instruction ``Discharge at
<x>``, ``Charge at <x>``, ``Hold at <x> V`` or ``Rest``, then ``for <duration>``, ``until
<condition>``, or ``for <duration> or until <condition>``. Values carry their unit: ``A``, ``W``,
``V`` (with ``m`` for milli: ``500 mA``), or a C-rate (``C/2``, ``1 C``, which needs the
battery's capacity); durations ``s``/``sec``/``second(s)``, ``m``/``min``/``minute(s)``,
``h``/``hr``/``hour(s)``. ``tests/data/pybamm-experiment/steps.json`` records what PyBaMM's own
parser makes of a list of strings; the tests hold this parser to it.

Why not import PyBaMM: for these forty lines of grammar it installs 788 MB (scipy, sympy,
casadi, pandas, xarray, a telemetry client; measured with 26.10.1.1) and takes 3 to 4 s and
200 MB to import. The language is PyBaMM's; the dependency is not worth it.

What a lab's instruments can do is narrower than what a model can simulate, so some strings that
PyBaMM accepts are refused here, each with its reason (``StepError``), before anything is
switched on: charging at a power (the charge controller regulates current and voltage only),
resistance steps, ``Hold`` at a current, ``Rest until`` (which way would the voltage go?),
temperatures and periods (simulation settings).
"""

from __future__ import annotations

import re
from typing import Any

_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_TIME_UNITS = {
    **dict.fromkeys(("second", "seconds", "s", "sec"), 1.0),
    **dict.fromkeys(("minute", "minutes", "m", "min"), 60.0),
    **dict.fromkeys(("hour", "hours", "h", "hr"), 3600.0),
}
_ELECTRIC_UNITS = {"A": "current", "V": "voltage", "W": "power", "Ohm": "resistance", "C": "C-rate"}
EXAMPLES = (
    "Discharge at 3 A until 11.8 V",
    "Rest for 30 minutes",
    "Charge at 4 A until 14.4 V",
    "Hold at 14.4 V until 0.5 A",
    "Charge at 4 A for 2 hours or until 14.4 V",
)


class StepError(ValueError):
    """A step string this lab cannot run; the message says why and shows what works."""

    def __init__(self, text: str, why: str) -> None:
        super().__init__(f"{text!r}: {why}")
        self.text = text
        self.why = why


def parse_step(text: str, *, capacity_ah: float | None = None) -> dict[str, Any]:
    """One experiment string as a run-document step (``run.v1.json#/$defs/step``)."""
    if not isinstance(text, str) or not text.strip():
        raise StepError(str(text), "a step is a non-empty string")
    if "oC" in text or re.search(r"\d\s*K\b", text):
        raise StepError(text, "temperatures are not set by a step here (the lab has no climate chamber)")
    if "period)" in text:
        raise StepError(
            text, "'(... period)' sets a simulation's output period; the instruments sample at their own rate"
        )
    body, until = text, None
    if " until " in body:
        body, until = body.split(" until ", 1)
        body = body.replace(" or", "")
    duration: str | None = None
    if " for " in body:
        body, duration = body.split(" for ", 1)
    if until is None and duration is None:
        raise StepError(text, f"a step needs 'for <duration>' or 'until <condition>', e.g. {EXAMPLES[1]!r}")
    step: dict[str, Any] = {"description": text}
    if body.strip() == "Rest":
        step["action"] = "rest"
    else:
        instruction, sep, value_text = body.partition(" at ")
        if not sep:
            raise StepError(
                text, f"write '<Discharge|Charge|Hold> at <value>' or 'Rest', e.g. {EXAMPLES[0]!r}"
            )
        kind, value = _electric(text, value_text.strip(), capacity_ah)
        _instruction(text, instruction.strip(), kind, value, step)
    if duration is not None:
        step["duration_s"] = parse_duration(text, duration.strip())
    if until is not None:
        step["until"] = [_condition(text, until.strip(), step["action"], capacity_ah)]
    if step["action"] == "rest" and "until" in step:
        raise StepError(text, "'Rest until' is ambiguous on a battery (rising or falling?): rest for a time")
    return step


def _instruction(text: str, instruction: str, kind: str, value: float, step: dict[str, Any]) -> None:
    if instruction == "Discharge":
        step["action"] = "discharge"
        if kind == "current":
            step["current_a"] = value
        elif kind == "power":
            step["power_w"] = value
        else:
            raise StepError(text, f"a discharge is at a current (A, C-rate) or a power (W), not a {kind}")
    elif instruction == "Charge":
        step["action"] = "charge"
        if kind != "current":
            raise StepError(text, f"the charge controller charges at a current (A, C-rate), not at a {kind}")
        step["current_a"] = value
    elif instruction == "Rest":
        raise StepError(text, "'Rest' takes no value: 'Rest for 30 minutes'")
    elif instruction == "Hold":
        step["action"] = "hold"
        if kind != "voltage":
            raise StepError(text, "'Hold' holds a voltage ('Hold at 14.4 V until 0.5 A')")
        step["voltage_v"] = value
    else:
        raise StepError(text, f"the instruction must be Discharge, Charge, Hold or Rest, not {instruction!r}")
    if not value > 0:
        raise StepError(text, "the value must be greater than 0")


def _electric(text: str, value_text: str, capacity_ah: float | None) -> tuple[str, float]:
    """``(kind, value)`` in A, V, W or ohm; a C-rate becomes amperes through ``capacity_ah``."""
    if value_text.startswith("C"):
        match = re.fullmatch(rf"C/\s*({_NUMBER})", value_text)
        if not match:
            raise StepError(text, f"a C-rate is written 'C/2' or '0.5 C', not {value_text!r}")
        return "current", _from_c_rate(text, 1.0 / float(match[1]), capacity_ah)
    match = re.fullmatch(rf"({_NUMBER})\s*([A-Za-z]+)", value_text)
    if not match:
        raise StepError(text, f"a value is a number and a unit (A, V, W, C), not {value_text!r}")
    number, unit = float(match[1]), match[2]
    if unit.startswith("m") and unit[1:] in _ELECTRIC_UNITS:
        number, unit = number / 1000.0, unit[1:]
    kind = _ELECTRIC_UNITS.get(unit)
    if kind is None:
        raise StepError(text, f"units are A, V, W or C (C-rate), with m for milli; not {unit!r}")
    if kind == "C-rate":
        return "current", _from_c_rate(text, number, capacity_ah)
    if kind == "resistance":
        raise StepError(text, "resistance steps are not supported (the load runs at a current or a power)")
    return kind, number


def _from_c_rate(text: str, rate: float, capacity_ah: float | None) -> float:
    if capacity_ah is None:
        raise StepError(text, "a C-rate needs the battery's capacity: set capacity_ah in the run file")
    return rate * capacity_ah


def parse_duration(text: str, duration: str) -> float:
    match = re.fullmatch(rf"({_NUMBER})\s*([a-z]+)", duration)
    if not match or match[2] not in _TIME_UNITS:
        raise StepError(text, f"a duration is a number of seconds, minutes or hours, not {duration!r}")
    seconds = float(match[1]) * _TIME_UNITS[match[2]]
    if not seconds > 0:
        raise StepError(text, "a duration must be greater than 0")
    return seconds


def _condition(text: str, until: str, action: str, capacity_ah: float | None) -> dict[str, Any]:
    """PyBaMM's termination: a voltage ends a discharge when reached from above, a charge or a
    hold from below; a current (a C-rate) ends a step when its magnitude falls to it."""
    if until[:1] in "<>":
        raise StepError(text, "write the end condition without an operator ('until 11.8 V')")
    kind, value = _electric(text, until, capacity_ah)
    if kind == "voltage":
        return {"quantity": "voltage", "op": "<=" if action == "discharge" else ">=", "value": value}
    if kind == "current":
        if action == "discharge":
            raise StepError(
                text, "a discharge at a current cannot end at a current: end it at a voltage or a time"
            )
        return {"quantity": "current", "op": "<=", "value": value}
    raise StepError(text, f"a step ends at a voltage (V) or a current (A, C-rate), not at a {kind}")
