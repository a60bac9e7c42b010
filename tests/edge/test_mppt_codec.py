"""ThingSet text mode as the LibreSolar MPPT speaks it: every dialect, odd lines, exact requests."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from importlib.resources import files

import pytest

from soclab.edge.instruments.libresolar_mppt import codec
from soclab.edge.instruments.libresolar_mppt.codec import (
    NO_PAYLOAD,
    Ignored,
    Publication,
    Request,
    Response,
    parse_line,
)
from soclab.edge.instruments.libresolar_mppt.fields import (
    DIALECT_BY_CHANNEL,
    DIALECTS,
    FIELDS,
    map_items,
)

V21_LINE = (
    '# {"Uptime_s":3600,"Bat_V":12.85,"Bat_A":-1.02,"SOC_pct":80,"ChgState":0,"DCDCState":0,'
    '"Solar_V":0.00,"Solar_A":0.00,"Load_A":1.00,"LoadInfo":1,"UsbInfo":1,"ErrorFlags":0,'
    '"DeepDisCount":0,"BatUsable_Ah":9.0,"SolarInDay_Wh":0.00,"LoadOutDay_Wh":12.30,'
    '"BatChgDay_Wh":0.00,"BatDisDay_Wh":13.10,"Dis_Ah":1}'
)
V05_LINE = (
    '#mSerial {"Device":{"rUptime_s":7,"rErrorFlags":0},"Battery":{"rVoltage_V":12.85,'
    '"rCurrent_A":-1.00,"rSOC_pct":80},"Charger":{"rState":1,"rDCDCState":1},'
    '"Solar":{"rVoltage_V":18.20,"rCurrent_A":0.50},"Load":{"rCurrent_A":0.25,"rState":1},'
    '"USB":{"rState":0}}'
)


# --- publications --------------------------------------------------------------------------------
def test_v21_publication() -> None:
    msg = parse_line((V21_LINE + "\n").encode())
    assert isinstance(msg, Publication)
    assert msg.channel is None
    assert msg.data["Bat_V"] == 12.85
    assert msg.data["Dis_Ah"] == 1
    assert list(msg.data)[:3] == ["Uptime_s", "Bat_V", "Bat_A"]


def test_v04_flat_publication_with_crlf() -> None:
    msg = parse_line(b'#serial {"Uptime_s":5,"Bat_V":12.80,"Bat_A":0.50}\r\n')
    assert msg == Publication("serial", {"Uptime_s": 5, "Bat_V": 12.8, "Bat_A": 0.5})


def test_v05_nested_publication() -> None:
    msg = parse_line(V05_LINE)
    assert isinstance(msg, Publication)
    assert msg.channel == "mSerial"
    assert msg.data["Battery"] == {"rVoltage_V": 12.85, "rCurrent_A": -1.0, "rSOC_pct": 80}


def test_v06_publication_with_valid_crc() -> None:
    line = '#mLive_ {"Battery":{"rVoltage_V":12.85}} E14547B8#'
    msg = parse_line(line + "\r\n")
    assert msg == Publication("mLive_", {"Battery": {"rVoltage_V": 12.85}}, crc_checked=True)


def test_crc_is_crc32_ieee() -> None:
    assert codec.crc32("123456789") == 0xCBF43926  # the CRC-32 check value
    assert codec.append_crc(":85 [14.2]") == ":85 [14.2] 441A68EE#"


@pytest.mark.parametrize(
    "line",
    [
        '#mLive_ {"Battery":{"rVoltage_V":12.85}} E14547B9#',  # one bit off
        '#mLive_ {"Battery":{"rVoltage_V":12.86}} E14547B8#',  # payload changed
        ":85 [14.3] 441A68EE#",
    ],
)
def test_bad_crc_is_a_parse_error(line: str) -> None:
    msg = parse_line(line)
    assert isinstance(msg, Ignored)
    assert msg.reason == "bad_crc"
    assert msg.malformed


def test_nan_as_the_library_prints_it_is_a_float_not_a_broken_line() -> None:
    assert str(parse_line(":85 Content. [24.4,nan]")) == str(Response(0x85, "Content", [24.4, float("nan")]))
    msg = parse_line('# {"Bat_V":nan,"Bat_A":-inf,"Name":"nan inf","Bat_W":-nan}')
    assert isinstance(msg, Publication)
    assert str(msg.data) == str(
        {"Bat_V": float("nan"), "Bat_A": float("-inf"), "Name": "nan inf", "Bat_W": float("nan")}
    )


def test_crc_on_a_response() -> None:
    assert parse_line(":85 [14.2] 441A68EE#") == Response(0x85, None, [14.2])


def test_publication_json_as_the_firmware_prints_it() -> None:
    # %.2f floats, null for NaN, booleans, negative zero
    msg = parse_line('# {"Bat_V":12.80,"Bat_A":-0.00,"Bat_degC":null,"BatTempExt":false}')
    assert isinstance(msg, Publication)
    assert msg.data == {"Bat_V": 12.8, "Bat_A": -0.0, "Bat_degC": None, "BatTempExt": False}


# --- responses -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (":85 Content. [14.2]", Response(0x85, "Content", [14.2])),
        (':85 Content. {"Bat_V":12.85}', Response(0x85, "Content", {"Bat_V": 12.85})),
        (':85 Content. "MPPT 1210 HUS"', Response(0x85, "Content", "MPPT 1210 HUS")),
        (":84 Changed.", Response(0x84, "Changed", None)),
        (":83 Valid.", Response(0x83, "Valid", None)),
        (":A4 Not Found.", Response(0xA4, "Not Found", None)),
        (":A3 Forbidden.", Response(0xA3, "Forbidden", None)),
        (":A0 Bad Request.", Response(0xA0, "Bad Request", None)),
        (":AF Unsupported Content-Format.", Response(0xAF, "Unsupported Content-Format", None)),
        (":C0 Internal Server Error.", Response(0xC0, "Internal Server Error", None)),
        (":85.", Response(0x85)),  # TS_VERBOSE_STATUS_MESSAGES=0
        (":85 [14.2]", Response(0x85, None, [14.2])),  # v0.6
        (":84", Response(0x84)),
        (":85 true", Response(0x85, None, True)),
        (':85 "text"', Response(0x85, None, "text")),
        (':A3 "read-only item"', Response(0xA3, "read-only item", None)),
        (":A4", Response(0xA4)),
    ],
)
def test_responses(line: str, expected: Response) -> None:
    assert parse_line(line + "\n") == expected


def test_response_ok() -> None:
    assert Response(0x85).ok
    assert Response(0x84).ok
    assert not Response(0xA4).ok
    assert not Response(0xC0).ok


# --- everything else ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "blank"),
        (b"\n", "blank"),
        (b"\r\n", "blank"),
        (b"   \r", "blank"),
        (b"*** Booting Zephyr OS build zephyr-v2.5.0  ***", "text"),
        (b"Hardware: Libre Solar MPPT 1210 HUS (v0.7.1)", "text"),
        (b"Firmware: v21.0", "text"),
        (b"[00:00:00.012,000] <inf> data_nodes: New config valid and activated.", "text"),
        (b"Received Request (7 bytes): ?output", "text"),
        (b"\xff\xfe\x00garbage\x01", "text"),
        (b'"Bat_V":12.8,"Bat_A":1.00,"SOC_pct":80}', "fragment"),
        (b'12.85,"Bat_A":-1.00}', "fragment"),
        (b'_V":12.8}', "fragment"),
        (b'# {"Uptime_s":3600,"Bat_V":12.', "bad_json"),  # truncated
        (b'#serial {"Bat_V":12.8', "bad_json"),
        (b'# {"Bat_V":NaN}', "bad_json"),  # not JSON, nor what the firmware prints (nan)
        (b"# [1,2]", "bad_publication"),
        (b"#serial", "bad_publication"),
        (b"#", "bad_publication"),
        (b":85 Content. [14.2", "bad_json"),
        (b":8", "bad_response"),
        (b":ZZ Nope.", "bad_response"),
        (b":85Content.", "bad_response"),
    ],
)
def test_odd_lines_are_ignored_with_a_reason(raw: bytes, reason: str) -> None:
    msg = parse_line(raw)
    assert isinstance(msg, Ignored)
    assert msg.reason == reason
    assert msg.malformed == (reason not in {"blank", "text", "fragment"})


def test_parse_line_never_raises() -> None:
    rng = random.Random(1234)
    alphabet = b'#:{}[]",.0123456789 aZ\xff\x00\r\t-eE'
    for _ in range(5000):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert isinstance(parse_line(raw), Publication | Response | Ignored)
    for cut in range(len(V21_LINE)):  # every truncation of a real line
        assert isinstance(parse_line(V21_LINE[:cut]), Ignored | Publication)


# --- requests (host side), byte exact ----------------------------------------------------------------
def test_request_formatting_is_byte_exact() -> None:
    assert codec.format_get("output") == "?output"
    assert codec.format_get("conf/") == "?conf/"
    assert codec.format_fetch("output", ["Bat_V", "Bat_A"]) == '?output ["Bat_V","Bat_A"]'
    assert codec.format_fetch("", ["cNodeID"]) == '? ["cNodeID"]'
    assert codec.format_update("conf", {"BatNom_Ah": 12.0}) == '=conf {"BatNom_Ah":12.0}'
    assert codec.format_update("input", {"LoadEn": False}) == '=input {"LoadEn":false}'
    assert codec.format_update("pub/serial", {"Enable": True}) == '=pub/serial {"Enable":true}'
    assert codec.format_exec("exec/reset") == "!exec/reset"
    assert codec.format_exec("x", [1, "a"]) == '!x [1,"a"]'
    assert codec.frame("?output") == b"?output\n"
    assert codec.frame('=input {"LoadEn":false}') == b'=input {"LoadEn":false}\n'


@pytest.mark.parametrize(
    "bad",
    [
        lambda: codec.format_get("out put"),
        lambda: codec.format_get("output\n"),
        lambda: codec.format_update("conf", {"BatNom_Ah": float("nan")}),
        lambda: codec.format_update("conf", {"x": object()}),
        lambda: codec.format_fetch("output", "Bat_V"),
        lambda: codec.format_request("x", "output"),
        lambda: codec.frame("?a\n?b"),
    ],
)
def test_unsendable_requests_raise_a_typed_error(bad: Callable[[], object]) -> None:
    with pytest.raises(codec.RequestFormatError):
        bad()


# --- the device side (simulator) ---------------------------------------------------------------------
def test_parse_request() -> None:
    req = codec.parse_request(b'?output ["Bat_V","Bat_A"]\r\n')
    assert req == Request("?", "output", '["Bat_V","Bat_A"]')
    assert req.payload() == ["Bat_V", "Bat_A"]
    assert codec.parse_request("?output") == Request("?", "output", None)
    assert codec.parse_request("?output").payload() is NO_PAYLOAD
    assert codec.parse_request("!exec/reset") == Request("!", "exec/reset", None)
    assert codec.parse_request("hello") is None
    assert codec.parse_request("") is None
    with pytest.raises(codec.MalformedRequest):
        codec.parse_request('=conf {"BatNom_Ah":').payload()


def test_format_response_each_style() -> None:
    assert codec.format_response(0x85, [14.2]) == ":85 Content. [14.2]"
    assert codec.format_response(0x84) == ":84 Changed."
    assert codec.format_response(0xA4) == ":A4 Not Found."
    assert codec.format_response(0xA0) == ":A0 Bad Request."
    assert codec.format_response(0x85, [14.2], verbose=False) == ":85 [14.2]"
    assert codec.format_response(0x84, verbose=False) == ":84"
    assert codec.format_response(0xA3, verbose=False, message="why") == ':A3 "why"'


def test_format_publication_each_dialect() -> None:
    assert codec.format_publication({"Bat_V": 12.85}) == '# {"Bat_V":12.85}'
    assert codec.format_publication({"Bat_V": 12.85}, "serial") == '#serial {"Bat_V":12.85}'
    nested = {"Battery": {"rVoltage_V": 12.85}}
    assert codec.format_publication(nested, "mSerial") == '#mSerial {"Battery":{"rVoltage_V":12.85}}'


@pytest.mark.parametrize("verbose", [True, False])
@pytest.mark.parametrize(
    ("status", "payload"), [(0x85, [14.2]), (0x85, {"a": 1}), (0x84, NO_PAYLOAD), (0xA4, NO_PAYLOAD)]
)
def test_round_trip(status: int, payload: object, verbose: bool) -> None:
    msg = parse_line(codec.format_response(status, payload, verbose=verbose))
    assert isinstance(msg, Response)
    assert msg.status == status
    assert msg.payload == (None if payload is NO_PAYLOAD else payload)


# --- field names -------------------------------------------------------------------------------------
def test_field_names_fit_the_schema() -> None:
    schema = json.loads((files("soclab.wire") / "schema" / "data.v1.json").read_text())
    pattern = schema["$defs"]["sample"]["properties"]["values"]["propertyNames"]["pattern"]
    assert len(FIELDS) == 26
    for name in FIELDS:
        assert re.match(pattern, name), name


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_every_dialect_maps_every_field_once(dialect: str) -> None:
    d = DIALECTS[dialect]
    fields = [item.field for item in d.items]
    only_v04 = {"ambient_degc"}  # the firmware after v21.0 publishes its ambient estimate
    assert sorted(fields) == sorted(set(FIELDS) - (set() if dialect == "v0.4" else only_v04))
    assert len(set(d.keys)) == len(d.keys)
    assert DIALECT_BY_CHANNEL[d.channel] is d


def test_v21_publishes_what_protocols_md_lists_in_order() -> None:
    assert [i.name for i in DIALECTS["v21"].published] == [
        "Uptime_s", "Bat_V", "Bat_A", "SOC_pct", "ChgState", "DCDCState", "Solar_V", "Solar_A",
        "Load_A", "LoadInfo", "UsbInfo", "ErrorFlags", "DeepDisCount", "BatUsable_Ah",
        "SolarInDay_Wh", "LoadOutDay_Wh", "BatChgDay_Wh", "BatDisDay_Wh", "Dis_Ah",
    ]  # fmt: skip


def test_map_v21() -> None:
    msg = parse_line(V21_LINE)
    assert isinstance(msg, Publication)
    mapped = map_items(msg.data, DIALECTS["v21"])
    assert mapped.unknown == ()
    assert mapped.non_numeric == ()
    assert mapped.values["bat_v"] == 12.85
    assert mapped.values["bat_a"] == -1.02
    assert mapped.values["soc_pct"] == 80
    assert mapped.values["load_out_day_wh"] == 12.3
    assert set(mapped.values) == {i.field for i in DIALECTS["v21"].published}


def test_map_v05_nested_and_old_names() -> None:
    msg = parse_line(V05_LINE)
    assert isinstance(msg, Publication)
    mapped = map_items(msg.data, DIALECTS["v0.5"])
    assert mapped.values["bat_v"] == 12.85
    assert mapped.values["solar_v"] == 18.2
    assert mapped.values["load_a"] == 0.25
    assert mapped.values["load_info"] == 1
    assert mapped.values["usb_info"] == 0
    assert mapped.values["chg_state"] == 1
    old = map_items(
        {"Battery": {"rMeas_V": 12.5, "pDis_Ah": 3}, "Solar": {"rMeas_V": 17.9}}, DIALECTS["v0.5"]
    )
    assert old.values == {"bat_v": 12.5, "dis_ah": 3, "solar_v": 17.9}


def test_map_unknown_and_non_numeric_items_are_reported_not_sampled() -> None:
    data = {"Bat_V": 12.8, "Foo_X": 1, "Bat_A": "n/a", "SOC_pct": None, "ChgState": True, "Grid_V": 0.0}
    mapped = map_items(data, DIALECTS["v0.4"])
    assert mapped.values == {"bat_v": 12.8, "chg_state": True}  # booleans stay bool
    assert mapped.values["chg_state"] is True
    assert mapped.unknown == ("Foo_X", "Grid_V")
    assert mapped.non_numeric == ("Bat_A", "SOC_pct")


# --- hostile lines (issue 11, finding 6) -----------------------------------------------------------------
NESTED = b"# " + b'{"a":' * 1200 + b"1" + b"}" * 1200  # 7.2 KB, under the link's line limit


@pytest.mark.parametrize(
    "raw",
    [
        NESTED,
        b'#serial {"Bat_V":' + b"[" * 3000 + b"]" * 3000 + b"}",
        b":85 Content. " + b"[" * 3000 + b"]" * 3000,
        b'# {"Bat_V":' + b"9" * 5000 + b"}",  # more digits than Python turns into an int
    ],
    ids=["nested-objects", "nested-arrays", "nested-response", "huge-integer"],
)
def test_a_line_nested_too_deeply_or_too_long_a_number_is_malformed_not_an_exception(raw: bytes) -> None:
    """Finding 6: 6 KB of nesting raised RecursionError out of parse_line."""
    msg = parse_line(raw)
    assert isinstance(msg, Ignored)
    assert msg.malformed


def test_mapping_a_deeply_nested_publication_does_not_recurse() -> None:
    """What JSON decodes (just under its own nesting limit) is flattened without Python recursion."""
    deep: dict[str, object] = {"rVoltage_V": 12.8}
    for _ in range(5000):
        deep = {"g": deep}
    mapped = map_items({"Battery": {"rVoltage_V": 12.85}, "x": deep}, DIALECTS["v0.5"])
    assert mapped.values == {"bat_v": 12.85}
    assert mapped.unknown == ("x/" + "g/" * 5000 + "rVoltage_V",)


def test_integers_beyond_64_bits_are_not_sample_values() -> None:
    """InfluxDB stores 64-bit integers; a bigger one would be refused far from where it came from."""
    mapped = map_items({"Bat_V": 2**64, "Bat_A": -(2**63), "SOC_pct": 2**63}, DIALECTS["v21"])
    assert mapped.values == {"bat_a": -(2**63)}
    assert set(mapped.non_numeric) == {"Bat_V", "SOC_pct"}
