"""The storage mapping (soclab.cloud.bridge.points), as text and against the real database."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS

from soclab.cloud.bridge.points import PointError, line_protocol, to_points

InfluxTarget = Any  # tests/conftest.py
T0 = 1_700_000_000_000_000_000


def message(samples: list[dict[str, Any]], **source: str) -> dict[str, Any]:
    s = {"site": "lab1", "node": "pi-01", "device": "mppt", "kind": "mppt", **source}
    return {"schema": "soclab.data/1", "source": s, "samples": samples}


def test_one_line_per_sample_numbers_as_float_booleans_as_bool_seq_as_integer() -> None:
    m = message(
        [
            {"seq": 41, "t_ns": T0, "values": {"bat_v": 13, "bat_a": -1.25, "load_en": True, "tiny": 1.5e-7}},
            {"seq": 42, "t_ns": T0 + 1, "values": {"bat_v": 12.75, "load_en": False}},
        ]
    )
    assert line_protocol(m) == [
        f"mppt,device=mppt,node=pi-01,site=lab1 bat_a=-1.25,bat_v=13,load_en=true,seq=41i,tiny=1.5e-07 {T0}",
        f"mppt,device=mppt,node=pi-01,site=lab1 bat_v=12.75,load_en=false,seq=42i {T0 + 1}",
    ]


def test_flags_become_one_string_field() -> None:
    m = message([{"seq": 1, "t_ns": T0, "values": {"ain0": 0.5}, "flags": ["skipped:ain1", "skipped:ain2"]}])
    (line,) = line_protocol(m)
    assert ',flags="skipped:ain1,skipped:ain2",' in line
    assert "flags" not in line_protocol(message([{"seq": 1, "t_ns": T0, "values": {"a": 1}, "flags": []}]))[0]


def test_a_sample_with_only_flags_keeps_its_seq() -> None:
    m = message([{"seq": 3, "t_ns": T0, "values": {}, "flags": ["skipped:ain0"]}])
    assert line_protocol(m) == [f'mppt,device=mppt,node=pi-01,site=lab1 flags="skipped:ain0",seq=3i {T0}']


def test_the_schemas_valid_examples_map_as_influxdb_clients_point_does() -> None:
    files = sorted((Path(__file__).parents[2] / "schemas/examples/valid").glob("data-*.json"))
    assert files
    for f in files:
        m = json.loads(f.read_text(encoding="utf-8"))
        assert line_protocol(m) == [p.to_line_protocol() for p in to_points(m)], f.name


def test_integers_that_json_wrote_as_floats_stay_integers() -> None:
    # jsonschema's "integer" accepts 7.0; the line must still say 7i and an integer time.
    (line,) = line_protocol(message([{"seq": 7.0, "t_ns": float(T0), "values": {"a": 1}}]))
    assert line.endswith(f"a=1,seq=7i {T0}")


@pytest.mark.parametrize(
    "source",
    [
        {"site": "lab 1", "node": "pi,01", "device": "a=b"},
        {"site": "back\\slash", "node": "trailing\\", "device": "new\nline"},
        {"kind": "m m,x"},
    ],
)
def test_line_protocol_equals_influxdb_clients_point(source: dict[str, str]) -> None:
    # The schema forbids such names; the mapping escapes them like influxdb-client all the same.
    m = message(
        [
            {"seq": 1, "t_ns": T0, "values": {"x": 1, "b": True, "big": 1e300}, "flags": ['q"uote\\']},
            {"seq": 2, "t_ns": T0 + 5, "values": {"x": -0.0, "y": 123456789012345678}},
        ],
        **source,
    )
    assert line_protocol(m) == [p.to_line_protocol() for p in to_points(m)]


def test_escaped_tags_read_back_unchanged(influxdb: InfluxTarget) -> None:
    m = message([{"seq": 1, "t_ns": T0, "values": {"x": 1.5}}], site="lab 1,a=b", node="pi 01", device="d,e")
    with InfluxDBClient(url=influxdb.url, token=influxdb.token, org=influxdb.org) as client:
        client.write_api(write_options=SYNCHRONOUS).write(influxdb.bucket, record="\n".join(line_protocol(m)))
    assert influxdb.rows("SELECT * FROM mppt GROUP BY *") == [
        {"time": T0, "site": "lab 1,a=b", "node": "pi 01", "device": "d,e", "x": 1.5, "seq": 1}
    ]


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"seq": 1.0}, "samples/0/values/seq: the name 'seq' is reserved for the bridge"),
        ({"flags": True}, "samples/0/values/flags: the name 'flags' is reserved for the bridge"),
        ({"x": float("inf")}, "samples/0/values/x: inf is not a finite float"),
        ({"x": 10**400}, "is not a finite float"),
        ({"x": "12.5"}, "samples/0/values/x: str is not a number or boolean"),
    ],
)
def test_what_line_protocol_cannot_carry_is_refused(values: dict[str, Any], reason: str) -> None:
    with pytest.raises(PointError, match=re.escape(reason)):
        line_protocol(message([{"seq": 1, "t_ns": T0, "values": values}]))
