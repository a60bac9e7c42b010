"""The step language: PyBaMM's experiment strings, parsed as PyBaMM 26.10 parses them (its own
parser's answers are recorded in tests/data/pybamm-experiment/steps.json), and the run file
compiled to a valid run document, with a clear error before anything is sent for what the lab
cannot run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from soclab.tools.runs import runfile
from soclab.tools.runs.runfile import RunFileError, compile_run
from soclab.tools.runs.steps import StepError, parse_step
from soclab.wire import RUN_SCHEMA, validate

PYBAMM = json.loads((Path(__file__).parents[1] / "data/pybamm-experiment/steps.json").read_text())
EXAMPLE = Path(runfile.__file__).parent / "examples" / "two-cycles.toml"
# Strings PyBaMM accepts that this lab refuses, and the words of the reason.
REFUSED_HERE = {
    "Discharge at 5 Ohm for 10 minutes": "resistance",
    "Discharge at 3 A until 11.8 V (1 minute period)": "period",
    "Hold at 3 A until 14.4 V": "holds a voltage",
    "Rest until 12.6 V": "ambiguous",
}
CAPACITY_AH = 9.0


def expected_from_pybamm(entry: dict[str, Any]) -> dict[str, Any]:
    """What PyBaMM's step becomes in a run document (PyBaMM: current > 0 discharges)."""
    cls, value = entry["class"], entry["value"]
    if cls == "Rest":
        step: dict[str, Any] = {"action": "rest"}
    elif cls in ("Current", "CRate"):
        amps = abs(value) * (CAPACITY_AH if cls == "CRate" else 1.0)
        step = {"action": "discharge" if value > 0 else "charge", "current_a": amps}
    elif cls == "Power":
        step = {"action": "discharge", "power_w": value}
    elif cls == "Voltage":
        step = {"action": "hold", "voltage_v": value}
    else:
        raise AssertionError(cls)
    if entry["duration_s"] is not None:
        step["duration_s"] = entry["duration_s"]
    until = []
    for term in entry["termination"]:
        if term["class"] == "VoltageTermination":
            op = "<=" if step["action"] == "discharge" else ">="
            until.append({"quantity": "voltage", "op": op, "value": term["value"]})
        else:
            amps = term["value"] * (CAPACITY_AH if term["class"] == "CRateTermination" else 1.0)
            until.append({"quantity": "current", "op": "<=", "value": amps})
    if until:
        step["until"] = until
    return step


@pytest.mark.parametrize("entry", PYBAMM["steps"], ids=lambda e: e["text"])
def test_each_string_is_read_as_pybamm_reads_it(entry: dict[str, Any]) -> None:
    text = entry["text"]
    if "error" in entry:
        with pytest.raises(StepError):
            parse_step(text, capacity_ah=CAPACITY_AH)
        return
    if text in REFUSED_HERE:
        with pytest.raises(StepError, match=REFUSED_HERE[text]):
            parse_step(text, capacity_ah=CAPACITY_AH)
        return
    step = parse_step(text, capacity_ah=CAPACITY_AH)
    want = expected_from_pybamm(entry)
    assert step.pop("description") == text
    assert step.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert math.isclose(step[key], value), key
        else:
            assert step[key] == value, key


def test_the_recorded_answers_come_from_pybamm_26_10() -> None:
    assert PYBAMM["pybamm"].startswith("26.10")
    assert len(PYBAMM["steps"]) >= 25


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Charge at 40 W for 1 hour", "charges at a current"),
        ("Discharge at C/2 until 11.8 V", "capacity_ah"),
        ("Charge at 4 A", "'for <duration>' or 'until <condition>'"),
        ("Discharge at 3 A until 1 A", "cannot end at a current"),
        ("Charge at 4 A until 14.4 V at 25oC", "temperatures"),
        ("Discharge at 0 A for 1 hour", "greater than 0"),
        ("Rest at 3 A for 1 hour", "takes no value"),
        ("Discharge at 3 A for 2 fortnights", "seconds, minutes or hours"),
    ],
)
def test_what_the_lab_cannot_run_is_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(StepError, match=why):
        parse_step(text)


def test_the_example_run_file_compiles_to_a_valid_run_document() -> None:
    document = runfile.load(EXAMPLE, run_id="r-example")
    assert validate(document, RUN_SCHEMA) is document
    assert document["id"] == "r-example"
    (cycle,) = document["cycles"]
    assert cycle["repeat"] == 2
    assert [s["action"] for s in cycle["steps"]] == ["discharge", "rest", "charge", "hold"]
    assert document["limits"] == {"min_v": 11.5, "max_v": 14.7, "max_a": 6.0, "max_degc": 45.0,
                                  "max_duration_s": 43200.0}  # fmt: skip
    voltage = document["channels"]["voltage"]
    assert (voltage["device"], voltage["field"]) == ("labjack", "bat_v")
    assert voltage["fallback"] == [
        {"device": "eload", "field": "bat_v"},
        {"device": "mppt", "field": "bat_v"},
    ]
    assert document["instruments"] == {"load": "eload", "charger": "mppt"}


def run_file(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "t",
        "limits": {"min_v": 11.5, "max_v": 14.7, "max_a": 6.0},
        "cycle": [{"steps": ["Discharge at 3 A until 11.8 V"]}],
    }
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"limits": {"max_v": 14.7, "max_a": 6.0}}, "needs min_v"),
        ({"limits": None}, r"\[limits\] with min_v"),
        ({"cycle": []}, "no \\[\\[cycle\\]\\]"),
        ({"cycle": [{"steps": ["Discharge at 8 A until 11.8 V"]}]}, "above the limit max_a"),
        ({"cycle": [{"steps": ["Discharge at 3 A until 11 V"]}]}, "the limit would stop the run first"),
        ({"cycle": [{"steps": ["Hold at 15 V until 0.5 A"]}]}, "outside the limits"),
        ({"cycle": [{"repeat": 0, "steps": ["Rest for 1 minute"]}]}, "repeat must be"),
        ({"channels": {"voltage": "labjack"}}, "<device>.<field>"),
        ({"colour": "blue"}, "unknown keys"),
        ({"cycle": [{"steps": ["Rest for 1 minute", "Charge at 4 W for 1 hour"]}]}, "cycle 1, step 2"),
    ],
)
def test_a_run_file_that_cannot_run_names_its_problem(changes: dict[str, Any], why: str) -> None:
    with pytest.raises(RunFileError, match=why):
        compile_run(run_file(**changes))
