"""soclab.tools.replay: the lab's recording read as it is, published as valid data messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from soclab.dev.data import RECORDING
from soclab.dev.localservices import Mosquitto
from soclab.tools import replay
from soclab.wire import validate

HEADER = (
    '\ufeff"Time","Bat_voltage {device=""470023670"", name=""V""}",'
    '"Bat_current {device=""470023670"", name=""V""}",'
    '"Bat_A {device=""mppt-1210-hus"", name=""A""}","Bat_V {device=""EA-EL-3060"", name=""V""}",'
    '"Bat_V {device=""mppt-1210-hus"", name=""V""}"'
)


def csv_file(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "export.csv"
    path.write_text("\n".join([header, *rows, ""]), encoding="utf-8")
    return path


def test_the_recording_is_read_whole_sorted_and_merged_per_device() -> None:
    recording = replay.read_grafana_csv(RECORDING)
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


def test_messages_are_valid_in_time_order_with_consecutive_seq_per_device() -> None:
    recording = replay.read_grafana_csv(RECORDING)
    items = list(replay.messages(recording, "lab1", "pi-01", samples_per_message=7, seq_start=100))
    seqs: dict[str, list[int]] = {}
    last_t = 0
    for topic, message in items:
        validate(message, "soclab.data/1")
        device = message["source"]["device"]
        assert topic == f"soclab/lab1/pi-01/{device}/replay"
        assert len(message["samples"]) <= 7
        assert message["samples"][-1]["t_ns"] >= last_t  # the devices interleaved as in a live lab
        last_t = message["samples"][-1]["t_ns"]
        seqs.setdefault(device, []).extend(s["seq"] for s in message["samples"])
    for device, samples in recording.samples.items():
        assert seqs[device] == list(range(100, 100 + len(samples)))


def test_a_recording_it_cannot_map_is_refused_with_the_place(tmp_path: Path) -> None:
    with pytest.raises(replay.RecordingError, match="no target for column"):
        replay.read_grafana_csv(csv_file(tmp_path, header='"Time","Bat_T {device=""x""}"'))
    with pytest.raises(replay.RecordingError, match=r":2: time 'noon'"):
        replay.read_grafana_csv(csv_file(tmp_path, "noon,1,,,,"))
    with pytest.raises(replay.RecordingError, match="recorded twice"):
        replay.read_grafana_csv(csv_file(tmp_path, "1622238915000,,,-1.03,,", "1622238915000,,,-1.04,,"))
    with pytest.raises(replay.RecordingError, match="is not a number"):
        replay.read_grafana_csv(csv_file(tmp_path, "1622238915000,,,high,,"))


def test_the_command_publishes_every_sample_through_a_broker(
    tmp_path: Path, mosquitto: Mosquitto, site: str, mqtt_collector: Any
) -> None:
    path = csv_file(
        tmp_path,
        "1622238917000,,-1.02,-1.03,12.85,12.84",  # unsorted, as exported
        "1622238915000,12.9,-1.01,-1.03,,12.85",
        "1622238916000,,,,12.84,",
    )
    collector = mqtt_collector(mosquitto, f"soclab/{site}/+/+/replay")
    argv = [
        str(path),
        "--site",
        site,
        "--node",
        "pi-rec",
        "--host",
        mosquitto.host,
        "--port",
        str(mosquitto.port),
    ]
    assert replay.main(argv) == 0
    got = [json.loads(m.payload) for m in collector.wait_for(6)]
    samples = {(m["source"]["device"], s["seq"]): (s["t_ns"], s["values"]) for m in got for s in m["samples"]}
    assert samples == {
        ("labjack", 0): (1622238915000000000, {"bat_v": 12.9, "bat_a": -1.01}),
        ("labjack", 1): (1622238917000000000, {"bat_a": -1.02}),
        ("mppt", 0): (1622238915000000000, {"bat_a": -1.03, "bat_v": 12.85}),
        ("mppt", 1): (1622238917000000000, {"bat_a": -1.03, "bat_v": 12.84}),
        ("eload", 0): (1622238916000000000, {"bat_v": 12.84}),
        ("eload", 1): (1622238917000000000, {"bat_v": 12.85}),
    }


def test_the_command_says_why_it_cannot_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay.main([str(tmp_path / "missing.csv"), "--site", "s", "--node", "n"]) == 2
    assert "missing.csv" in capsys.readouterr().err
