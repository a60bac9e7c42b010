"""Every panel query of the Grafana dashboards, run against the real InfluxDB 1.6.7 on real data.

The database is filled through the whole pipeline, once for the module:

- the lab's recording (soclab.dev.data.RECORDING: LabJack voltage and current, MPPT Bat_A and
  Bat_V, EA Bat_V) replayed by ``soclab.tools.replay`` as node ``pi-rec`` (10 samples a
  message, to keep the test short) -> Mosquitto -> the bridge -> InfluxDB;
- what the recording does not have (the MPPT's SoC, load and charger state, the Ah counters, the
  temperatures the MPPT driver asks for beside its publication, the e-load's current, the
  publishers' status) from the simulated lab of ``make lab`` (MPPT and electronic load, node
  ``pi-sim``) running for a few seconds through the same broker and bridge;
- one invalid message, for the dead-letter panel;
- the reference SoC of the recording (``soclab analyse --write``: measurement ``soc_reference``),
  read back from the same database through the v2 shim's ``/query``.

Each query is rendered as Grafana renders it (``grafana_macros``) for the recording's time range
and for the live run's, and must return series with exactly the expected value columns and values
in them; those fed by the recording must do so in the recording's range alone.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from grafana_macros import render

from soclab.dev.data import RECORDING
from soclab.dev.lab.cli import LabSettings, run_lab
from soclab.dev.localservices import InfluxDB1, Mosquitto, V2WriteShim
from soclab.edge.instruments.libresolar_mppt.fields import FIELDS
from soclab.tools import replay
from soclab.tools.analysis import analyse_command

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "cloud" / "soclab" / "cloud" / "grafana"
DATASOURCE_UID = "soclab-influxdb"
WAIT_S = 60.0
SITE = "lab-dash"
REC, SIM = "recording", "live"

LAG = "Lag: sample time to arrival at the bridge"
# (dashboard file, panel title, refId) -> (value columns, where its data comes from)
EXPECTED: dict[tuple[str, str, str], tuple[set[str], str]] = {
    ("lab-overview.json", "Battery voltage: all three instruments", "A"): ({"bat_v"}, REC),
    ("lab-overview.json", "Battery voltage: all three instruments", "B"): ({"bat_v"}, REC),
    ("lab-overview.json", "Battery voltage: all three instruments", "C"): ({"bat_v"}, REC),
    ("lab-overview.json", "Battery current: all three instruments", "A"): ({"bat_a"}, REC),
    ("lab-overview.json", "Battery current: all three instruments", "B"): ({"bat_a"}, REC),
    ("lab-overview.json", "Battery current: all three instruments", "C"): ({"bat_a"}, SIM),
    ("lab-overview.json", "State of charge: MPPT and reference", "A"): ({"soc_pct"}, SIM),
    ("lab-overview.json", "State of charge: MPPT and reference", "B"): ({"soc_pct"}, REC),
    ("lab-overview.json", "Load output and charger state", "A"): ({"load_info"}, SIM),
    ("lab-overview.json", "Load output and charger state", "B"): ({"chg_state"}, SIM),
    ("lab-overview.json", "Charge counters (Ah)", "A"): ({"ah"}, SIM),
    ("lab-overview.json", "Charge counters (Ah)", "B"): ({"dis_ah"}, SIM),
    ("lab-overview.json", "Temperatures", "A"): ({"mean_bat_degc", "mean_int_degc"}, SIM),  # no MOSFET sensor
    ("pipeline-health.json", "Samples stored per device", "A"): ({"samples"}, SIM),
    ("pipeline-health.json", "Messages per device", "A"): ({"messages"}, SIM),
    ("pipeline-health.json", LAG, "A"): ({"lag_max_s", "lag_mean_s"}, SIM),
    ("pipeline-health.json", "Publisher spool depth", "A"): ({"spool_depth"}, SIM),
    ("pipeline-health.json", "Dead letters", "A"): ({"dead_letters"}, SIM),
    ("pipeline-health.json", "Publishers online", "A"): ({"online"}, SIM),
    ("pipeline-health.json", "Samples in the database per device", "A"): ({"samples"}, REC),
}
TEMPERATURES = ("bat_degc", "int_degc")  # what the MPPT-1210-HUS has (no Mosfet_degC: no sensor)


def dashboards() -> dict[str, dict[str, Any]]:
    files = sorted((GRAFANA / "dashboards").glob("*.json"))
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in files}


def panel_titled(board: str, start: str) -> dict[str, Any]:
    (panel,) = [p for p in dashboards()[board]["panels"] if p["title"].startswith(start)]
    return panel


def targets() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel["targets"]:
                yield name, panel, target


def datasource_min_interval() -> str:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "soclab.yaml").read_text())
    (source,) = provisioned["datasources"]
    assert source["uid"] == DATASOURCE_UID
    return source["jsonData"]["timeInterval"]


@dataclass
class Filled:
    server: InfluxDB1
    db: str
    recording: replay.Recording
    windows: dict[str, tuple[int, int]]  # REC/SIM -> (from_ms, to_ms)

    def query(self, q: str) -> list[dict[str, Any]]:
        return self.server.query(q, db=self.db, epoch="ms")

    def count(self, q: str) -> int:
        return sum(int(v[1] or 0) for s in self.query(q) for v in s["values"])


@pytest.fixture(scope="module")
def filled(
    tmp_path_factory: pytest.TempPathFactory, _influx_server: tuple[InfluxDB1, V2WriteShim]
) -> Iterator[Filled]:
    server, shim = _influx_server
    db = "dashboards"
    server.create_database(db)
    recording = replay.read_grafana_csv(RECORDING)
    folder = tmp_path_factory.mktemp("dashboards")
    with Mosquitto(folder / "mosquitto") as broker, pytest.MonkeyPatch.context() as env:
        env.setenv("SOCLAB_BRIDGE_INFLUX_TOKEN", "unused:unused")
        settings = LabSettings(
            site=SITE,
            node="pi-sim",
            instruments={"mppt": {}, "eload": {}},
            mqtt={"host": broker.host, "port": broker.port},
            influxdb={"url": shim.url, "org": "soclab", "bucket": db},
            simulation={"mppt_period_s": 0.2},
        )
        filled = Filled(server, db, recording, {})
        live_from = time.time_ns() // 1_000_000
        with run_lab(settings, folder / "var"):
            wait_for(filled, "SELECT count(seq) FROM mppt, eload WHERE node = 'pi-sim'", 6)
            wait_for(filled, "SELECT count(online) FROM soclab_status WHERE node = 'pi-sim'", 2)
            argv = [str(RECORDING), "--site", SITE, "--node", "pi-rec", "--samples-per-message", "10"]
            assert replay.main([*argv, "--host", broker.host, "--port", str(broker.port)]) == 0
            send_junk(broker)
            total = sum(len(s) for s in recording.samples.values())
            wait_for(filled, "SELECT count(seq) FROM labjack, mppt, eload WHERE node = 'pi-rec'", total)
            for name in TEMPERATURES:
                wait_for(filled, f"SELECT count({name}) FROM mppt WHERE node = 'pi-sim'", 1)
            wait_for(filled, "SELECT sum(dead_letters) FROM soclab_bridge", 1)
            span = [
                min(s[0].t_ns for s in recording.samples.values()),
                max(s[-1].t_ns for s in recording.samples.values()),
            ]
            when = ["--from", str(span[0] / 1e9), "--to", str(span[1] / 1e9)]
            analysed = [*argv[1:5], *when, "--influx-url", shim.url, "--influx-bucket", db, "--write"]
            assert analyse_command.main(analysed) == 0
        live_to = time.time_ns() // 1_000_000
        first = min(s[0].t_ns for s in recording.samples.values()) // 1_000_000
        last = max(s[-1].t_ns for s in recording.samples.values()) // 1_000_000
        filled.windows = {REC: (first, last), SIM: (live_from - 5000, live_to + 5000)}
        yield filled
    server.drop_database(db)


def wait_for(filled: Filled, q: str, at_least: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while (n := filled.count(q)) < at_least:
        assert time.monotonic() < deadline, f"{q!r}: {n} after {WAIT_S} s, expected {at_least}"
        time.sleep(0.2)


def send_junk(broker: Mosquitto) -> None:
    """One message the bridge must refuse (the dead-letter panel)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(f"soclab/{SITE}/pi-sim/junk/data", b"not json", qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def run(filled: Filled, query: str, window: str) -> list[dict[str, Any]]:
    from_ms, to_ms = filled.windows[window]
    low_limit = datasource_min_interval()
    text = render(query, from_ms=from_ms, to_ms=to_ms, variables={"site": SITE}, low_limit=low_limit)
    return filled.query(text)


# --- the dashboards' shape -----------------------------------------------------------------------


def test_every_panel_query_is_covered_here_and_is_raw_influxql_on_the_provisioned_source() -> None:
    found = set()
    for name, panel, target in targets():
        found.add((name, panel["title"], target["refId"]))
        assert target["datasource"]["uid"] == DATASOURCE_UID
        assert target["rawQuery"] is True
        query = target["query"]
        assert query.startswith(("SELECT ", "SHOW "))
        assert "$timeFilter" in query, f"{panel['title']}: ignores the time picker"
        assert "GROUP BY time($__interval)" in query
    assert found == set(EXPECTED)
    for name, board in dashboards().items():
        assert board["uid"].startswith("soclab-"), name
        for variable in board["templating"]["list"]:
            assert variable["datasource"]["uid"] == DATASOURCE_UID


def test_no_two_dashboards_share_a_uid_and_panels_do_not_overlap() -> None:
    boards = dashboards()
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for name, board in boards.items():
        cells = set()
        for panel in board["panels"]:
            g = panel["gridPos"]
            area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & area, f"{name}: {panel['title']} overlaps another panel"
            assert g["x"] + g["w"] <= 24
            cells |= area


# --- the queries on the data ---------------------------------------------------------------------


def test_the_site_variable_lists_the_site(filled: Filled) -> None:
    for board in dashboards().values():
        (variable,) = board["templating"]["list"]
        series = filled.query(variable["query"])
        assert {v[1] for s in series for v in s["values"]} == {SITE}


@pytest.mark.parametrize(("board", "title", "ref"), sorted(EXPECTED))
def test_each_panel_query_returns_its_series(filled: Filled, board: str, title: str, ref: str) -> None:
    columns, source = EXPECTED[(board, title, ref)]
    (panel,) = [p for p in dashboards()[board]["panels"] if p["title"] == title]
    (target,) = [t for t in panel["targets"] if t["refId"] == ref]
    series = run(filled, target["query"], source)
    assert series, f"{title} {ref}: no series in the {source} range"
    for s in series:
        assert s["columns"][0] == "time"
        assert set(s["columns"][1:]) == columns, s["columns"]
        assert {"node", "device"} <= set(s.get("tags", {})), s.get("tags")
        for index, column in enumerate(s["columns"][1:], start=1):
            assert any(row[index] is not None for row in s["values"]), f"{title} {ref}: {column} all null"
    if source == REC:
        assert {s["tags"]["node"] for s in series} == {"pi-rec"}


def test_the_overview_overlays_the_three_recorded_instruments(filled: Filled) -> None:
    panel = panel_titled("lab-overview.json", "Battery voltage")
    by_device = {}
    for target in panel["targets"]:
        (series,) = run(filled, target["query"], REC)
        by_device[series["tags"]["device"]] = sorted(row[1] for row in series["values"] if row[1] is not None)
    assert set(by_device) == {"labjack", "mppt", "eload"}
    medians = []
    for device, volts in by_device.items():
        # A 12 V battery between 12.2 V discharged and 14.5 V charging; at the end the supplies drop.
        assert 11.5 < volts[len(volts) // 20] < volts[-1] < 15.0, device
        medians.append(volts[len(volts) // 2])
    assert max(medians) - min(medians) < 0.3  # the three instruments agree
    assert len(by_device["mppt"]) > 500  # 10 s means over two and a half hours


def test_every_replayed_sample_is_counted_by_the_health_board(filled: Filled) -> None:
    query = panel_titled("pipeline-health.json", "Samples in")["targets"][0]["query"]
    counts = {s["tags"]["device"]: sum(row[1] for row in s["values"]) for s in run(filled, query, REC)}
    assert counts == {device: len(samples) for device, samples in filled.recording.samples.items()}


def test_the_lab_asks_the_mppt_for_the_temperatures_of_the_panel() -> None:
    assert all(FIELDS[name].unit == "degC" for name in TEMPERATURES)
    config = tomllib.loads((REPO / "dev/soclab/dev/lab/publishers/mppt.toml").read_text())
    assert sorted(config["instrument"]["extra_fields"]) == sorted(TEMPERATURES)
