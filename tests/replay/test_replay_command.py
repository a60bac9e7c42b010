"""``soclab replay`` through the real pipeline: broker, bridge and database, nothing mocked.

It publishes on the replay path, keeps a bounded number of messages in flight, waits for the
bridge's confirmations and ends with the counts; the exit status says whether everything was
stored. Finding 11 of the hardening issue: at its old defaults it handed paho every message at
once, lost most of a month-long recording and said nothing.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from soclab.cloud.bridge.sink import InfluxSink
from soclab.dev.localservices import Mosquitto
from soclab.tools import replay

InfluxTarget = Any  # tests/conftest.py
MPPT_V = '"Bat_V {device=""mppt-1210-hus"", name=""V""}"'
HEADER = (
    '\ufeff"Time","Bat_voltage {device=""470023670"", name=""V""}",'
    '"Bat_current {device=""470023670"", name=""V""}",'
    f'"Bat_A {{device=""mppt-1210-hus"", name=""A""}}","Bat_V {{device=""EA-EL-3060"", name=""V""}}",{MPPT_V}'
)
T0_MS = 1_622_238_915_000  # 2021-05-28, the lab's recording


def csv_file(tmp_path: Path, *rows: str, header: str = HEADER, name: str = "export.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows, ""]), encoding="utf-8")
    return path


def argv(path: Path, site: str, broker: Mosquitto, *extra: str) -> list[str]:
    return [
        str(path),
        "--site",
        site,
        "--node",
        "pi-rec",
        "--host",
        broker.host,
        "--port",
        str(broker.port),
        *extra,
    ]


def counts(text: str) -> dict[str, int]:
    """The last line's counts: sent, stored, refused, not confirmed, not sent."""
    line = [line for line in text.splitlines() if line.startswith("replay: sent ")][-1]
    found = re.findall(r"(sent|stored|refused|not confirmed|not sent) ([\d,]+)", line)
    return {name: int(number.replace(",", "")) for name, number in found}


def test_every_sample_is_stored_confirmed_and_counted(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxTarget, site: str, start_bridge: Any, capsys: Any
) -> None:
    path = csv_file(
        tmp_path,
        f"{T0_MS + 2000},,-1.02,-1.03,12.85,12.84",  # unsorted, as exported
        f"{T0_MS},12.9,-1.01,-1.03,,12.85",
        f"{T0_MS + 1000},,,,12.84,",
    )
    start_bridge(mosquitto, influxdb, site)
    assert replay.main(argv(path, site, mosquitto)) == 0
    out, err = capsys.readouterr()
    assert counts(out) == {"sent": 6, "stored": 6, "refused": 0, "not confirmed": 0, "not sent": 0}
    assert "6 samples in 3 messages (eload 2, labjack 2, mppt 2)" in err
    rows = influxdb.rows("SELECT * FROM labjack, mppt, eload GROUP BY *")  # stored before the exit
    got = {(r["device"], r["seq"]): (r["time"], r["bat_v"], r["bat_a"]) for r in rows}
    ns = 1_000_000
    assert got == {
        ("labjack", 0): (T0_MS * ns, 12.9, -1.01),
        ("labjack", 1): ((T0_MS + 2000) * ns, None, -1.02),
        ("mppt", 0): (T0_MS * ns, 12.85, -1.03),
        ("mppt", 1): ((T0_MS + 2000) * ns, 12.84, -1.03),
        ("eload", 0): ((T0_MS + 1000) * ns, 12.84, None),
        ("eload", 1): ((T0_MS + 2000) * ns, 12.85, None),
    }


def test_samples_the_database_refuses_are_counted_and_the_exit_says_so(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxTarget, site: str, start_bridge: Any, capsys: Any
) -> None:
    # Someone wrote bat_v as a string into this week's shard: InfluxDB refuses every float bat_v.
    sink = InfluxSink(influxdb.url, influxdb.token, influxdb.org, influxdb.bucket)
    try:
        sink.write(f'mppt,device=other,node=x,site=x bat_v="high" {T0_MS * 1_000_000}'.encode())
    finally:
        sink.close()
    path = csv_file(tmp_path, *(f"{T0_MS + i * 1000},,,-1.0,12.8,12.8" for i in range(5)))
    start_bridge(mosquitto, influxdb, site)
    assert replay.main(argv(path, site, mosquitto, "--samples-per-message", "1")) == 1
    out, err = capsys.readouterr()
    assert counts(out) == {"sent": 10, "stored": 5, "refused": 5, "not confirmed": 0, "not sent": 0}
    assert "5 samples were not stored" in err


def test_a_message_the_bridge_refuses_whole_is_counted_by_its_dead_letter(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxTarget, site: str, start_bridge: Any, capsys: Any
) -> None:
    """Two samples 36 h apart in one message (--max-span allows it): the bridge refuses a message
    spread over more than a day, with a dead letter and no confirmation; the replay matches the
    dead letter to its message (SHA-256) and ends at once, with the reason."""
    path = csv_file(tmp_path, f"{T0_MS},12.8", f"{T0_MS + 36 * 3600 * 1000},12.9", header=f'"Time",{MPPT_V}')
    start_bridge(mosquitto, influxdb, site)
    extra = ("--samples-per-message", "2", "--max-span", "200000", "--timeout", "60")
    started = time.monotonic()
    assert replay.main(argv(path, site, mosquitto, *extra)) == 1
    out, err = capsys.readouterr()
    assert counts(out) == {"sent": 2, "stored": 0, "refused": 2, "not confirmed": 0, "not sent": 0}
    assert "the bridge refused 2 samples: " in err
    assert time.monotonic() - started < 30  # not the 60 s of a bridge that says nothing


def test_without_a_bridge_it_gives_up_after_the_timeout_and_says_what_happened(
    tmp_path: Path, mosquitto: Mosquitto, site: str, capsys: Any
) -> None:
    path = csv_file(tmp_path, *(f"{T0_MS + i * 1000},,,-1.0,," for i in range(50)))
    extra = ("--samples-per-message", "1", "--window", "20", "--timeout", "1.5", "--resend-after", "1")
    assert replay.main(argv(path, site, mosquitto, *extra)) == 1
    out, err = capsys.readouterr()
    assert counts(out) == {"sent": 20, "stored": 0, "refused": 0, "not confirmed": 20, "not sent": 30}
    assert "the bridge confirmed nothing for 2 s (20 messages in flight)" in err


def test_messages_a_late_bridge_never_received_are_sent_again(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxTarget, site: str, start_bridge: Any, capsys: Any
) -> None:
    """The bridge's session starts after the first messages went out: they are gone (nobody was
    subscribed). After a silence of --resend-after the replay sends them again."""
    import threading

    path = csv_file(tmp_path, *(f"{T0_MS + i * 1000},,,-1.0,,12.8" for i in range(30)))
    late = threading.Timer(1.0, start_bridge, args=(mosquitto, influxdb, site))
    late.start()
    try:
        extra = ("--samples-per-message", "1", "--window", "10", "--resend-after", "2", "--timeout", "30")
        assert replay.main(argv(path, site, mosquitto, *extra)) == 0
    finally:
        late.join()
    out, _err = capsys.readouterr()
    assert counts(out)["stored"] == 30
    assert int(re.search(r"([\d,]+) messages sent again", out)[1]) >= 10  # type: ignore[index]
    (row,) = influxdb.rows("SELECT count(seq) FROM mppt")
    assert row["count"] == 30


@pytest.mark.slow
def test_a_month_of_one_sample_rows_at_the_defaults_is_stored_once(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxTarget, site: str, start_bridge: Any, capsys: Any
) -> None:
    """The acceptance of finding 11: 300,000 one-sample rows (a month-long recording at the old
    lab's rate was 250,923), the tool's defaults: every row stored once, progress on the way,
    the counts at the end."""
    rows = 300_000
    path = csv_file(
        tmp_path,
        *(f"{T0_MS + i * 1000},{12 + (i % 1000) / 1000:.3f}" for i in range(rows)),
        header=f'"Time",{MPPT_V}',
    )
    start_bridge(mosquitto, influxdb, site)
    started = time.monotonic()
    assert replay.main(argv(path, site, mosquitto)) == 0
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert counts(out) == {"sent": rows, "stored": rows, "refused": 0, "not confirmed": 0, "not sent": 0}
    progress = [line for line in err.splitlines() if "samples settled" in line]
    sending_s = float(re.search(r" in ([\d.]+) s$", out.strip())[1])  # type: ignore[index]
    assert len(progress) >= max(1, int(sending_s // 2) - 1), err  # a line every 2 s while it sends
    (row,) = influxdb.rows("SELECT count(seq), count(bat_v), min(seq), max(seq), sum(bat_v) FROM mppt")
    assert (row["count"], row["count_1"], row["min"], row["max"]) == (rows, rows, 0, rows - 1)
    assert row["sum"] == pytest.approx(sum(12 + (i % 1000) / 1000 for i in range(rows)))
    (distinct,) = influxdb.rows("SELECT count(distinct(seq)) FROM mppt")
    assert distinct["count"] == rows
    print(f"replay of {rows:,} rows at the defaults: {elapsed:.1f} s, {sending_s:.1f} s of it sending")


def test_the_command_says_why_it_cannot_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay.main([str(tmp_path / "missing.csv"), "--site", "s", "--node", "n"]) == 2
    assert "missing.csv" in capsys.readouterr().err
    path = csv_file(tmp_path, f"{T0_MS},,,-1.0,,")
    assert replay.main([str(path), "--site", "s", "--node", "n", "--window", "0"]) == 2
    assert "window" in capsys.readouterr().err
    assert replay.main([str(path), "--site", "s", "--node", "n", "--dry-run"]) == 0
    assert "1 samples in 1 messages (mppt 1)" in capsys.readouterr().err
