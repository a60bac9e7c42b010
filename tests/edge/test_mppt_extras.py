"""Unpublished items (the temperatures) asked for periodically, over a real pty, in each dialect."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from soclab.dev.sim.battery import Battery
from soclab.dev.sim.instruments.libresolar_mppt import MpptSimulator
from soclab.edge.instruments.base import Reading
from soclab.edge.instruments.libresolar_mppt import MpptDriver

TEMPERATURES = ["int_degc", "mosfet_degc", "bat_degc"]


def read_for(driver: MpptDriver, seconds: float) -> list[Reading]:
    readings: list[Reading] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readings += driver.read(0.2)
    return readings


@pytest.mark.parametrize("dialect", ["v21", "v0.4", "v0.5"])
def test_temperatures_ride_on_publications_every_interval(tmp_path: Path, dialect: str) -> None:
    sim = MpptSimulator(Battery(), tmp_path / "mppt", dialect=dialect, period_s=0.1, ambient_degc=20.0)
    with sim, MpptDriver(str(sim.port.link), extra_fields=TEMPERATURES, extra_every_s=0.5) as driver:
        readings = read_for(driver, 3.0)
        counters = dict(driver.health.counters)
    assert counters["publications"] == len(readings), "a publication was lost to the extra requests"
    with_temperatures = [r for r in readings if "int_degc" in r.values]
    # Every 0.5 s over 3 s: 6 or 7 on an idle machine, fewer when it is busy; never every sample.
    assert 2 <= len(with_temperatures) <= 7
    assert len(with_temperatures) < len(readings) / 2
    assert counters["extra_reads"] >= len(with_temperatures)
    assert counters.get("extra_errors", 0) == 0
    for reading in with_temperatures:
        # The simulator: battery at the model's 25 degC, MCU and MOSFET a little above ambient.
        assert reading.values["bat_degc"] == pytest.approx(25.0, abs=0.1)
        assert reading.values["int_degc"] == pytest.approx(23.0, abs=0.5)
        assert reading.values["mosfet_degc"] == pytest.approx(24.0, abs=1.0)
        assert {"bat_v", "bat_a"} <= set(reading.values), "the publication's own values stay"


def test_an_item_the_firmware_lacks_is_left_out_once(tmp_path: Path, caplog) -> None:
    with MpptSimulator(Battery(), tmp_path / "mppt", period_s=0.1) as sim:
        sim.remove_item("output", "Mosfet_degC")
        with MpptDriver(str(sim.port.link), extra_fields=TEMPERATURES, extra_every_s=0.3) as driver:
            readings = read_for(driver, 2.0)
            counters = dict(driver.health.counters)
    with_temperatures = [r for r in readings if "int_degc" in r.values]
    assert len(with_temperatures) >= 2
    assert all("bat_degc" in r.values and "mosfet_degc" not in r.values for r in with_temperatures)
    assert counters["publications"] == len(readings)
    assert counters.get("extra_errors", 0) == 0
    unavailable = [r for r in caplog.records if "event=extra_unavailable" in r.getMessage()]
    assert len(unavailable) == 1
    assert "field=mosfet_degc" in unavailable[0].getMessage()
    assert unavailable[0].levelno == logging.WARNING


def test_extras_from_the_configuration() -> None:
    driver = MpptDriver.from_config(
        {"port": "/dev/null", "extra_fields": ["int_degc", "bat_degc"], "extra_every_s": "30"}
    )
    assert driver.extra_fields == ("int_degc", "bat_degc")
    assert driver.extra_every_s == 30.0
    from_environment = MpptDriver.from_config({"port": "/dev/null", "extra_fields": "int_degc, bat_degc"})
    assert from_environment.extra_fields == ("int_degc", "bat_degc")


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"extra_fields": ["cpu_degc"]}, "unknown extra_fields ['cpu_degc']"),
        ({"extra_fields": "int_degc"}, "a list of field names"),
        ({"extra_fields": ["int_degc"], "extra_every_s": 0}, "extra_every_s must be > 0"),
    ],
)
def test_bad_extras_are_refused(options: dict, error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error.replace("[", r"\[").replace("]", r"\]")):
        MpptDriver("/dev/null", **options)
