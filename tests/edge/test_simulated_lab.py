"""The simulated battery, the profiles acting on it, and one battery seen by three instruments."""

from __future__ import annotations

import time

import pytest

from soclab.dev.data import RECORDING
from soclab.dev.sim.battery import Battery, BatteryParams
from soclab.dev.sim.instruments import labjack_t7 as ljm_standin
from soclab.dev.sim.instruments.ea_el3000 import EaLoadSimulator
from soclab.dev.sim.instruments.libresolar_mppt import MpptSimulator
from soclab.dev.sim.lab import SimulatedLab
from soclab.dev.sim.profiles import LAB_EVENING, Phase, ReplayProfile, ScriptedProfile
from soclab.edge.instruments import build, kind


def test_coulomb_counting_and_voltage_follow_the_current():
    battery = Battery(BatteryParams(capacity_ah=10.0), soc=0.5)
    rest = battery.state().voltage_v
    battery.set_current("load", -5.0)
    loaded = battery.step(3600)  # one hour at 5 A: half the capacity
    assert loaded.soc == pytest.approx(0.0, abs=1e-9)
    assert loaded.discharged_ah == pytest.approx(5.0)
    assert loaded.voltage_v < loaded.ocv_v < rest  # IR drop under load, lower OCV when emptier
    battery.set_current("load", 0.0)
    battery.set_current("charger", 2.0)
    charging = battery.step(1800)
    assert charging.soc == pytest.approx(0.1)
    assert charging.voltage_v > charging.ocv_v


def test_the_rc_pairs_relax_after_the_load_stops():
    battery = Battery(soc=0.8)
    battery.set_current("load", -3.0)
    battery.step(600)
    battery.set_current("load", 0.0)
    just_after = battery.step(1).voltage_v
    later = battery.step(3600)
    assert just_after < later.voltage_v == pytest.approx(later.ocv_v, abs=0.01)


def test_bad_parameters_and_currents_are_refused():
    with pytest.raises(ValueError, match="increase"):
        BatteryParams(ocv_soc=(0.5, 0.1), ocv_v=(12.0, 11.0))
    with pytest.raises(ValueError, match="finite"):
        Battery().set_current("load", float("nan"))


def test_the_scripted_profile_repeats():
    profile = ScriptedProfile((Phase(10, load_a=3.0), Phase(5, charge_a=2.0)))
    assert profile.at(3).load_a == 3.0
    assert profile.at(12).charge_a == 2.0
    assert profile.at(15 + 3) == profile.at(3)
    assert LAB_EVENING.duration_s == 1200


def test_the_replay_follows_the_recording_sorted_by_time():
    profile = ReplayProfile.from_csv(RECORDING)
    assert list(profile.times_s) == sorted(profile.times_s)
    assert len(profile.times_s) == 7682  # the MPPT's Bat_A samples
    # 22:40-23:20 UTC the load discharged at about 3 A; 23:30-23:50 rest; from 23:55 a charge.
    start = 1622238915.0  # the first sample, 21:55:15 UTC
    assert profile.at(1622241600 + 1200 - start).load_a == pytest.approx(3.0, abs=0.2)
    assert profile.at(1622245800 - start).charge_a == pytest.approx(0.0, abs=0.05)
    assert profile.at(1622246200 - start).charge_a > 3.5


def test_three_instruments_see_one_battery(tmp_path):
    """The MPPT's, the LabJack's and the load's readings agree within their sensors' errors."""
    battery = Battery(soc=0.7)
    mppt_sim = MpptSimulator(battery, tmp_path / "mppt", period_s=0.2)
    eload_sim = EaLoadSimulator(battery, tmp_path / "eload")
    lab = SimulatedLab(
        battery,
        ScriptedProfile((Phase(3600, load_a=3.0),)),
        {"mppt": mppt_sim, "eload": eload_sim},
        state_file=tmp_path / "battery.state",
    )
    lab.start()
    tables = {  # as a publisher builds them: through the registry and the typed options
        "mppt": {"port": str(mppt_sim.port.link)},
        "eload": {"port": str(eload_sim.port.link), "poll_hz": 5.0},
        "labjack": {
            "backend": "standin", "mode": "command", "rate_hz": 5.0,
            "channels": {
                "bat_a": {"ain": "AIN1", "calibration": "lem_la55p", "resistor_ohm": 150.0},
                "bat_v": {"ain": "AIN2", "calibration": "divider", "ratio": 2.0},
            },
            "standin": {"battery_file": str(tmp_path / "battery.state"), "max_age_s": 2.0},
        },
    }  # fmt: skip
    mppt, eload, labjack = (build(name, kind(name).load_options(table)) for name, table in tables.items())
    try:
        time.sleep(1.0)  # the load takes its current, the RC pairs settle a little
        last = {}
        deadline = time.monotonic() + 20
        for driver in (mppt, eload, labjack):
            driver.open()
            while driver.kind not in last:
                assert time.monotonic() < deadline, f"no reading from {driver.kind}"
                readings = driver.read(timeout=0.5)
                if readings:
                    last[driver.kind] = readings[-1].values
        truth = battery.state()
    finally:
        for driver in (mppt, eload, labjack):
            driver.close()
        lab.stop()
        ljm_standin.reset()
    # The battery moves little in a second at 3 A; the tolerances are the sensors' (2 decimals for
    # the MPPT, the load's 16-bit scale of 160 V / 60 A, the LabJack's noise) plus that drift.
    assert truth.current_a == pytest.approx(-3.0, abs=0.05)
    for name, tolerance_v in (("mppt", 0.02), ("eload", 0.02), ("labjack", 0.02)):
        assert last[name]["bat_v"] == pytest.approx(truth.voltage_v, abs=tolerance_v), name
    assert last["mppt"]["bat_a"] == pytest.approx(truth.current_a, abs=0.02)
    assert last["eload"]["bat_a"] == pytest.approx(-3.0, abs=0.01)
    assert last["labjack"]["bat_a"] == pytest.approx(truth.current_a, abs=0.05)
