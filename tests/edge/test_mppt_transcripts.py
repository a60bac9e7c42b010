"""The MPPT driver against what the real ThingSet library answers, byte for byte (tests/data).

Each real-library transcript is walked from its first line to its last: the driver opens (and
asks who the controller is), reads the publications, and a driver call stands for each request
the transcript holds; the transcript fails the test on any byte the driver writes that it does
not expect, and on any step left unused.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from transcript import THINGSET, Exchange, Transcript, Unsolicited, Vanish, thingset_steps

from soclab.edge.instruments import kind
from soclab.edge.instruments.base import ConnectionLost, Health, Reading
from soclab.edge.instruments.libresolar_mppt import codec
from soclab.edge.instruments.libresolar_mppt.codec import Response
from soclab.edge.instruments.libresolar_mppt.driver import (
    BadRequest,
    ChargeLimits,
    DialectUnknown,
    Forbidden,
    Inputs,
    MpptDriver,
    NoResponse,
    NotFound,
    Unauthorized,
    Unsupported,
)
from soclab.edge.instruments.libresolar_mppt.fields import DIALECTS, map_items
from soclab.edge.instruments.libresolar_mppt.link import ThingSetLink
from soclab.edge.instruments.libresolar_mppt.options import MpptOptions

V21 = THINGSET / "v21.0-transcript.txt"
V04 = THINGSET / "v21.0-57-g46807de-transcript.txt"
NAN = THINGSET / "nan-answers-transcript.txt"
FAST = {"read_slice_s": 0.01, "request_timeout_s": 0.5, "identity_timeout_s": 0.5}
TEMPERATURES = ("int_degc", "mosfet_degc", "bat_degc")


def mppt(transcript: Transcript, **options: Any) -> MpptDriver:
    return MpptDriver(MpptOptions(port="/dev/ttyACM0", **{**FAST, **options}), serial_factory=transcript)


def read_all(driver: MpptDriver, count: int) -> list[Reading]:
    """``count`` readings (each read() takes what one wait brought)."""
    readings: list[Reading] = []
    for _ in range(4 * count):
        readings += driver.read(0.2)
        if len(readings) >= count:
            break
    assert len(readings) == count, readings
    return readings


# --- firmware v21.0 (ThingSet v0.3), what the lab ran ----------------------------------------------
def test_v21_transcript_end_to_end() -> None:
    port = Transcript.thingset(V21)
    driver = mppt(port)
    driver.open()
    assert port.opened[0][0] == ("/dev/ttyACM0", 115200)
    assert driver.identity() == {
        "serial_number": "4B3Q7WXZ",
        "manufacturer": "Libre Solar",
        "model": "MPPT 1210 HUS",
        "hardware_version": "v0.7",
        "firmware_version": "v21.0",
        "dialect": "v21",
    }
    readings = read_all(driver, 3)
    assert [r.values["uptime_s"] for r in readings] == [1, 2, 3]
    assert readings[0].values == {
        "uptime_s": 1, "bat_v": 12.51, "bat_a": -1.12, "soc_pct": 61, "chg_state": 1, "dcdc_state": 1,
        "solar_v": 18.2, "solar_a": 0.07, "load_a": 0.32, "load_info": 1, "usb_info": 1, "error_flags": 0,
        "deep_dis_count": 2, "bat_usable_ah": 48.5, "solar_in_day_wh": 0.07, "load_out_day_wh": 0.01,
        "bat_chg_day_wh": 0.05, "bat_dis_day_wh": 0.02, "dis_ah": 3,
    }  # fmt: skip
    assert [r.t_ns for r in readings] == sorted({r.t_ns for r in readings})

    output = driver.read_items("output")
    assert (output["Bat_degC"], output["ChgTarget_V"]) == (24.3, 14.4)
    assert driver.read_items("output", ["Bat_V", "Int_degC"]) == {"Bat_V": 12.53, "Int_degC": 27.3}
    with pytest.raises(NotFound):
        driver.read_items("output", ["Mosfet_degC"])  # no MOSFET sensor on this board
    assert driver.read_items("rec")["FullChgCount"] == 7
    conf = driver.read_items("conf")
    assert (conf["BatChgMax_A"], conf["Topping_V"], conf["ToppingCutoff_A"]) == (10.0, 14.4, 1.0)
    driver.write_conf({"BatNom_Ah": 12.0})
    assert driver.read_items("conf", ["BatNom_Ah"]) == {"BatNom_Ah": 12.0}
    driver.set_load_output(False)
    assert driver.read_inputs() == Inputs(load=False, usb=True, charging=True)
    driver.set_input(LoadEn=True, UsbEn=True, DcdcEn=True)
    driver.set_publication(True)
    assert driver.request("?pub/serial/IDs").payload == [i.name for i in DIALECTS["v21"].published]
    with pytest.raises(NotFound):
        driver.request("?nosuchgroup")
    with pytest.raises(Forbidden):
        driver.request('=output {"Bat_V":1}')  # a measurement cannot be written
    with pytest.raises(Unauthorized):
        driver.request('=rec {"DeepDisCount":0}')  # records are write-protected
    with pytest.raises(BadRequest):
        driver.request('?output ["Bat_V"')
    assert "Topping_V" in driver.request("?conf/").payload
    driver.reset()  # the firmware reboots without answering
    port.assert_done()
    counters = driver.health.counters
    assert counters["request_errors"] == 5  # the five errors provoked above, nothing else
    assert (counters["publications"], counters["parse_errors"], counters["unexpected_responses"]) == (3, 0, 0)


def test_v21_charging_control_is_the_libraries_bytes() -> None:
    port = Transcript([
        *thingset_steps(V21)[:1],  # ?info
        Exchange(b'=input {"DcdcEn":false}\n', b":84 Changed.\n"),
        Exchange(b'=input {"DcdcEn":true}\n', b":84 Changed.\n"),
        Exchange(b'=input {"LoadEn":false}\n', b":84 Changed.\n"),
        Exchange(b'=conf {"BatChgMax_A":8.0,"Topping_V":14.2,"ToppingCutoff_A":0.5}\n', b":84 Changed.\n"),
        Exchange(b'?conf ["BatChgMax_A"]\n', b":85 Content. [8.0]\n"),
        Exchange(b'?conf ["Topping_V"]\n', b":85 Content. [14.2]\n"),
        Exchange(b'?conf ["ToppingCutoff_A"]\n', b":85 Content. [0.5]\n"),
        Exchange(b'=conf {"Topping_V":16.0}\n', b":A0 Bad Request.\n"),
    ])  # fmt: skip
    driver = mppt(port)
    driver.open()
    driver.set_charging(False)
    driver.set_charging(True)
    driver.set_load_output(False)
    driver.set_charge_limits(current_max_a=8, voltage_v=14.2, topping_cutoff_a=0.5)
    assert driver.read_charge_limits() == ChargeLimits(8.0, 14.2, 0.5)
    with pytest.raises(BadRequest) as refused:  # the firmware's own range check
        driver.set_charge_limits(voltage_v=16.0)
    assert refused.value.status == 0xA0
    for bad in (0.0, -1.0, math.nan, math.inf):  # refused before anything is sent
        with pytest.raises(ValueError, match="finite number > 0"):
            driver.set_charge_limits(current_max_a=bad)
    with pytest.raises(TypeError):
        driver.set_charging(1)  # type: ignore[arg-type]
    port.assert_done()


# --- the firmware after v21.0 (ThingSet v0.4) -------------------------------------------------------
def test_v04_transcript_end_to_end_with_the_temperatures() -> None:
    port = Transcript.thingset(V04)
    driver = mppt(port, extra_fields=TEMPERATURES, extra_every_s=3600)
    driver.open()
    assert driver.identity()["dialect"] == "v0.4"  # MetadataURL in ?info
    first, second, third = read_all(driver, 3)
    # The temperatures ride on the first publication: Int_degC only; the board lacks the others.
    assert first.values["int_degc"] == 27.1
    assert first.values["ambient_degc"] == 21.1
    assert not {"mosfet_degc", "bat_degc"} & set(first.values)
    assert "int_degc" not in second.values  # extras come every extra_every_s, not every sample
    assert third.values["uptime_s"] == 3
    with pytest.raises(NotFound):
        driver.read_items("output")  # v0.4 calls it "meas"
    with pytest.raises(NotFound):
        driver.read_items("output", ["Bat_V", "Int_degC"])
    with pytest.raises(NotFound):
        driver.read_items("output", ["Mosfet_degC"])
    assert driver.read_items("meas")["Ambient_degC"] == 21.0
    assert driver.read_items("state")["ChgTarget_A"] == 10.0
    assert driver.read_items("rec")["DayCount"] == 12
    assert driver.read_items("conf") == {
        "BatNom_Ah": 50.0, "ChgMax_A": 10.0, "Chg_V": 14.4, "LoadEnDefault": True,
        "LoadDisconnect_V": 11.8, "LoadReconnect_V": 12.6,
    }  # fmt: skip
    driver.write_conf({"BatNom_Ah": 12.0})
    assert driver.read_items("conf", ["BatNom_Ah"]) == {"BatNom_Ah": 12.0}
    driver.set_load_output(False)
    assert driver.read_inputs() == Inputs(load=False, usb=True, charging=True)
    driver.set_input(LoadEn=True, UsbEn=True, DcdcEn=True)
    driver.set_publication(True)
    for line in ("?pub/serial/IDs", "?nosuchgroup", '=output {"Bat_V":1}'):
        with pytest.raises(NotFound):  # this library answers A4 where v21 said A0/A3
            driver.request(line)
    with pytest.raises(Unauthorized):
        driver.request('=rec {"DeepDisCount":0}')
    with pytest.raises(NotFound):
        driver.request('?output ["Bat_V"')
    assert driver.request("?conf/").payload[1] == "ChgMax_A"
    driver.reset()  # "!rpc/x-reset"
    port.assert_done()
    counters = driver.health.counters
    # The extras' NotFound answers are answers, not errors: only the 8 provoked above count.
    assert counters["request_errors"] == 8
    assert (counters["extra_reads"], counters.get("extra_errors", 0)) == (1, 0)


def test_read_fields_maps_every_group_the_firmware_has() -> None:
    answers = {step.write: step for step in thingset_steps(V04) if isinstance(step, Exchange)}
    port = Transcript(
        [*thingset_steps(V04)[:1], *(answers[f"?{g}\n".encode()] for g in ("meas", "state", "rec"))]
    )
    driver = mppt(port)
    driver.open()
    values = driver.read_fields()
    port.assert_done()
    assert (values["int_degc"], values["bat_w"], values["ambient_degc"], values["chg_state"]) == (
        27.8,
        13.82,
        21.0,
        1,
    )
    assert (values["deep_dis_count"], values["dis_ah"]) == (2, 4)
    assert not {"mosfet_degc", "bat_degc"} & set(values)


def test_v04_charge_limits_name_its_items_and_refuse_what_it_lacks() -> None:
    port = Transcript([
        *thingset_steps(V04)[:1],
        Exchange(b'=conf {"ChgMax_A":5.0,"Chg_V":14.1}\n', b":84 Changed.\n"),
    ])  # fmt: skip
    driver = mppt(port)
    driver.open()
    driver.set_charge_limits(current_max_a=5.0, voltage_v=14.1)
    with pytest.raises(Unsupported, match="topping_cutoff_a"):
        driver.set_charge_limits(voltage_v=14.0, topping_cutoff_a=0.5)  # nothing is sent
    port.assert_done()


def test_extras_come_every_interval_not_with_every_sample() -> None:
    pub = Unsolicited(b'# {"Uptime_s":1,"Bat_V":12.51}\n')
    ask = Exchange(b'?output ["Int_degC"]\n', b":85 Content. [27.3]\n")
    port = Transcript([*thingset_steps(V21)[:1], pub, ask, pub, pub, ask])
    driver = mppt(port, extra_fields=("int_degc",), extra_every_s=1.0)
    driver.open()
    first = read_all(driver, 1)[0]
    second = read_all(driver, 1)[0]  # within the second: no request
    time.sleep(1.1)  # not a timing assertion: the interval has passed for sure
    third = read_all(driver, 1)[0]
    port.assert_done()
    assert ["int_degc" in r.values for r in (first, second, third)] == [True, False, True]
    assert driver.health.counters["extra_reads"] == 2


def test_an_extra_the_board_lacks_is_asked_once_per_controller(caplog: pytest.LogCaptureFixture) -> None:
    """Reopening the same controller does not ask again (nor log, nor count an error); another
    firmware behind the port is asked afresh."""
    info = thingset_steps(V21)[0]
    pub = Unsolicited(b'# {"Uptime_s":1,"Bat_V":12.51}\n')
    ask = Exchange(b'?output ["Int_degC","Mosfet_degC"]\n', b":A4 Not Found.\n")
    alone = [
        Exchange(b'?output ["Mosfet_degC"]\n', b":A4 Not Found.\n"),
        Exchange(b'?output ["Int_degC"]\n', b":85 Content. [27.3]\n"),
    ]
    newer = Exchange(b"?info\n", b':85 Content. {"FirmwareVersion":"v21.1","DeviceID":"4B3Q7WXZ"}\n')
    port = Transcript([
        info, pub, ask, *alone, Vanish(),
        info, pub, Exchange(b'?output ["Int_degC"]\n', b":85 Content. [27.4]\n"), Vanish(),
        newer, pub, ask, *alone,
    ])  # fmt: skip
    driver = mppt(port, extra_fields=("int_degc", "mosfet_degc"), extra_every_s=3600)
    driver.reopen_backoff_s = (0.0, 0.0)
    driver.open()
    temperatures = []
    for _ in range(3):
        (reading,) = read_all(driver, 1)
        temperatures.append(reading.values["int_degc"])
        assert "mosfet_degc" not in reading.values
        assert driver.read(0.1) == []  # the port vanishes: reopened at the next read
    port.assert_done()
    assert temperatures == [27.3, 27.4, 27.3]
    counters = driver.health.counters
    assert counters.get("request_errors", 0) == 0
    assert counters["port_reopens"] == 2
    unavailable = [r for r in caplog.records if "event=extra_unavailable" in r.getMessage()]
    assert [("v21.0" in r.getMessage(), "v21.1" in r.getMessage()) for r in unavailable] == [
        (True, False),
        (False, True),
    ]


# --- what the library prints for NaN ----------------------------------------------------------------
def test_nan_in_an_answer_is_a_missing_value_not_a_timeout() -> None:
    steps = thingset_steps(NAN)
    port = Transcript([
        *thingset_steps(V21)[:1],
        Unsolicited(b'# {"Uptime_s":9,"Bat_V":12.5,"Bat_A":nan}\n'),
        *steps,
    ])  # fmt: skip
    driver = mppt(port, request_timeout_s=30.0)  # a dropped answer would wait 30 s
    driver.open()
    (reading,) = read_all(driver, 1)
    assert reading.values == {"uptime_s": 9, "bat_v": 12.5}
    assert reading.flags == ("invalid:bat_a",)
    values = driver.read_items("output", ["Bat_degC", "Int_degC"])
    assert values["Bat_degC"] == 24.4
    assert math.isnan(values["Int_degC"])
    assert math.isnan(driver.read_items("output", ["Int_degC"])["Int_degC"])
    port.assert_done()
    counters = driver.health.counters
    assert (counters["invalid_values"], counters.get("parse_errors", 0)) == (1, 0)


def test_nan_in_an_extra_is_flagged_on_the_sample() -> None:
    port = Transcript([
        *thingset_steps(V21)[:1],
        Unsolicited(b'# {"Uptime_s":9,"Bat_V":12.5}\n'),
        Exchange(b'?output ["Bat_degC","Int_degC"]\n', b":85 Content. [24.4,nan]\n"),
    ])  # fmt: skip
    driver = mppt(port, extra_fields=("int_degc", "bat_degc"))
    driver.open()
    (reading,) = read_all(driver, 1)
    assert reading.values == {"uptime_s": 9, "bat_v": 12.5, "bat_degc": 24.4}
    assert reading.flags == ("invalid:int_degc",)
    port.assert_done()


# --- the line ---------------------------------------------------------------------------------------
def test_noise_half_lines_and_stray_responses_are_counted_and_ignored() -> None:
    port = Transcript([
        *thingset_steps(V21)[:1],
        Unsolicited(b"*** Booting Zephyr OS build zephyr-v2.5.0  ***\n"),
        Unsolicited(b'"Bat_V":12.8,"Bat_A":1.00}\n'),  # the tail of a line, as after a reconnect
        Unsolicited(b'# {"Uptime_s":3600,"Bat_V":12.\n'),  # truncated JSON
        Unsolicited(b'# {"Bat_V":12.80} 00000000#\n'),  # a wrong CRC
        Unsolicited(b"x" * 300 + b"\n"),  # longer than max_line
        Unsolicited(b":85 Content. [1]\n"),  # a response nobody asked for
        Unsolicited(b'#serial {"Bat_V":12.9}\n'),  # v0.4's path: the dialect follows
        Unsolicited(b'# {"Foo_X":1,"Bat_V":"n/a"}\n'),  # nothing usable
    ])  # fmt: skip
    driver = mppt(port, max_line=256)
    driver.open()
    (reading,) = read_all(driver, 1)
    assert reading.values == {"bat_v": 12.9}
    assert driver.read(0.2) == []
    port.assert_done()
    counters = driver.health.counters
    assert counters["lines_ignored"] == 5
    assert counters["parse_errors"] == 3  # JSON, CRC, length; the banner and the tail are noise
    assert counters["unexpected_responses"] == 1
    assert (counters["unknown_items"], counters["values_skipped"], counters["empty_publications"]) == (
        1,
        1,
        1,
    )
    assert driver.dialect == "v21"  # the bare "#" came last


def test_a_request_without_answer_times_out_and_the_link_stays_usable() -> None:
    port = Transcript(
        [
            *thingset_steps(V21)[:1],
            Exchange(b"?output\n"),  # nothing comes back
            Exchange(b'?output ["Bat_V"]\n', b":85 Content. [12.5]\n"),
        ]
    )
    driver = mppt(port, request_timeout_s=0.2)
    driver.open()
    with pytest.raises(NoResponse):
        driver.read_items("output")
    assert driver.read_items("output", ["Bat_V"]) == {"Bat_V": 12.5}
    port.assert_done()


def test_unplugged_mid_request_is_connection_lost_and_the_port_reopens() -> None:
    port = Transcript(
        [
            *thingset_steps(V21)[:1],
            Vanish(refused_opens=2),
            *thingset_steps(V21)[:1],
            Unsolicited(b'# {"Bat_V":12.5}\n'),
        ]
    )
    driver = mppt(port)
    driver.reopen_backoff_s = (0.0, 0.0)
    driver.open()
    with pytest.raises(ConnectionLost):
        driver.read_items("output")
    assert driver.read(0.1) == []  # the loss noticed here
    assert [driver.read(0.1), driver.read(0.1)] == [[], []]  # two refused opens
    assert "cannot open" in (driver.health.last_error or "")
    (reading,) = read_all(driver, 1)
    assert reading.values == {"bat_v": 12.5}
    assert driver.health.last_error is None  # the reopen cleared the old error
    port.assert_done()
    counters = driver.health.counters
    assert (counters["connection_losses"], counters["open_failures"], counters["port_reopens"]) == (1, 2, 1)


def test_no_dialect_yet_is_a_typed_error() -> None:
    port = Transcript(
        [Exchange(b"?info\n", b":A4 Not Found.\n"), Exchange(b"?Device\n", b":A4 Not Found.\n")]
    )
    driver = mppt(port, request_timeout_s=0.1)
    driver.open()
    assert driver.identity() == {"dialect": None}
    with pytest.raises(DialectUnknown):
        driver.set_charging(False)
    port.assert_done()
    assert driver.health.counters["identity_failures"] == 1


# --- the registry's options ---------------------------------------------------------------------------
def test_options_from_a_table_and_the_environment() -> None:
    options = kind("mppt").load_options(
        {"port": "/dev/soclab-mppt", "extra_fields": ["int_degc"]},
        {"SOCLAB_INSTRUMENT_EXTRA_FIELDS": "int_degc, bat_degc", "SOCLAB_INSTRUMENT_REQUEST_TIMEOUT_S": "3"},
    )
    assert options == MpptOptions(
        port="/dev/soclab-mppt", extra_fields=("int_degc", "bat_degc"), request_timeout_s=3.0
    )


@pytest.mark.parametrize(
    ("table", "env", "message"),
    [
        ({}, {}, "[instrument] port is required"),
        ({"port": "x", "speed": 1}, {}, "[instrument] has no setting 'speed'"),
        ({"port": "x", "dialect": "v99"}, {}, "[instrument] dialect: Invalid enum value 'v99'"),
        ({"port": "x", "extra_fields": ["cpu_degc"]}, {}, "unknown extra_fields ['cpu_degc']"),
        (
            {"port": "x", "extra_fields": "int_degc"},
            {},
            "[instrument] extra_fields must be array, got 'int_degc'",
        ),
        ({"port": "x", "extra_every_s": 0}, {}, "[instrument] extra_every_s must be float > 0"),
        (
            {"port": "x"},
            {"SOCLAB_INSTRUMENT_BAUDRATE": "fast"},
            "SOCLAB_INSTRUMENT_BAUDRATE='fast' is not a valid int",
        ),
        (
            {"port": "x"},
            {"SOCLAB_INSTRUMENT_BAUD": "9600"},
            "SOCLAB_INSTRUMENT_BAUD: [instrument] has no setting 'baud'",
        ),
    ],
)
def test_bad_options_name_the_setting(table: dict[str, Any], env: dict[str, str], message: str) -> None:
    from soclab.wire.settings import ConfigError

    with pytest.raises(ConfigError) as error:
        kind("mppt").load_options(table, env)
    assert message in str(error.value)


def test_shipped_configurations_ask_only_for_what_the_real_board_has() -> None:
    """The lab's publisher, the Ansible role's default and the edge example ask for extras that the
    real v21.0 build for the MPPT-1210-HUS answers (its "?output"): no mosfet_degc."""
    import tomllib

    import yaml

    from soclab.edge.publisher.config import EXAMPLE

    answers = {step.write: step.answer for step in thingset_steps(V21) if isinstance(step, Exchange)}
    output = codec.parse_line(answers[b"?output\n"])
    assert isinstance(output, Response)
    offered = set(map_items(output.payload, DIALECTS["v21"]).values)
    repo = THINGSET.parents[2]
    shipped = {
        "dev/lab/publishers/mppt.toml": tomllib.loads(
            (repo / "dev/soclab/dev/lab/publishers/mppt.toml").read_text()
        ),
        "the edge example": tomllib.loads(EXAMPLE.read_text()),
        "the Ansible role": yaml.safe_load((repo / "ansible/roles/soclab_edge/vars/main.yml").read_text())[
            "soclab_edge_kinds"
        ]["mppt"],
    }
    for where, config in shipped.items():
        extras = set(config["instrument"]["extra_fields"])
        assert extras, where
        assert extras <= offered, (where, extras - offered)


# --- hostile lines (issue 11, finding 6) -----------------------------------------------------------------
def test_a_line_that_cannot_be_parsed_is_dropped_counted_and_the_next_one_read() -> None:
    """Finding 6: a 7 KB deeply nested publication raised RecursionError out of the codec; the line
    stayed in the link's buffer and no sample was read again."""
    port = Transcript([
        *thingset_steps(V21)[:1],
        Unsolicited(b'# {"Bat_V":12.8}\n'),
        Unsolicited(b"# " + b'{"a":' * 1200 + b"1" + b"}" * 1200 + b"\n"),
        Unsolicited(b'# {"Bat_V":12.9}\n'),
    ])  # fmt: skip
    driver = mppt(port)
    driver.open()
    readings = read_all(driver, 2)
    assert [r.values for r in readings] == [{"bat_v": 12.8}, {"bat_v": 12.9}]
    assert driver.read(0.2) == []
    port.assert_done()
    assert driver.health.counters["parse_errors"] == 1


def test_a_line_whose_handling_fails_is_dropped_once_and_the_link_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever goes wrong with one line (here the publication's handler fails) costs that line:
    the lines after it are routed once each, and the failure is counted and logged."""
    port = Transcript([
        Unsolicited(b'# {"Bat_V":1}\n# {"Bat_V":2}\n# {"Bat_V":3}\n'),
    ])  # fmt: skip
    health = Health()
    seen: list[dict[str, Any]] = []

    def handle(pub: codec.Publication) -> None:
        seen.append(pub.data)
        if pub.data == {"Bat_V": 2}:
            raise ValueError("a handler's bug")

    link = ThingSetLink("/dev/ttyACM0", 115200, health=health, on_publication=handle, serial_factory=port)
    link.open()
    link.pump_until(lambda: len(seen) >= 3, time.monotonic() + 2.0)
    link.pump_until(lambda: False, time.monotonic() + 0.1)
    assert seen == [{"Bat_V": 1}, {"Bat_V": 2}, {"Bat_V": 3}]
    assert health.counters["parse_errors"] == 1
    assert "a handler's bug" in caplog.text
    link.close()
