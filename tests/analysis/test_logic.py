"""The analysis's pure logic on small made-up series: counting, steps, anchors, alignment, settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from soclab.tools.analysis import AnalysisError, BatterySettings, Dataset, Span, analyse
from soclab.tools.analysis.align import asof
from soclab.tools.analysis.counting import count, coverage, gaps
from soclab.tools.analysis.settings import AnalysisSettings, load_settings
from soclab.tools.analysis.steps import from_current, from_events
from soclab.wire.settings import ConfigError

S = 1_000_000_000  # ns


def seconds(*values: float) -> np.ndarray:
    return (np.asarray(values) * S).astype(np.int64)


def test_counting_splits_charge_and_discharge_at_the_zero_crossing() -> None:
    # 3600 s from +2 A to -1 A: a triangle of 2 A x 2400 s above zero, 1 A x 1200 s below
    counted = count(seconds(0, 3600), np.array([2.0, -1.0]))
    assert counted.positive[-1] == pytest.approx(2 * 2400 / 2 / 3600)
    assert counted.negative[-1] == pytest.approx(1 * 1200 / 2 / 3600)
    assert counted.net[-1] == pytest.approx((2 - 1) / 2)  # the plain trapezoid of the signed current
    steady = count(seconds(0, 1800, 3600), np.array([-3.0, -3.0, -3.0]))
    assert steady.negative.tolist() == pytest.approx([0, 1.5, 3.0])
    assert steady.positive.tolist() == [0, 0, 0]


def test_a_missing_value_counts_nothing_and_is_reported_as_coverage() -> None:
    t = seconds(0, 10, 20, 30)
    values = np.array([1.0, np.nan, 1.0, 1.0])
    assert count(t, values).positive[-1] == pytest.approx(10 / 3600)
    assert coverage(t, values) == pytest.approx(1 / 3)
    assert gaps(seconds(0, 1, 2, 30, 31), 10) == [(2 * S, 28.0)]


def test_steps_from_the_current_absorb_short_changes_and_count_cycles() -> None:
    t = np.arange(0, 400, 1.0)
    amps = np.select([t < 100, t < 200, t < 300], [-2.0, 0.0, 3.0], 0.0)
    amps[150] = 5.0  # a one-second spike inside the rest
    amps[250:253] = 0.0  # a dip inside the charge
    segs = from_current((t * S).astype(np.int64), amps, rest_a=0.05, min_step_s=30)
    assert [(s.description, s.start_ns // S, s.end_ns // S, s.cycle) for s in segs] == [
        ("discharge", 0, 100, 1),
        ("rest", 100, 200, 1),
        ("charge", 200, 300, 1),
        ("rest", 300, 399, 1),
    ]
    assert [s.end_reason for s in segs] == [
        "current became rest",
        "current became charge",
        "current became rest",
        "end of the data",
    ]
    again = np.concatenate([amps, np.full(100, -2.0)])
    t2 = np.arange(len(again)) * S
    assert [s.cycle for s in from_current(t2, again, 0.05, 30)] == [1, 1, 1, 1, 2]


def test_steps_from_run_events_take_their_numbers_and_reasons() -> None:
    rows = [
        (0, "start", 1, 1, 1, "rest 60 s", "run started", None, None),
        (60, "step", 1, 2, 2, "discharge 3 A to 11.8 V", "time 60 s", None, None),
        (500, "limit", 1, 2, 2, None, "voltage <= 11.8", 11.79, "bat_v"),
        (500, "step", 2, 3, 1, "charge", "limit reached", None, None),
        (900, "safe", 2, 3, 1, None, "broker lost", None, None),
        (950, "resume", 2, 3, 1, "charge", "operator", None, None),
    ]
    events = pd.DataFrame(
        rows,
        columns=["t", "event", "cycle", "step", "step_index", "description", "reason", "value", "channel"],
    )
    events.index = pd.Index(events.pop("t") * S, name="t_ns")
    segs = from_events(events, last_sample_ns=1000 * S)
    assert [(s.step, s.cycle, s.step_index, s.start_ns // S, s.end_ns // S) for s in segs] == [
        (1, 1, 1, 0, 60),
        (2, 1, 2, 60, 500),
        (3, 2, 1, 500, 900),
        (3, 2, 1, 950, 1000),
    ]
    assert [s.end_reason for s in segs] == [
        "time 60 s",
        "limit: voltage <= 11.8 (bat_v = 11.79)",
        "safe: broker lost",
        "still running (no end event yet)",
    ]


def test_the_as_of_join_never_carries_a_value_beyond_the_tolerance() -> None:
    other = pd.Series([1.0, 2.0], index=pd.Index(seconds(0, 10), name="t_ns"), name="v")
    joined = asof(pd.Index(seconds(0, 0.4, 5, 9.6, 30)), other, tolerance_s=0.5)
    assert joined["v"].tolist()[:2] == [1.0, 1.0]
    assert np.isnan(joined["v"].iloc[2])
    assert joined["v"].iloc[3] == 2.0
    assert np.isnan(joined["v"].iloc[4])


def dataset(amps: np.ndarray, volts: np.ndarray, step_s: float = 1.0) -> Dataset:
    t = (np.arange(len(amps)) * step_s * S).astype(np.int64)
    frame = pd.DataFrame({"bat_a": amps, "bat_v": volts}, index=pd.Index(t, name="t_ns"))
    return Dataset(Span("s", "n", int(t[0]), int(t[-1])), {"labjack": frame}, {"labjack": "lj"})


def test_an_ocv_anchor_sets_the_soc_and_a_full_charge_wins_over_it() -> None:
    battery = BatterySettings(capacity_ah=1.0, rest_min_s=100, full_v=14.0, taper_a=0.2)
    rest_then_discharge = np.concatenate([np.zeros(200), np.full(360, -1.0)])  # 0.1 Ah out
    volts = np.full(len(rest_then_discharge), 12.5)  # OCV 12.5 V: 60 % in the default table
    result = analyse(dataset(rest_then_discharge, volts), battery, AnalysisSettings(min_step_s=10))
    assert result.reference.anchor.kind == "ocv"
    soc = result.reference.trace["soc_pct"]
    assert soc.iloc[0] == pytest.approx(60)
    assert soc.iloc[-1] == pytest.approx(50, abs=0.3)
    with_taper = np.concatenate([rest_then_discharge, np.full(100, 0.1)])
    volts = np.concatenate([volts, np.full(100, 14.2)])
    result = analyse(dataset(with_taper, volts), battery, AnalysisSettings(min_step_s=10))
    assert result.reference.anchor.kind == "full"
    assert result.reference.trace["soc_pct"].iloc[-1] == pytest.approx(100)
    (check,) = result.reference.checks
    assert check.anchor.kind == "ocv"


def test_without_an_anchor_the_figures_are_still_made_and_the_problem_named() -> None:
    result = analyse(dataset(np.full(100, -1.0), np.full(100, 12.0)), BatterySettings(), AnalysisSettings())
    assert not result.complete
    assert result.steps["discharged_ah"].sum() == pytest.approx(99 / 3600)
    assert any("no anchor" in p for p in result.problems)


def test_no_reference_current_is_an_error() -> None:
    data = dataset(np.zeros(10), np.zeros(10))
    data.frames["labjack"] = data.frames["labjack"].drop(columns=["bat_a"])
    with pytest.raises(AnalysisError, match="no reference current"):
        analyse(data)


def test_settings_come_from_the_file_and_the_environment(tmp_path) -> None:
    path = tmp_path / "analysis.toml"
    path.write_text(
        '[battery]\ncapacity_ah = 12\nocv_v = [11.8, 12.9]\nocv_soc = [0, 1]\n[analysis]\nanchor = "full"\n'
    )
    battery, options = load_settings(str(path), env={"SOCLAB_ANALYSIS_TOLERANCE_S": "0.5"})
    assert battery.capacity_ah == 12
    assert battery.soc_from_ocv(12.35) == pytest.approx(0.5)
    assert options.anchor == "full"
    assert options.tolerance_s == 0.5
    path.write_text("[battery]\nocv_v = [12.9, 11.8]\nocv_soc = [0, 1]\n")
    with pytest.raises(ConfigError, match="must both increase"):
        load_settings(str(path), env={})
    with pytest.raises(ConfigError, match="SOCLAB_BATTERY_CAPACITY_AH"):
        load_settings(None, env={"SOCLAB_BATTERY_CAPACITY_AH": "lots"})
    with pytest.raises(ConfigError, match="unknown instrument kind"):
        load_settings(None, env={"SOCLAB_ANALYSIS_REFERENCE": "multimeter"})


def test_the_eload_counter_is_checked_over_each_discharge_only() -> None:
    amps = np.concatenate([np.full(100, -0.001), np.full(360, -2.0), np.full(100, -0.001)])  # rests: noise
    data = dataset(amps, np.full(len(amps), 12.0))
    t = data.frames["labjack"].index.to_numpy()[::2]  # the e-load, polled more slowly
    counter = np.clip((t / S - 100) * 2 / 3600, 0, 0.2)  # 2 A from 100 s to 460 s
    data.frames["eload"] = pd.DataFrame({"ah": counter}, index=pd.Index(t, name="t_ns"))
    data.devices["eload"] = "el"
    result = analyse(data, BatterySettings(rest_min_s=50), AnalysisSettings(min_step_s=10))
    assert result.steps["kind"].tolist() == ["rest", "discharge", "rest"]
    (check,) = result.eload
    assert check.step == 2
    assert check.eload_ah == pytest.approx(0.2)
    assert abs(check.difference_pct) < 0.5
