"""Reading recordings: the lab's 2021 export as it is, MPPT exports by their ThingSet names, and
the user's own mapping for anything else; every refusal says what and where."""

from __future__ import annotations

from pathlib import Path

import pytest

from soclab.dev.data import RECORDING
from soclab.tools.replay import ColumnError, Mapping, RecordingError, Selector, Target, read_grafana_csv

HEADER = (
    '\ufeff"Time","Bat_voltage {device=""470023670"", name=""V""}",'
    '"Bat_current {device=""470023670"", name=""V""}",'
    '"Bat_A {device=""mppt-1210-hus"", name=""A""}","Bat_V {device=""EA-EL-3060"", name=""V""}",'
    '"Bat_V {device=""mppt-1210-hus"", name=""V""}"'
)
# What the MPPT's own export carries: its ThingSet items, and a series of another instrument.
MPPT_HEADER = (
    '"Time","Bat_V {device=""mppt-1210-hus"", name=""V""}","SOC_pct {device=""mppt-1210-hus"", name=""%""}",'
    '"ChgState {device=""mppt-1210-hus""}","Solar_W {device=""mppt-1210-hus""}",'
    '"Room_degC {device=""thermo-7""}","Fan {device=""thermo-7""}"'
)


def csv_file(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "export.csv"
    path.write_text("\n".join([header, *rows, ""]), encoding="utf-8")
    return path


def test_the_recording_is_read_whole_sorted_and_merged_per_device() -> None:
    recording = read_grafana_csv(RECORDING)
    counts = {
        (device, name): sum(name in s.values for s in samples)
        for device, samples in recording.samples.items()
        for name in ("bat_v", "bat_a")
    }
    # The recording's README: 132 LabJack voltages, 7,869 currents, 7,682 of each MPPT series, 6,792 EA.
    assert counts == {
        ("labjack", "bat_v"): 132,
        ("labjack", "bat_a"): 7869,
        ("mppt", "bat_v"): 7682,
        ("mppt", "bat_a"): 7682,
        ("eload", "bat_v"): 6792,
        ("eload", "bat_a"): 0,
    }
    assert len(recording.samples["labjack"]) == 7872  # voltage and current at one time: one sample
    for samples in recording.samples.values():
        times = [s.t_ns for s in samples]
        assert times == sorted(set(times))
    first = recording.samples["mppt"][0]
    assert first.t_ns % 1_000_000_000 == 0  # whole seconds, as exported
    assert recording.kinds == {"labjack": "labjack", "mppt": "mppt", "eload": "eload"}
    assert recording.plan.skipped == ()


def test_an_mppt_export_maps_by_the_firmwares_names_and_the_rest_is_named_in_one_refusal(
    tmp_path: Path,
) -> None:
    path = csv_file(tmp_path, "1622238915000,12.85,80,1,30.5,21.5,1", header=MPPT_HEADER)
    with pytest.raises(RecordingError) as refused:
        read_grafana_csv(path)
    message = str(refused.value)
    assert "2 column(s) nothing maps: 'Room_degC@thermo-7', 'Fan@thermo-7'" in message
    assert "--map" in message  # says what to do about it
    assert "--skip" in message
    recording = read_grafana_csv(
        path,
        maps=[Mapping.parse("Room_degC@thermo-7=mppt.room_degc")],
        skips=[Selector.parse("Fan")],
    )
    (sample,) = recording.samples["mppt"]
    assert sample.values == {
        "bat_v": 12.85,
        "soc_pct": 80.0,
        "chg_state": 1.0,
        "solar_w": 30.5,
        "room_degc": 21.5,
    }
    assert [(str(c), why) for c, why in recording.plan.skipped] == [("Fan@thermo-7", "--skip")]
    unknown_skipped = read_grafana_csv(path, skip_unknown=True)
    assert set(unknown_skipped.samples["mppt"][0].values) == {"bat_v", "soc_pct", "chg_state", "solar_w"}
    assert [why for _c, why in unknown_skipped.plan.skipped] == ["unknown", "unknown"]


def test_a_mapping_reaches_a_device_of_any_name_and_kind(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "1622238915000,3.3", header='"Time","ain0"')
    recording = read_grafana_csv(path, maps=[Mapping.parse("ain0=labjack:labjack-2.ain0_v")])
    assert recording.kinds == {"labjack-2": "labjack"}
    assert recording.samples["labjack-2"][0].values == {"ain0_v": 3.3}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("mppt", "expected DEVICE.FIELD"),
        ("thermo.room_degc", "kind 'thermo' is not one of mppt, eload, labjack"),
        ("mppt.Bat_V", "field 'Bat_V' must match"),
        ("mppt.seq", "not be seq or flags"),
        ("mppt:Mppt 2.bat_v", "device 'Mppt 2' is not a valid topic level"),
    ],
)
def test_a_malformed_target_is_refused(text: str, error: str) -> None:
    with pytest.raises(ColumnError, match=error):
        Target.parse(text)


def test_a_skip_or_map_that_matches_no_column_is_refused(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "1622238915000,,,-1.03,,")
    with pytest.raises(RecordingError, match="no column matches 'Bat_T'"):
        read_grafana_csv(path, skips=[Selector.parse("Bat_T")])
    with pytest.raises(RecordingError, match="no column matches 'Bat_V@mppt'"):
        read_grafana_csv(path, maps=[Mapping.parse("Bat_V@mppt=mppt.bat_v")])


def test_cells_it_cannot_read_are_refused_with_the_place(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match=r":2: time 'noon' is not epoch milliseconds"):
        read_grafana_csv(csv_file(tmp_path, "noon,1,,,,"))
    with pytest.raises(RecordingError, match="recorded twice"):
        read_grafana_csv(csv_file(tmp_path, "1622238915000,,,-1.03,,", "1622238915000,,,-1.04,,"))
    with pytest.raises(RecordingError, match=r":2: 'high' is not a number"):
        read_grafana_csv(csv_file(tmp_path, "1622238915000,,,high,,"))
    with pytest.raises(RecordingError, match=r":3: 'NaN' is not a finite number"):
        read_grafana_csv(csv_file(tmp_path, "1622238915000,,,1,,", "1622238916000,,,NaN,,"))
    with pytest.raises(RecordingError, match=r":2: 3 cells, the header has 6"):
        read_grafana_csv(csv_file(tmp_path, "1622238915000,,"))
    with pytest.raises(RecordingError, match=r":2: field larger than field limit"):
        read_grafana_csv(csv_file(tmp_path, "1622238915000,,," + "9" * 200_000 + ",,"))
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes((HEADER + "\n1622238915000,,,12\xe9,,\n").encode("latin-1", errors="ignore"))
    with pytest.raises(RecordingError, match="not UTF-8"):
        read_grafana_csv(latin1)
    with pytest.raises(RecordingError, match="no column left"):
        read_grafana_csv(csv_file(tmp_path, "1", header='"Time","x"'), skip_unknown=True)
