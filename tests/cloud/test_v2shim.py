"""The v2 write shim: influxdb-client's v2 write path against the real InfluxDB 1.6.7."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from soclab.dev.localservices import InfluxDB1, V2WriteShim
from soclab.dev.localservices.v2shim import v2_error

InfluxTarget = Any  # tests/conftest.py


@pytest.fixture
def client(influxdb: InfluxTarget) -> Iterator[InfluxDBClient]:
    with InfluxDBClient(url=influxdb.url, token=influxdb.token, org=influxdb.org) as c:
        yield c


def test_influxdb_client_writes_land_in_influxdb_1(influxdb: InfluxTarget, client: InfluxDBClient) -> None:
    write = client.write_api(write_options=SYNCHRONOUS)
    write.write(influxdb.bucket, record=b"m,loc=a\\ b f=1.5,g=true 1700000000000000001", write_precision="ns")
    write.write(
        f"{influxdb.bucket}/autogen", record="m,loc=c f=2 1700000000000002", write_precision=WritePrecision.US
    )
    write.write(influxdb.bucket, record="m,loc=d f=3 1700000000003", write_precision=WritePrecision.MS)
    write.write(influxdb.bucket, record="m,loc=e f=4 1700000004", write_precision=WritePrecision.S)
    assert influxdb.rows("SELECT f, g, loc FROM m") == [
        {"time": 1700000000000000001, "f": 1.5, "g": True, "loc": "a b"},
        {"time": 1700000000000002000, "f": 2.0, "g": None, "loc": "c"},
        {"time": 1700000000003000000, "f": 3.0, "g": None, "loc": "d"},
        {"time": 1700000004000000000, "f": 4.0, "g": None, "loc": "e"},
    ]


def test_gzip_bodies_pass_through(influxdb: InfluxTarget) -> None:
    with InfluxDBClient(url=influxdb.url, token=influxdb.token, org=influxdb.org, enable_gzip=True) as c:
        c.write_api(write_options=SYNCHRONOUS).write(influxdb.bucket, record="m f=1 1")
    http = urllib3.PoolManager()
    response = http.request(
        "POST",
        f"{influxdb.url}/api/v2/write?bucket={influxdb.bucket}&org=x",
        body=gzip.compress(b"m f=2 2"),
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status == 204
    assert [r["f"] for r in influxdb.rows("SELECT f FROM m")] == [1.0, 2.0]


@pytest.mark.parametrize(
    ("bucket", "body", "status", "code", "message"),
    [
        ("{db}", b"garbage", 400, "invalid", "unable to parse 'garbage': missing fields"),
        ("nope", b"m f=1 1", 404, "not found", 'database not found: "nope"'),
        ("{db}/nope", b"m f=1 1", 500, "internal error", "retention policy not found: nope"),
    ],
)
def test_errors_are_translated_to_the_v2_form(
    influxdb: InfluxTarget,
    client: InfluxDBClient,
    bucket: str,
    body: bytes,
    status: int,
    code: str,
    message: str,
) -> None:
    with pytest.raises(ApiException) as raised:
        client.write_api(write_options=SYNCHRONOUS).write(bucket.format(db=influxdb.db), record=body)
    assert raised.value.status == status
    assert json.loads(raised.value.body) == {"code": code, "message": message}
    assert raised.value.message == message  # what influxdb-client reports
    assert raised.value.headers["X-Platform-Error-Code"] == code


def test_a_field_type_conflict_is_refused_with_400(influxdb: InfluxTarget, client: InfluxDBClient) -> None:
    write = client.write_api(write_options=SYNCHRONOUS)
    write.write(influxdb.bucket, record="m f=1 1")
    with pytest.raises(ApiException) as raised:
        write.write(influxdb.bucket, record="m f=true 2")
    assert raised.value.status == 400
    assert "field type conflict" in json.loads(raised.value.body)["message"]


def test_requests_the_v2_api_refuses_are_refused(influxdb: InfluxTarget) -> None:
    http = urllib3.PoolManager()
    cases = {
        "/api/v2/write?org=x": (400, "bucket is required"),
        f"/api/v2/write?bucket={influxdb.db}&precision=h": (400, "precision 'h' is not one of ns, us, ms, s"),
        "/api/v2/query": (404, "path /api/v2/query not found"),
    }
    for path, (status, message) in cases.items():
        response = http.request("POST", f"{influxdb.url}{path}", body=b"m f=1 1")
        assert (response.status, json.loads(response.data)["message"]) == (status, message), path


def test_token_credentials_reach_influxdb_1(tmp_path: Path) -> None:
    with (
        InfluxDB1(tmp_path / "influxdb", admin=("admin", "s3cret")) as server,
        V2WriteShim(server.url) as shim,
    ):
        server.create_database("db")
        for token, status in [("admin:s3cret", None), ("admin:wrong", 401), ("no-colon", 401), ("", 401)]:
            with InfluxDBClient(url=shim.url, token=token, org="x") as c:
                write = c.write_api(write_options=SYNCHRONOUS)
                if status is None:
                    write.write("db", record="m f=1 1")
                    continue
                with pytest.raises(ApiException) as raised:
                    write.write("db", record="m f=1 1")
                assert raised.value.status == status, token
                assert json.loads(raised.value.body)["code"] == "unauthorized"
        assert server.query("SELECT f FROM m", db="db")[0]["values"] == [[1, 1]]


def test_health_endpoints_and_an_unreachable_server(tmp_path: Path) -> None:
    with InfluxDB1(tmp_path / "influxdb") as server, V2WriteShim(server.url) as shim:
        server.create_database("db")
        with InfluxDBClient(url=shim.url, token="u:p", org="x") as c:
            assert c.ping()
            assert c.version().startswith("1.6")
            with pytest.deprecated_call():  # influxdb-client prefers ping(); Grafana & co. use /health
                assert c.health().status == "pass"
            assert c.ready().status == "ready"
            server.stop()
            assert not c.ping()
            with pytest.deprecated_call():
                assert c.health().status == "fail"
            with pytest.raises(ApiException) as raised:
                c.write_api(write_options=SYNCHRONOUS).write("db", record="m f=1 1")
            assert raised.value.status == 503
            assert json.loads(raised.value.body)["code"] == "unavailable"
            server.start()
            c.write_api(write_options=SYNCHRONOUS).write("db", record="m f=1 1")
            assert c.ping()


def test_v2_error_keeps_a_body_that_is_not_json() -> None:
    assert v2_error(502, b"Bad Gateway\n") == {"code": "internal error", "message": "Bad Gateway"}
    assert v2_error(418, b"") == {"code": "invalid", "message": "HTTP 418"}
