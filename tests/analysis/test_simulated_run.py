"""The reference SoC against the truth: a discharge/rest/charge run on the simulated lab.

The simulated battery (soclab.dev.sim) knows its true SoC; here it is small (0.05 Ah), so that
a minute of 3 A moves it by a third. The lab runs in this process (battery, the MPPT's and the
e-load's simulators on pseudo-terminals, a scripted profile); the three real publishers run as
processes (the LabJack's through the LJM stand-in reading the shared battery file), the bridge
stores their samples in InfluxDB 1.6.7. While it runs, the test samples the battery's true state
(its smallest exposure: ``Battery.state()``, read from this process) and writes the run's
``run_events`` in the shape the project's plan fixes, as the run controller would.

Stated figures (printed by the test): the reference SoC stays within ``SOC_ERROR_PCT`` of the
truth over the whole run, and the reference Ah agrees with the e-load's own Ah counter within
``EL_AH_ERROR_PCT`` over the discharge.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from soclab.dev.lab.processes import Children
from soclab.dev.sim.battery import Battery, BatteryParams
from soclab.dev.sim.instruments.ea_el3000 import EaLoadSimulator
from soclab.dev.sim.instruments.libresolar_mppt import MpptSimulator
from soclab.dev.sim.lab import SimulatedLab
from soclab.dev.sim.profiles import Phase, ScriptedProfile, Setpoint
from soclab.tools import analysis
from soclab.tools.analysis import report
from soclab.tools.analysis.settings import AnalysisSettings, BatterySettings
from soclab.tools.influx import InfluxClient, InfluxSettings

SOC_ERROR_PCT = 1.0  # stated error of the reference SoC against the truth
EL_AH_ERROR_PCT = 0.5  # stated agreement of the reference Ah with the e-load's counter
CAPACITY_AH = 0.05
NODE = "pi-sim"
RUN = "sim-run-1"
# (seconds, charge A, load A, description as a run program would write it)
STEPS = [
    (20.0, 0.0, 0.0, "rest 20 s"),
    (20.0, 0.0, 3.0, "discharge at 3 A for 20 s"),
    (8.0, 0.0, 0.0, "rest 8 s"),
    (20.0, 3.0, 0.0, "charge at 3 A for 20 s"),
    (5.0, 0.0, 0.0, "rest 5 s"),
]


class StepClock:
    """The profile as a run controller sees it: the wall time at which each step began."""

    def __init__(self, profile: ScriptedProfile) -> None:
        self.profile = profile
        self.duration_s = profile.duration_s
        self.began: list[int] = []  # time.time_ns() of each step's first setpoint

    def at(self, t_s: float) -> Setpoint:
        index, elapsed = len(self.profile.phases) - 1, 0.0
        for number, phase in enumerate(self.profile.phases):
            if t_s < elapsed + phase.duration_s:
                index = number
                break
            elapsed += phase.duration_s
        while len(self.began) <= index:
            self.began.append(time.time_ns())
        return self.profile.at(t_s)


@dataclass
class SimulatedRun:
    result: analysis.Analysis
    truth: pd.DataFrame  # index t_ns: soc, discharged_ah
    influx: InfluxSettings
    site: str


@pytest.fixture(scope="module")
def simulated_run(
    tmp_path_factory: pytest.TempPathFactory, mosquitto, _influx_server
) -> Iterator[SimulatedRun]:
    server, shim = _influx_server
    site = "sim-analysis"
    db = "analysis_sim"
    server.create_database(db)
    folder = tmp_path_factory.mktemp("simulated-run")
    influx = InfluxSettings(url=shim.url, bucket=db, token="unused:unused")
    battery = Battery(BatteryParams(capacity_ah=CAPACITY_AH), soc=0.6)
    phases = [Phase(s, charge_a=c, load_a=lo) for s, c, lo, _ in STEPS]
    clock = StepClock(ScriptedProfile((*phases, Phase(600.0))))
    sims = {
        "mppt": MpptSimulator(battery, folder / "dev" / "mppt", period_s=0.5),
        "eload": EaLoadSimulator(battery, folder / "dev" / "eload"),
    }
    lab = SimulatedLab(battery, clock, sims, state_file=folder / "battery.state")
    children = Children(folder / "logs")
    bridge = _bridge(mosquitto, shim.url, db, site)
    truth: list[tuple[int, float, float]] = []
    sampling = threading.Event()

    def sample_truth() -> None:
        while not sampling.wait(0.02):
            state = battery.state()
            truth.append((time.time_ns(), state.soc, state.discharged_ah))

    sampler = threading.Thread(target=sample_truth, daemon=True)
    try:
        lab.start()
        sampler.start()
        env = {
            "SOCLAB_SOURCE_SITE": site,
            "SOCLAB_SOURCE_NODE": NODE,
            "SOCLAB_MQTT_HOST": mosquitto.host,
            "SOCLAB_MQTT_PORT": str(mosquitto.port),
            "SOCLAB_SPOOL_PATH": str(folder / "spool" / "{device}.sqlite"),
        }
        for name in ("labjack", "mppt", "eload"):
            # The LJM stand-in gives a read's scans the battery's state at the read (its shared
            # file holds the latest two snapshots only): small reads keep that lag at 50 ms.
            extra = (
                {
                    "SOCLAB_INSTRUMENT_STANDIN__BATTERY_FILE": str(folder / "battery.state"),
                    "SOCLAB_INSTRUMENT_SCANS_PER_READ": "5",
                }
                if name == "labjack"
                else {"SOCLAB_INSTRUMENT_PORT": str(folder / "dev" / name)}
            )
            config = files("soclab.dev.lab") / "publishers" / f"{name}.toml"
            command = ["-m", "soclab.edge.publisher", "--config", str(config)]
            children.start(name, command, env={**env, **extra})
        deadline = time.monotonic() + sum(s for s, *_ in STEPS) + 30
        while len(clock.began) <= len(STEPS):  # until the last step has ended
            assert not children.failed(), f"a publisher died: {children.failed()}, logs in {folder / 'logs'}"
            assert time.monotonic() < deadline, f"the profile is stuck: {clock.began}"
            time.sleep(0.2)
        _write_run_events(influx, site, clock.began)
        sampling.set()
        sampler.join()
        children.stop_all()  # publishers flush what they have
        _wait_stored(server, db, clock.began[-1])
    finally:
        sampling.set()
        children.stop_all()
        lab.stop()
        bridge.stop()
    assert bridge.failure is None
    client = InfluxClient(influx)
    battery_settings = BatterySettings(capacity_ah=CAPACITY_AH, rest_min_s=5.0, full_v=14.4)
    options = AnalysisSettings(min_step_s=3.0)
    data = analysis.load(client, site, NODE, run=RUN)
    result = analysis.analyse(data, battery_settings, options)
    frame = pd.DataFrame(truth, columns=["t_ns", "soc", "discharged_ah"]).set_index("t_ns")
    yield SimulatedRun(result, frame, influx, site)
    server.drop_database(db)


def _bridge(broker, url: str, db: str, site: str):  # type: ignore[no-untyped-def]
    from soclab.cloud.bridge import Bridge, BridgeConfig, InfluxConfig, MqttConfig

    config = BridgeConfig(
        mqtt=MqttConfig(host=broker.host, port=broker.port),
        influx=InfluxConfig(url=url, org="soclab", bucket=db, token="unused:unused"),
        id="analysis-sim",
        site=site,
    )
    bridge = Bridge(config).start()
    bridge.wait_subscribed(30)
    return bridge


def _write_run_events(influx: InfluxSettings, site: str, began: list[int]) -> None:
    """The run's events in the plan's shape (measurement run_events; tags site, node, run), at
    the times the steps began, as the run controller writes them."""
    points = []
    for number, (_, _, _, description) in enumerate(STEPS, start=1):
        event, reason = ("start", "run started") if number == 1 else ("step", "time elapsed")
        points.append(_event(site, began[number - 1], event, number, description, reason))
    points.append(_event(site, began[len(STEPS)], "end", len(STEPS), STEPS[-1][3], "program finished"))
    with InfluxDBClient(url=influx.url, token=influx.token, org="-") as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket=influx.bucket, record=points, write_precision=WritePrecision.NS
        )


def _event(site: str, t_ns: int, event: str, step: int, description: str, reason: str) -> Point:
    return (
        Point("run_events")
        .tag("site", site)
        .tag("node", NODE)
        .tag("run", RUN)
        .field("event", event)
        .field("cycle", 1)
        .field("step", step)
        .field("step_index", step)
        .field("description", description)
        .field("reason", reason)
        .time(t_ns, WritePrecision.NS)
    )


def _wait_stored(server, db: str, until_ns: int) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    q = f"SELECT last(seq) FROM labjack, eload, mppt WHERE node = '{NODE}'"
    while True:
        series = server.query(q, db=db)
        if len(series) == 3 and all(s["values"][0][0] >= until_ns for s in series):
            return
        assert time.monotonic() < deadline, f"samples up to the run's end not stored after 30 s: {series}"
        time.sleep(0.2)


@pytest.mark.slow
def test_the_reference_soc_follows_the_true_soc(simulated_run: SimulatedRun) -> None:
    result, truth = simulated_run.result, simulated_run.truth
    trace = result.reference.trace
    assert result.reference.anchor is not None
    assert result.reference.anchor.kind == "ocv"  # the first rest: the battery starts relaxed
    t = trace.index.to_numpy(dtype=np.int64)
    inside = (t >= truth.index[0]) & (t <= truth.index[-1])
    true_soc = 100 * np.interp(t[inside], truth.index.to_numpy(dtype=float), truth["soc"].to_numpy())
    error = trace["soc_pct"].to_numpy()[inside] - true_soc
    print(f"reference SoC - true SoC over the run: max |error| {np.abs(error).max():.3f} % SoC, "
          f"mean {error.mean():+.3f} %, {inside.sum()} samples")  # fmt: skip
    assert np.abs(error).max() < SOC_ERROR_PCT
    assert np.ptp(true_soc) > 30  # the run did move the SoC


@pytest.mark.slow
def test_the_steps_come_from_the_run_events(simulated_run: SimulatedRun) -> None:
    steps = simulated_run.result.steps
    assert steps["description"].tolist() == [d for *_, d in STEPS]
    assert steps["kind"].tolist() == ["rest", "discharge", "rest", "charge", "rest"]
    assert steps["end_reason"].tolist() == ["time elapsed"] * 4 + ["program finished"]
    discharge, charge = steps.iloc[1], steps.iloc[3]
    assert discharge["discharged_ah"] == pytest.approx(3 * 20 / 3600, rel=0.02)
    assert charge["charged_ah"] == pytest.approx(3 * 20 / 3600, rel=0.02)
    assert discharge["i_mean_a"] == pytest.approx(-3.0, rel=0.02)
    (cycle,) = simulated_run.result.cycles.itertuples()
    assert cycle.coulombic_efficiency == pytest.approx(1.0, abs=0.02)  # the model loses no charge
    assert cycle.energy_efficiency < 1.0  # but the resistances cost energy


@pytest.mark.slow
def test_the_reference_ah_agrees_with_the_eloads_counter(simulated_run: SimulatedRun) -> None:
    (check,) = simulated_run.result.eload
    print(f"discharge: e-load counter {check.eload_ah:.6f} Ah, reference {check.reference_ah:.6f} Ah,"
          f" {check.difference_pct:+.3f} %")  # fmt: skip
    assert check.step == 2
    assert not check.counter_reset
    assert abs(check.difference_pct) < EL_AH_ERROR_PCT
    (fit,) = [f for f in simulated_run.result.fits if (f.other, f.quantity) == ("mppt", "bat_a")]
    assert fit.gain == pytest.approx(1.0, abs=0.01)  # the simulated instruments agree


@pytest.mark.slow
def test_the_report_of_the_run_shows_the_mppts_soc_beside_the_reference(
    simulated_run: SimulatedRun, tmp_path: Path
) -> None:
    page, png = tmp_path / "report.html", tmp_path / "report.png"
    report.write_report(simulated_run.result, page, png)
    text = page.read_text()
    assert "run sim-run-1" in text
    assert text.count("data:image/png;base64,") == 3
    assert png.read_bytes()[:4] == b"\x89PNG"
