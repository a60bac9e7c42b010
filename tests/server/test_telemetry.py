"""The pipeline's health points (soclab.cloud.bridge.telemetry), as text and in the real database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from soclab.cloud.bridge.intake import Rejected
from soclab.cloud.bridge.points import line_protocol
from soclab.cloud.bridge.sink import InfluxSink
from soclab.cloud.bridge.telemetry import Telemetry, status_lines

InfluxTarget = Any  # tests/conftest.py
EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples" / "valid"
T0 = 1_700_000_000_000_000_000
MPPT = "soclab_bridge,bridge=b1,device=mppt,node=pi-01,site=lab1"


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def payload(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def data_body(device: str, *t_ns: int) -> bytes:
    source = {"site": "lab1", "node": "pi-01", "device": device, "kind": "mppt"}
    samples = [{"seq": i, "t_ns": t, "values": {"bat_v": 12.5}} for i, t in enumerate(t_ns)]
    return "\n".join(
        line_protocol({"schema": "soclab.data/1", "source": source, "samples": samples})
    ).encode()


def test_a_status_becomes_one_point_with_counters_as_integers_and_gauges_as_floats() -> None:
    message = example("status-online.json")
    (line,) = status_lines("soclab/lab1/pi-01/eload/status", payload(message))
    assert line == (
        "soclab_status,device=eload,kind=eload,node=pi-01,site=lab1 "
        "connects=1i,inflight_messages=2,"
        'last_error="timeout: no answer to object 71 within 0.2 s",'
        "messages_acked=7198i,messages_published=7200i,online=true,samples_read=7200i,"
        'seq_next=7201,spool_depth=2,spool_oldest_age_s=0.4,state="online",timeouts=2i '
        "1622238920000000000"
    )


def test_the_last_will_says_offline_with_its_reason_and_null_gauges_are_left_out() -> None:
    message = example("status-offline-will.json")
    message["gauges"] = {"spool_oldest_age_s": None, "spool_depth": 0}
    (line,) = status_lines("soclab/lab1/pi-01/mppt/status", payload(message))
    assert line == (
        "soclab_status,device=mppt,kind=mppt,node=pi-01,site=lab1 "
        'online=false,reason="connection-lost",spool_depth=0,state="offline" 1622238900000000000'
    )


@pytest.mark.parametrize(
    ("topic", "change", "reason"),
    [
        ("soclab/lab1/pi-02/eload/status", {}, "does not match topic"),
        ("soclab/lab1/pi-01/eload/data", {}, "not a status topic"),
        ("soclab/lab1/pi-01/eload/status", {"state": "sleeping"}, "state"),
        ("soclab/lab1/pi-01/eload/status", {"gauges": {"connects": 1.0}}, "both a counter and a gauge"),
        ("soclab/lab1/pi-01/eload/status", {"counters": {"online": 1}}, "field of its own"),
        ("soclab/lab1/pi-01/eload/status", {"counters": {"huge": 2**63}}, "int64"),
    ],
)
def test_a_status_that_cannot_be_stored_is_rejected_with_the_reason(
    topic: str, change: dict[str, Any], reason: str
) -> None:
    message = {**example("status-online.json"), **change}
    with pytest.raises(Rejected, match=reason):
        status_lines(topic, payload(message))


def test_a_gauge_beyond_a_float_is_rejected() -> None:
    text = payload(example("status-online.json")).replace(b'"spool_depth": 2', b'"spool_depth": 1e999')
    with pytest.raises(Rejected, match="finite"):
        status_lines("soclab/lab1/pi-01/eload/status", text)


def test_a_batch_gives_each_device_its_counts_and_lags() -> None:
    telemetry = Telemetry("b1")
    now = T0 + 10_000_000_000
    batch = telemetry.batch(
        [
            ("soclab/lab1/pi-01/mppt/data", data_body("mppt", T0, T0 + 1_000_000_000), T0 + 2_000_000_000),
            ("soclab/lab1/pi-01/mppt/data", data_body("mppt", T0 + 3_000_000_000), T0 + 3_500_000_000),
            ("soclab/lab1/pi-01/eload/data", data_body("eload", T0), T0 + 250_000_000),
            ("soclab/lab1/pi-01/eload/status", b"soclab_status,device=eload x=1 1", T0),  # not data
        ],
        now,
    )
    assert batch.lines == [
        "soclab_bridge,bridge=b1,device=eload,node=pi-01,site=lab1 "
        f"dead_letters=0i,lag_max_s=0.25,lag_mean_s=0.25,lag_min_s=0.25,messages=1i,samples=1i {now}",
        f"{MPPT} dead_letters=0i,lag_max_s=2,lag_mean_s=1.1666666666666667,lag_min_s=0.5,"
        f"messages=2i,samples=3i {now}",
    ]


def test_dead_letters_wait_for_a_successful_write() -> None:
    telemetry = Telemetry("b1")
    telemetry.dead_lettered("soclab/lab1/pi-01/mppt/data")
    telemetry.dead_lettered("soclab/lab1/pi-01/mppt/data")
    telemetry.dead_lettered("not/a/soclab/topic")
    first = telemetry.batch([], T0)
    assert first.lines == [
        f"soclab_bridge,bridge=b1 dead_letters=1i,messages=0i,samples=0i {T0}",
        f"{MPPT} dead_letters=2i,messages=0i,samples=0i {T0}",
    ]
    telemetry.dead_lettered("soclab/lab1/pi-01/mppt/data")  # while the write is under way
    assert telemetry.batch([], T0).lines == [
        f"soclab_bridge,bridge=b1 dead_letters=1i,messages=0i,samples=0i {T0}",
        f"{MPPT} dead_letters=3i,messages=0i,samples=0i {T0}",
    ]  # a failed write: nothing is lost
    telemetry.written(first)
    assert telemetry.pending_dead_letters == 1
    (line,) = telemetry.batch([], T0 + 1).lines
    assert "device=mppt" in line
    assert "dead_letters=1i" in line


def test_the_database_keeps_each_field_with_its_type(influxdb: InfluxTarget) -> None:
    telemetry = Telemetry("b1")
    telemetry.dead_lettered("soclab/lab1/pi-01/eload/data")
    batch = telemetry.batch([("soclab/lab1/pi-01/mppt/data", data_body("mppt", T0), T0 + 5)], T0 + 10)
    status = status_lines("soclab/lab1/pi-01/eload/status", payload(example("status-online.json")))
    sink = InfluxSink(influxdb.url, influxdb.token, influxdb.org, influxdb.bucket)
    try:
        sink.write("\n".join([*batch.lines, *status]).encode())
    finally:
        sink.close()
    types = {
        (series["name"], key): kind
        for series in influxdb.query("SHOW FIELD KEYS")
        for key, kind in series["values"]
    }
    assert types[("soclab_bridge", "samples")] == "integer"
    assert types[("soclab_bridge", "dead_letters")] == "integer"
    assert types[("soclab_bridge", "lag_max_s")] == "float"
    assert types[("soclab_status", "online")] == "boolean"
    assert types[("soclab_status", "spool_depth")] == "float"
    assert types[("soclab_status", "samples_read")] == "integer"
    assert types[("soclab_status", "state")] == "string"
    rows = influxdb.rows('SELECT "samples", "lag_max_s" FROM "soclab_bridge" WHERE "device" = \'mppt\'')
    assert rows == [{"time": T0 + 10, "samples": 1, "lag_max_s": 5e-9}]
