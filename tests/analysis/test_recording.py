"""The analysis on the lab's real 2021 evening, replayed through broker and bridge into InfluxDB.

The recording's README says what it holds (UTC): a discharge at about -1 A from 21:54, a charge
from about 21:58 tapering at 13.8 V until about 22:30, a discharge at about -2.9 A (LabJack) from
about 22:40 to 23:20, a rest at 12.8 V from about 23:30 to 23:50, a charge at about 3.9 A up to
14.4 V from 23:50 until the supplies drop at about 00:20; the LabJack reads about 4 % lower than
the MPPT. The recording has no run events, so the steps are found in the current.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysiskit import NODE, SITE, Recorded

from soclab.tools import analysis
from soclab.tools.analysis import analyse_command, export, report
from soclab.tools.influx import InfluxClient

PHASES = [  # (kind, start, end): the README's phases as the current shows them (HH:MM, UTC)
    ("discharge", "21:54", "21:58"),
    ("charge", "21:58", "22:28"),  # tapering at 13.8 V
    ("rest", "22:28", "22:35"),
    ("discharge", "22:35", "23:25"),  # -1 A at first, -2.9 A from 22:42
    ("rest", "23:25", "23:52"),  # at 12.8 V
    ("charge", "23:52", "00:20"),  # up to 14.4 V
    ("rest", "00:20", "00:25"),  # the supplies dropped
]


@pytest.fixture(scope="module")
def result(recorded: Recorded) -> analysis.Analysis:
    client = InfluxClient(recorded.influx)
    data = analysis.load(client, SITE, NODE, start_ns=recorded.start_ns, end_ns=recorded.end_ns)
    return analysis.analyse(data)


def args(recorded: Recorded) -> list[str]:
    return [
        "--site", SITE, "--node", NODE,
        "--from", str(recorded.start_ns / 1e9), "--to", str(recorded.end_ns / 1e9),
        "--influx-url", recorded.influx.url, "--influx-bucket", recorded.influx.bucket,
    ]  # fmt: skip


def minutes(stamp: pd.Timestamp) -> str:
    return stamp.strftime("%H:%M")


def test_the_step_table_shows_the_recordings_phases(result: analysis.Analysis) -> None:
    steps = result.steps
    found = list(zip(steps["kind"], steps["start"].map(minutes), steps["end"].map(minutes), strict=True))
    assert found == PHASES
    assert steps["cycle"].tolist() == [1, 1, 1, 2, 2, 2, 2]  # a cycle begins with a discharge after a charge
    first, long_discharge, rest, charge = steps.iloc[0], steps.iloc[3], steps.iloc[4], steps.iloc[5]
    assert first["i_mean_a"] == pytest.approx(-1.0, abs=0.05)
    assert long_discharge["v_end"] == pytest.approx(12.24, abs=0.05)  # "falling to about 12.24 V"
    assert long_discharge["discharged_ah"] == pytest.approx(2.15, abs=0.02)
    assert long_discharge["charged_ah"] == 0
    assert rest["v_end"] == pytest.approx(12.8, abs=0.05)
    assert charge["charged_ah"] > 1.5
    assert charge["discharged_ah"] < 0.001
    assert set(steps["end_reason"]) == {
        "current became charge",
        "current became rest",
        "current became discharge",
        "end of the data",
    }
    cycles = result.cycles
    assert cycles["charged_ah"].sum() == pytest.approx(steps["charged_ah"].sum())
    second = cycles.iloc[1]
    assert second["coulombic_efficiency"] == pytest.approx(second["discharged_ah"] / second["charged_ah"])


def test_the_reference_soc_is_anchored_on_the_end_of_the_first_charge(result: analysis.Analysis) -> None:
    anchor = result.reference.anchor
    assert anchor is not None
    assert anchor.kind == "full"
    assert minutes(pd.Timestamp(anchor.t_ns, unit="ns")) == "22:28"
    soc = result.reference.trace["soc_pct"]
    assert soc.max() == pytest.approx(100, abs=0.1)
    # 2.15 Ah out of a 9 Ah battery, then 1.64 Ah in
    assert result.steps.iloc[3]["soc_end_pct"] == pytest.approx(100 - 100 * 2.15 / 9, abs=0.5)
    (rest_check,) = result.reference.checks
    assert rest_check.anchor.kind == "ocv"  # the 12.8 V rest says 92 %: lead-acid relaxes for hours
    assert rest_check.counted_soc == pytest.approx(0.762, abs=0.01)


def test_the_instrument_offsets_are_reported_with_a_labjack_calibration(result: analysis.Analysis) -> None:
    (current,) = [f for f in result.fits if (f.other, f.quantity) == ("mppt", "bat_a")]
    # "The LabJack current reads about 4 % lower in magnitude than the MPPT's."
    assert current.gain == pytest.approx(1.04, abs=0.01)
    assert abs(current.offset) < 0.02
    assert "gain x 1.04" in current.suggestion("labjack")
    per_step = result.agreement[
        (result.agreement["instrument"] == "mppt") & (result.agreement["quantity"] == "bat_a")
    ]
    steady = per_step.dropna(subset=["ratio"])
    assert len(steady) >= 4
    assert steady["ratio"].between(1.0, 1.06).all()
    voltages = result.agreement[result.agreement["quantity"] == "bat_v"]
    assert set(voltages["instrument"]) == {"mppt", "eload"}


def test_the_bdf_export_has_one_row_per_aligned_sample_with_the_right_sign(
    result: analysis.Analysis, recorded: Recorded, tmp_path: Path
) -> None:
    assert analyse_command.main([*args(recorded), "--json", str(tmp_path / "steps.json")]) == 0
    assert export.main([*args(recorded), "--out", str(tmp_path)]) == 0
    (csv,) = tmp_path.glob("*.bdf.csv")
    table = pd.read_csv(csv)
    assert list(table.columns) == list(export.BDF_COLUMNS.values())
    currents = [s for s in recorded.recording.samples["labjack"] if "bat_a" in s.values]
    assert len(table) == len(currents)  # one row per sample of the reference current
    time = table["Unix Time / s"].to_numpy()
    assert (np.diff(time) > 0).all()
    assert time[0] == currents[0].t_ns / 1e9
    assert table["Test Time / s"].iloc[0] == 0
    steps = json.loads((tmp_path / "steps.json").read_text())["steps"]
    long_discharge = table[table["Step Count / 1"] == 4]
    assert (long_discharge["Current / A"] < 0).mean() > 0.99  # BDF: positive current charges
    assert long_discharge["Discharging Capacity / Ah"].iloc[-1] - long_discharge[
        "Discharging Capacity / Ah"
    ].iloc[0] == pytest.approx(steps[3]["discharged_ah"], abs=0.01)
    charge = table[table["Step Count / 1"] == 6]
    assert (charge["Current / A"] > 0).mean() > 0.99
    assert table["Cycle Count / 1"].is_monotonic_increasing
    assert table["Step Count / 1"].is_monotonic_increasing
    assert table["Charging Capacity / Ah"].is_monotonic_increasing
    assert table["Voltage / V"].notna().mean() > 0.95
    assert table["Step Index / 1"].iloc[0] == 1
    # Full resolution per instrument, every stored sample.
    for kind, samples in recorded.recording.samples.items():
        (parquet,) = tmp_path.glob(f"*.{kind}.parquet")
        stored = pd.read_parquet(parquet)
        assert len(stored) == len(samples)
        assert stored["t_ns"].tolist() == [s.t_ns for s in samples]
    (aligned,) = tmp_path.glob("*.aligned.parquet")
    side_by_side = pd.read_parquet(aligned)
    assert {"labjack_bat_a", "mppt_bat_a", "mppt_bat_v", "eload_bat_v", "reference_soc_pct"} <= set(
        side_by_side
    )


def test_the_bdf_columns_are_the_published_ones_and_a_bdf_reader_reads_the_file(
    result: analysis.Analysis, tmp_path: Path
) -> None:
    import bdf  # batterydf, the Battery Data Alliance's reader (a development requirement)
    from bdf.normalize import spec

    for name, label in export.BDF_COLUMNS.items():
        assert spec.COLUMNS[name]["label_template"].format(unit=spec.COLUMNS[name]["unit"]) == label, name
    path = tmp_path / "x.bdf.csv"
    export.bdf_frame(result).to_csv(path, index=False)
    table = bdf.read(path)
    report_ = bdf.validate(table)
    assert report_["ok"], report_
    assert report_["missing"] == [], report_
    assert report_["extras"] == [], report_
    assert report_["time_stats"]["monotonic"]
    assert len(table) == len(result.reference.trace)


def test_the_report_is_a_page_with_plots_rendered_by_chromium(recorded: Recorded, tmp_path: Path) -> None:
    page, png = tmp_path / "report.html", tmp_path / "report.png"
    assert report.main([*args(recorded), "--out", str(page), "--png", str(png)]) == 0
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3
    assert 'src="http' not in text
    assert "<script" not in text
    for heading in ("Steps", "Cycles", "Instrument agreement", "State of charge"):
        assert f"<h2>{heading}</h2>" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 50_000


def test_the_reference_soc_is_written_back_for_grafana(recorded: Recorded) -> None:
    assert analyse_command.main([*args(recorded), "--write"]) == 0
    rows = recorded.server.query(
        f"SELECT soc_pct, charged_ah FROM soc_reference WHERE site = '{SITE}' AND node = '{NODE}' GROUP BY *",
        db=recorded.influx.bucket,
    )
    (series,) = rows
    assert series["tags"] == {"site": SITE, "node": NODE, "device": "labjack"}
    soc = [v[1] for v in series["values"]]
    assert len(soc) > 7000
    assert max(soc) == pytest.approx(100, abs=0.1)


def test_bad_requests_are_refused_with_a_clear_error(recorded: Recorded, tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[battery]\ncapacity = 9\n")
    assert analyse_command.main([*args(recorded), "--config", str(config)]) == 2
    assert "[battery] has no setting 'capacity'" in capsys.readouterr().err
    assert analyse_command.main([*args(recorded)[:4], "--influx-bucket", recorded.influx.bucket]) == 2
    assert "give a run" in capsys.readouterr().err
    assert analyse_command.main([*args(recorded), "--run", "no-such-run"]) == 2
    assert "no run_events for run 'no-such-run'" in capsys.readouterr().err
    assert analyse_command.main([*args(recorded), "--anchor", "ocv"]) == 0  # the 12.8 V rest
    assert "anchor: ocv at 2021-05-28T23:52:43" in capsys.readouterr().out
    assert analyse_command.main([*args(recorded), "--anchor", "50@2030-01-01"]) == 1
    out, err = capsys.readouterr()
    assert "outside the data" in out
    assert "no reference SoC" in err
