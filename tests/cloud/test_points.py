"""The storage mapping (soclab.cloud.bridge.points), as text and against the real database."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS

from soclab.cloud.bridge.points import PointError, check_finite, line_protocol, to_points
from soclab.wire.typed import Source, from_valid

InfluxTarget = Any  # tests/conftest.py
T0 = 1_700_000_000_000_000_000
EXAMPLES = Path(__file__).parents[2] / "schemas/examples/valid"


def message(samples: list[dict[str, Any]], **source: str) -> dict[str, Any]:
    s = {"site": "lab1", "node": "pi-01", "device": "mppt", "kind": "mppt", **source}
    return {"schema": "soclab.data/1", "source": s, "samples": samples}


def lines(m: dict[str, Any]) -> list[str]:
    return line_protocol(from_valid(m)).body.decode().split("\n")


def parsed(line: str) -> tuple[str, dict[str, str], dict[str, Any], int]:
    """Line protocol as InfluxDB reads it, for names and tags without escapes (as the schema allows)."""
    head, fields, t_ns = line.rsplit(" ", 2)
    measurement, *tags = head.split(",")
    values: dict[str, Any] = {}
    for item in re.findall(r'([a-z0-9_]+)=("(?:[^"\\]|\\.)*"|[^,]+)', fields):
        name, text = item
        if text.startswith('"'):
            values[name] = text[1:-1]
        elif text.endswith("i"):
            values[name] = ("integer", int(text[:-1]))
        elif text in ("true", "True", "t", "T", "false", "False", "f", "F"):
            values[name] = ("boolean", text.lower().startswith("t"))
        else:
            values[name] = ("float", float(text))
    return measurement, dict(t.split("=", 1) for t in tags), values, int(t_ns)


def test_one_line_per_sample_numbers_as_float_booleans_as_bool_seq_as_integer() -> None:
    m = message(
        [
            {"seq": 41, "t_ns": T0, "values": {"bat_v": 13, "bat_a": -1.25, "load_en": True, "tiny": 1.5e-7}},
            {"seq": 42, "t_ns": T0 + 1, "values": {"bat_v": 12.75, "load_en": False}},
        ]
    )
    head = "mppt,device=mppt,node=pi-01,site=lab1"
    assert lines(m) == [
        f"{head} bat_v=13.0,bat_a=-1.25,load_en=True,tiny=1.5e-07,seq=41i {T0}",
        f"{head} bat_v=12.75,load_en=False,seq=42i {T0 + 1}",
    ]  # samples with different names: one by one, repr
    same = message(
        [
            {"seq": i, "t_ns": T0 + i, "values": {"a": v, "on": i == 1}}
            for i, v in enumerate([13, 1.5e-7, 1e16])
        ]
    )
    assert lines(same) == [
        f"{head} a=13.0,on=false,seq=0i {T0}",
        f"{head} a=1.5e-7,on=true,seq=1i {T0 + 1}",
        f"{head} a=1e16,on=false,seq=2i {T0 + 2}",
    ]  # the same names: msgspec's numbers


def test_samples_whose_values_come_in_another_order_keep_each_value_with_its_name() -> None:
    m = message(
        [
            {"seq": 1, "t_ns": T0, "values": {"a": 1, "b": 2}},
            {"seq": 2, "t_ns": T0 + 1, "values": {"b": 3, "a": 4}},
        ]
    )
    assert [line.split(" ")[1] for line in lines(m)] == ["a=1.0,b=2.0,seq=1i", "a=4.0,b=3.0,seq=2i"]


def test_a_tag_with_a_percent_sign_is_not_a_placeholder() -> None:
    typed = from_valid(
        message([{"seq": 1, "t_ns": T0, "values": {"a": 1}}, {"seq": 2, "t_ns": T0 + 1, "values": {"a": 2}}])
    )
    typed.source = Source(site="100%", node="pi-01", device="mppt", kind="mppt")
    assert (
        line_protocol(typed).body.split(b"\n")[1]
        == f"mppt,device=mppt,node=pi-01,site=100% a=2.0,seq=2i {T0 + 1}".encode()
    )


def test_flags_become_one_string_field() -> None:
    m = message([{"seq": 1, "t_ns": T0, "values": {"ain0": 0.5}, "flags": ["skipped:ain1", "skipped:ain2"]}])
    (line,) = lines(m)
    assert ',flags="skipped:ain1,skipped:ain2",' in line
    assert "flags" not in lines(message([{"seq": 1, "t_ns": T0, "values": {"a": 1}, "flags": []}]))[0]


def test_a_sample_with_only_flags_keeps_its_seq() -> None:
    m = message([{"seq": 3, "t_ns": T0, "values": {}, "flags": ["skipped:ain0"]}])
    assert lines(m) == [f'mppt,device=mppt,node=pi-01,site=lab1 flags="skipped:ain0",seq=3i {T0}']


def test_the_schemas_valid_examples_map_as_influxdb_clients_point_does() -> None:
    files = sorted(EXAMPLES.glob("data-*.json"))
    assert files
    for f in files:
        m = json.loads(f.read_text(encoding="utf-8"))
        assert [parsed(line) for line in lines(m)] == [parsed(p.to_line_protocol()) for p in to_points(m)]


def test_the_names_used_are_reported_for_the_type_checks() -> None:
    m = message(
        [
            {"seq": 1, "t_ns": T0, "values": {"a": 1, "b": True}},
            {"seq": 2, "t_ns": T0 + 1, "values": {}, "flags": ["x"]},
        ]
    )
    assert line_protocol(from_valid(m)).names == {("a", "b"), ()}


@pytest.mark.parametrize(
    "source",
    [
        {"site": "lab 1", "node": "pi,01", "device": "a=b"},
        {"site": "back\\slash", "node": "trailing\\", "device": "new\nline"},
        {"kind": "m m,x"},
    ],
)
def test_tags_and_measurement_are_escaped_as_influxdb_clients_point_escapes_them(
    source: dict[str, str],
) -> None:
    # The schema forbids such names; the mapping escapes them like influxdb-client all the same.
    m = message([{"seq": 1, "t_ns": T0, "values": {"x": 1}}], **source)
    typed = from_valid(message(m["samples"]))
    typed.source = Source(**m["source"])
    line = line_protocol(typed).body
    (reference,) = to_points(m)
    assert line.decode().startswith(reference.to_line_protocol().rsplit(" ", 2)[0] + " ")


def test_escaped_tags_read_back_unchanged(influxdb: InfluxTarget) -> None:
    m = message([{"seq": 1, "t_ns": T0, "values": {"x": 1.5}}])
    typed = from_valid(m)
    typed.source = Source(site="lab 1,a=b", node="pi 01", device="d,e", kind="mppt")
    with InfluxDBClient(url=influxdb.url, token=influxdb.token, org=influxdb.org) as client:
        client.write_api(write_options=SYNCHRONOUS).write(influxdb.bucket, record=line_protocol(typed).body)
    assert influxdb.rows("SELECT * FROM mppt GROUP BY *") == [
        {"time": T0, "site": "lab 1,a=b", "node": "pi 01", "device": "d,e", "x": 1.5, "seq": 1}
    ]


def test_what_the_database_reads_back_is_what_was_sent(influxdb: InfluxTarget) -> None:
    flagged = message(
        [{"seq": 5, "t_ns": T0, "values": {"x": 13, "big": 1e300, "neg": -0.0, "on": True}, "flags": ["a:b"]}]
    )
    same = message(
        [
            {"seq": s, "t_ns": T0 + s, "values": {"x": 1.5e-7, "big": 1e16, "neg": -2.5, "on": False}}
            for s in (6, 7)
        ]
    )
    with InfluxDBClient(url=influxdb.url, token=influxdb.token, org=influxdb.org) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        for m in (flagged, same):
            write.write(influxdb.bucket, record=line_protocol(from_valid(m)).body)
    tags = {"device": "mppt", "node": "pi-01", "site": "lab1"}
    assert influxdb.rows("SELECT * FROM mppt") == [
        {"time": T0, "big": 1e300, "flags": "a:b", "neg": -0.0, "on": True, "seq": 5, "x": 13.0, **tags},
        {"time": T0 + 6, "big": 1e16, "flags": None, "neg": -2.5, "on": False, "seq": 6, "x": 1.5e-7, **tags},
        {"time": T0 + 7, "big": 1e16, "flags": None, "neg": -2.5, "on": False, "seq": 7, "x": 1.5e-7, **tags},
    ]


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"x": float("inf")}, "samples/0/values/x: inf is not a finite float"),
        ({"x": 10**400}, "is not a finite float"),
    ],
)
def test_what_line_protocol_cannot_carry_is_refused(values: dict[str, Any], reason: str) -> None:
    with pytest.raises(PointError, match=re.escape(reason)):
        check_finite(message([{"seq": 1, "t_ns": T0, "values": values}]))
