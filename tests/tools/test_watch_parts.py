"""``soclab watch``'s parts: instrument kinds and units, sequence bookkeeping, the screen's text."""

from __future__ import annotations

import json
import subprocess
import sys

from watchkit import T0, bridge_status, data, status, topic

from soclab.edge.instruments import KINDS
from soclab.edge.instruments import kinds as registry_kinds
from soclab.tools.watch.kinds import headline, unit_of
from soclab.tools.watch.model import Model, Thresholds
from soclab.tools.watch.render import plain, render
from soclab.tools.watch.sequence import SeqTracker


def test_the_monitors_kinds_are_the_registrys():
    assert all(headline(name) == KINDS[name].headline for name in registry_kinds())
    assert headline("mppt")[:2] == ("bat_v", "bat_a")
    assert headline("a-kind-from-the-future") == ("bat_v", "bat_a")


def test_units_come_from_the_registry_then_from_the_value_names():
    assert all(unit_of(f.name, k.name) == (f.unit or "") for k in KINDS.values() for f in k.fields)
    names = ("bat_v", "bat_a", "soc_pct", "int_degc", "ah", "bat_usable_ah", "solar_in_day_wh", "power_w")
    units = ("V", "A", "%", "°C", "Ah", "Ah", "Wh", "W")
    assert [unit_of(n) for n in names] == list(units)
    assert [unit_of(n) for n in ("uptime_s", "scan_rate_hz", "chg_state", "error_flags")] == [
        "s",
        "Hz",
        "",
        "",
    ]


def test_the_monitor_imports_no_driver_nor_serial_or_ljm_library():
    code = (
        "import sys, soclab.tools.watch.cli, soclab.tools.watch.kinds\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('serial', 'labjack')"
        " or m.endswith(('.driver', '.backend'))]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_seq_tracker_holes_below_the_first_seen_are_dated_when_they_appear():
    seqs = SeqTracker()
    seqs.add(list(range(1000, 1010)), now=0.0)
    seqs.add(list(range(500, 600)), now=50.0)  # backlog older than anything seen: a hole opens now
    assert seqs.holes() == [(600, 999, 50.0)]
    assert seqs.missing_longer_than(60.0, 30.0) == (0, None)
    assert seqs.missing_longer_than(81.0, 30.0) == (400, 50.0)


def test_seq_tracker_a_run_inside_a_hole_keeps_the_holes_age():
    seqs = SeqTracker()
    seqs.add([0, 1, 2], now=0.0)
    seqs.add([10], now=1.0)
    seqs.add([5, 6], now=5.0)
    assert seqs.holes() == [(3, 4, 1.0), (7, 9, 1.0)]
    seqs.add([3, 4, 7, 8, 9], now=6.0)
    assert (seqs.holes(), seqs.missing(), seqs.duplicates, seqs.highest) == ([], 0, 0, 10)


def test_seq_tracker_is_bounded():
    seqs = SeqTracker(max_ranges=4)
    for i in range(10):
        seqs.add([i * 10], now=float(i))
    assert len(seqs.holes()) == 3
    assert seqs.highest == 90


def _lab(now: float) -> Model:
    model = Model(Thresholds(silent_s=5), started=T0)
    model.ingest(topic("mppt", "status"), status("mppt", gauges={"spool_depth": 3, "backlog_samples": 0}), T0)
    values = {"bat_v": 12.85, "bat_a": -1.03, "soc_pct": 81, "chg_state": 1}
    model.ingest(topic("mppt"), data("mppt", [41], values=values), T0)
    model.ingest(topic("eload", "status"), status("eload"), T0)
    model.ingest(topic("eload"), data("eload", [7]), T0)
    model.ingest("soclab-bridge/lab/status", bridge_status(messages_received=10, points_written=90), T0)
    return model


def test_the_screen_shows_devices_with_values_and_units_and_the_alerts_first():
    text = plain(render(_lab(T0), T0 + 6, title="test"), width=200).replace("\u00a0", " ")
    lines = text.splitlines()
    assert lines[0].startswith("soclab watch  test  ")
    assert lines[1:3] == ["alerts: 2", " ! lab1/pi-01/eload: silent for 6.0 s (threshold 5 s)"]
    mppt = next(line for line in lines if line.startswith("lab1/pi-01/mppt "))
    assert "bat_v 12.85 V  bat_a -1.03 A  soc_pct 81 %  chg_state 1" in mppt
    assert mppt.split()[:3] == ["lab1/pi-01/mppt", "mppt", "silent"]
    assert any(line.startswith("lab ") and "online" in line for line in lines)


def test_the_compact_screen_fits_a_small_terminal():
    text = plain(render(_lab(T0), T0 + 1, title="test", compact=True), width=60).replace("\u00a0", " ")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 60
    assert "alerts: none" in lines
    assert any(line.startswith("lab1/pi-01/mppt online 1.0/s bat_v 12.85 V") for line in lines)
    assert "bridge lab online" in lines


def test_the_screen_shows_a_run_with_its_step_and_the_value_it_watches():
    model = _lab(T0)
    status_message = {
        "schema": "soclab.run.status/1",
        "source": {"site": "lab1", "node": "pi-01", "device": "run"},
        "state": "running",
        "t_ns": int(T0 * 1e9),
        "run": {
            "id": "r1",
            "name": "capacity",
            "started_ns": 1,
            "cycle": 2,
            "step": 5,
            "step_index": 1,
            "description": "Discharge at 3 A until 11.8 V",
            "elapsed_s": 600.0,
            "step_elapsed_s": 75.0,
            "until": "bat_v <= 11.8",
            "watching": {"quantity": "bat_v", "channel": "labjack.bat_v", "value": 12.1, "fallback": False},
        },
        "last_event": {"run": "r1", "event": "step", "reason": "rest ended after 30 min"},
    }
    model.ingest("soclab/lab1/pi-01/run/status", json.dumps(status_message).encode(), T0)
    text = plain(render(model, T0 + 1, title="test"), width=250).replace("\u00a0", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("lab1/pi-01 ")]
    for shown in (
        "running",
        "capacity",
        "cycle 2 step 1: Discharge at 3 A until 11.8 V (75 s)",
        "bat_v <= 11.8",
    ):
        assert shown in line
    assert "bat_v 12.1 on labjack.bat_v" in line
    assert "step: rest ended after 30 min" in line
