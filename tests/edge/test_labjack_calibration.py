"""LabJack calibrations and channel settings: the maths, the validation, the TOML shape."""

from __future__ import annotations

import dataclasses
import math
import tomllib

import pytest

from soclab.dev.sim.instruments import labjack_t7 as standin
from soclab.edge.instruments import build, kind
from soclab.edge.instruments.labjack_t7.calibration import Divider, LemCurrent, Raw, calibration_from_config
from soclab.edge.instruments.labjack_t7.channels import ChannelSpec
from soclab.edge.instruments.labjack_t7.driver import LabJackDriver
from soclab.edge.instruments.labjack_t7.options import LabJackOptions
from soclab.wire.settings import ConfigError


# --- LEM LA 55-P ----------------------------------------------------------------------------------
def test_lem_known_volts_give_known_amps():
    # 3 A through one turn: I_S = 3 mA, into 150 ohm = 0.45 V
    assert LemCurrent(150.0).apply(0.45) == pytest.approx(3.0)
    assert LemCurrent(150.0).apply(-0.45) == pytest.approx(-3.0)
    # two primary turns double the ampere-turns: the same 0.45 V is 1.5 A
    assert LemCurrent(150.0, turns=2).apply(0.45) == pytest.approx(1.5)
    assert LemCurrent(100.0).primary_a(0.1) == pytest.approx(1.0)


def test_lem_gain_then_offset_in_amps():
    cal = LemCurrent(150.0, gain=1.04, offset_a=-0.02)
    assert cal.apply(0.45) == pytest.approx(1.04 * 3.0 - 0.02)
    assert cal.apply(cal.volts_for(-2.9)) == pytest.approx(-2.9)


def test_divider_and_raw():
    assert Divider(4.0).apply(3.2) == pytest.approx(12.8)
    assert Divider(4.0, gain=0.99, offset_v=0.01).apply(3.2) == pytest.approx(0.99 * 12.8 + 0.01)
    assert Divider(2.0).volts_for(14.4) == pytest.approx(7.2)
    assert Raw().apply(1.234) == 1.234


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LemCurrent(0.0), "resistor_ohm"),
        (lambda: LemCurrent(-150.0), "resistor_ohm"),
        (lambda: LemCurrent(math.nan), "resistor_ohm"),
        (lambda: LemCurrent(150.0, turns=0), "turns"),
        (lambda: LemCurrent(150.0, turns=1.5), "turns"),
        (lambda: LemCurrent(150.0, turns=True), "turns"),
        (lambda: LemCurrent(150.0, gain=0.0), "gain"),
        (lambda: LemCurrent(150.0, offset_a=math.inf), "offset_a"),
        (lambda: Divider(0.5), "ratio"),
        (lambda: Divider(4.0, gain=0), "gain"),
    ],
)
def test_calibrations_validate_themselves(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_calibrations_are_frozen():
    cal = LemCurrent(150.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cal.gain = 2.0  # type: ignore[misc]


def test_calibration_from_config():
    cal = calibration_from_config("lem_la55p", {"resistor_ohm": 150.0, "turns": 2, "offset_a": 0.1})
    assert cal == LemCurrent(150.0, turns=2, offset_a=0.1)
    assert calibration_from_config("divider", {"ratio": 4.0}) == Divider(4.0)
    assert calibration_from_config("raw", {}) == Raw()
    with pytest.raises(ValueError, match="unknown calibration"):
        calibration_from_config("shunt", {})
    with pytest.raises(ValueError, match="ohms"):
        calibration_from_config("lem_la55p", {"ohms": 150.0})


# --- channels -------------------------------------------------------------------------------------
def test_channel_settings():
    spec = ChannelSpec("AIN2", calibration=Divider(4.0), range_v=1.0, resolution_index=8, negative_ch=3)
    assert spec.settings() == [("AIN2_RANGE", 1.0), ("AIN2_RESOLUTION_INDEX", 8), ("AIN2_NEGATIVE_CH", 3)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ain": "AIN"},
        {"ain": "ain1"},
        {"ain": "AIN1", "range_v": 5.0},
        {"ain": "AIN1", "resolution_index": 13},
        {"ain": "AIN1", "negative_ch": 2},  # differential pairs start on an even AIN
        {"ain": "AIN2", "negative_ch": 4},
    ],
)
def test_channel_spec_validates(kwargs):
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        ChannelSpec(**kwargs)


def options(channels: dict, **settings) -> LabJackOptions:
    return kind("labjack").load_options({"backend": "standin", "channels": channels, **settings})


LEM = {"ain": "AIN1", "calibration": "lem_la55p", "resistor_ohm": 150.0}
DIVIDER = {"ain": "AIN2", "calibration": "divider", "ratio": 4.0}


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        ({"bat_v": LEM}, "name it *_a"),
        ({"bat_a": {"ain": "AIN1"}}, "name it *_v"),  # raw volts are not amps
        ({"Bat_A": LEM}, "must match"),
        ({"bat_a": LEM, "lem_a": LEM}, "at most once"),
        ({}, "tables are needed"),
        ({"bat_v": {"ain": "AIN2", "calibration": "divider"}}, "ratio"),
        ({"bat_v": {**DIVIDER, "resistor_ohm": 1.0}}, "resistor_ohm"),
        ({"bat_v": {**DIVIDER, "calibration": "shunt"}}, "[instrument.channels.bat_v] calibration"),
        ({"bat_v": {**DIVIDER, "ohms": 1}}, "[instrument.channels.bat_v] has no setting 'ohms'"),
    ],
)
def test_channels_are_checked_when_the_settings_load(channels, message):
    with pytest.raises(ConfigError) as error:
        options(channels)
    assert message in str(error.value)


def test_a_raw_channel_keeps_its_volts():
    assert options({"ain1_v": {"ain": "AIN1"}}).specs()["ain1_v"] == ChannelSpec("AIN1")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"mode": "burst"}, "[instrument] mode: Invalid enum value 'burst'"),
        ({"rate_hz": 0}, "[instrument] rate_hz must be float > 0.0"),
        ({"rate_hz": 1000}, "[instrument] rate_hz must be float <= 100.0"),
        ({"mode": "stream", "scan_rate_hz": 200_000}, "at most 100000 samples/s"),
        ({"mode": "stream", "scans_per_read": 0}, "[instrument] scans_per_read must be int >= 1"),
        ({"mode": "stream", "scan_rate_hz": 100, "scans_per_read": 1000}, "at most 5.0 s"),  # a 10 s read
        ({"stream_resolution_index": 9}, "[instrument] stream_resolution_index must be int <= 8"),
        ({"max_clock_offset_ms": 0}, "[instrument] max_clock_offset_ms must be float > 0.0"),
        ({"backend": "u12"}, "[instrument] backend: Invalid enum value 'u12'"),
        ({"backend": "ljm", "standin": {"battery_file": "x"}}, "only for backend = 'standin'"),
    ],
)
def test_driver_settings_are_checked(bad, message):
    with pytest.raises(ConfigError) as error:
        options({"bat_v": DIVIDER}, **bad)
    assert message in str(error.value)


# --- the [instrument] table -------------------------------------------------------------------------
EXAMPLE = """
[instrument]
backend = "standin"
mode = "stream"
scan_rate_hz = 2000.0
scans_per_read = 200
stream_settling_us = 0.0
stream_resolution_index = 0
max_clock_offset_ms = 5.0
device_type = "T7"
connection_type = "USB"
identifier = "ANY"

[instrument.channels.bat_a]
ain = "AIN1"
range_v = 10.0
calibration = "lem_la55p"
resistor_ohm = 150.0
turns = 1
gain = 1.0
offset_a = 0.0

[instrument.channels.bat_v]
ain = "AIN2"
calibration = "divider"
ratio = 2.0

[instrument.standin]
battery_file = "/run/soclab/battery.state"
resistor_ohm = 150.0
divider_ratio = 2.0
drift_ppm = 20.0
"""


def test_the_table_builds_the_driver_and_wires_the_standin():
    table = tomllib.loads(EXAMPLE)["instrument"]
    try:
        driver = build("labjack", kind("labjack").load_options(table))
        assert isinstance(driver, LabJackDriver)
        assert driver.mode == "stream"
        assert driver.scan_rate_hz == 2000.0
        assert driver.channels["bat_a"] == ChannelSpec("AIN1", calibration=LemCurrent(150.0))
        assert driver.channels["bat_v"].calibration == Divider(2.0)
        ident = driver.identity()
        assert (
            ident["channel_bat_a"]
            == "AIN1 single-ended +-10 V, lem_la55p r_m=150 ohm turns=1 gain=1 offset_a=0"
        )
    finally:
        standin.reset()


def test_environment_strings_are_converted_once_and_mistakes_named():
    env = {
        "SOCLAB_INSTRUMENT_RATE_HZ": "10",
        "SOCLAB_INSTRUMENT_CHANNELS__BAT_V__RATIO": "2.5",
        "SOCLAB_INSTRUMENT_STANDIN__BATTERY_FILE": "/run/b",
    }
    opts = kind("labjack").load_options({"backend": "standin", "channels": {"bat_v": DIVIDER}}, env)
    assert opts.rate_hz == 10.0
    assert opts.specs()["bat_v"].calibration == Divider(2.5)
    assert opts.standin == {"battery_file": "/run/b"}
    for variable, value, message in (
        ("SOCLAB_INSTRUMENT_RATE_HZ", "fast", "SOCLAB_INSTRUMENT_RATE_HZ='fast' is not a valid float"),
        ("SOCLAB_INSTRUMENT_SCAN_RATE", "1000", "[instrument] has no setting 'scan_rate'"),
        ("SOCLAB_INSTRUMENT_CHANNELS__BAT_V__TURNS", "x", "CHANNELS__BAT_V__TURNS='x' is not a valid int"),
        ("SOCLAB_INSTRUMENT_CHANNELS", "x", "set its keys with '__'"),
    ):
        with pytest.raises(ConfigError) as error:
            kind("labjack").load_options(
                {"backend": "standin", "channels": {"bat_v": DIVIDER}}, {variable: value}
            )
        assert message in str(error.value)
