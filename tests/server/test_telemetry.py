"""The pipeline's health points (soclab.cloud.bridge.telemetry), as text and in the real database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from soclab.cloud.bridge.intake import Rejected
from soclab.cloud.bridge.sink import InfluxSink
from soclab.cloud.bridge.telemetry import Delivered, Telemetry, device_of, status_lines

InfluxTarget = Any  # tests/conftest.py
EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples" / "valid"
T0 = 1_700_000_000_000_000_000
MPPT = "soclab_bridge,bridge=b1,device=mppt,node=pi-01,site=lab1"


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def payload(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


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


def delivered(device: str, samples: int, lag_min_s: float, lag_max_s: float, lag_sum_s: float) -> Delivered:
    ns = 10**9
    return Delivered(
        ("lab1", "pi-01", device),
        samples,
        False,
        int(lag_min_s * ns),
        int(lag_max_s * ns),
        int(lag_sum_s * ns),
    )


def test_a_record_gives_each_device_its_counts_and_lags() -> None:
    telemetry = Telemetry("b1")
    telemetry.stored(delivered("mppt", 2, 1.0, 2.0, 3.0))
    telemetry.stored(delivered("mppt", 1, 0.5, 0.5, 0.5))
    telemetry.stored(delivered("eload", 1, 0.25, 0.25, 0.25))
    telemetry.stored(Delivered(("lab1", "pi-01", "eload"), 7, True, 0, 0, 0))  # a replay: no lag
    now = T0 + 10_000_000_000
    assert telemetry.take(now) == [
        b"soclab_bridge,bridge=b1,device=eload,node=pi-01,site=lab1 "
        b"dead_letters=0i,lag_max_s=0.25,lag_mean_s=0.25,lag_min_s=0.25,messages=1i,replayed=7i,samples=1i "
        + str(now).encode(),
        f"{MPPT} dead_letters=0i,lag_max_s=2,lag_mean_s=1.1666666666666667,lag_min_s=0.5,"
        f"messages=2i,samples=3i {now}".encode(),
    ]
    assert not telemetry.pending
    assert telemetry.take(now) == []


def test_dead_letters_are_counted_once_and_records_never_share_a_time() -> None:
    telemetry = Telemetry("b1")
    telemetry.dead_lettered(device_of("soclab/lab1/pi-01/mppt/data"))
    telemetry.dead_lettered(device_of("soclab/lab1/pi-01/mppt/data"))
    telemetry.dead_lettered(device_of("not/a/soclab/topic"))
    assert telemetry.take(T0) == [
        f"soclab_bridge,bridge=b1 dead_letters=1i,messages=0i,samples=0i {T0}".encode(),
        f"{MPPT} dead_letters=2i,messages=0i,samples=0i {T0}".encode(),
    ]
    telemetry.dead_lettered(device_of("soclab/lab1/pi-01/mppt/data"))
    (line,) = telemetry.take(T0)  # the same clock reading: the next nanosecond, not the same point
    assert line == f"{MPPT} dead_letters=1i,messages=0i,samples=0i {T0 + 1}".encode()


def test_the_database_keeps_each_field_with_its_type(influxdb: InfluxTarget) -> None:
    telemetry = Telemetry("b1")
    telemetry.dead_lettered(device_of("soclab/lab1/pi-01/eload/data"))
    telemetry.stored(Delivered(("lab1", "pi-01", "mppt"), 1, False, 5, 5, 5))
    telemetry.stored(Delivered(("lab1", "pi-01", "mppt"), 3, True, 0, 0, 0))
    record = telemetry.take(T0 + 10)
    status = status_lines("soclab/lab1/pi-01/eload/status", payload(example("status-online.json")))
    sink = InfluxSink(influxdb.url, influxdb.token, influxdb.org, influxdb.bucket)
    try:
        sink.write(b"\n".join([*record, *(line.encode() for line in status)]))
    finally:
        sink.close()
    types = {
        (series["name"], key): kind
        for series in influxdb.query("SHOW FIELD KEYS")
        for key, kind in series["values"]
    }
    assert types[("soclab_bridge", "samples")] == "integer"
    assert types[("soclab_bridge", "dead_letters")] == "integer"
    assert types[("soclab_bridge", "replayed")] == "integer"
    assert types[("soclab_bridge", "lag_max_s")] == "float"
    assert types[("soclab_status", "online")] == "boolean"
    assert types[("soclab_status", "spool_depth")] == "float"
    assert types[("soclab_status", "samples_read")] == "integer"
    assert types[("soclab_status", "state")] == "string"
    rows = influxdb.rows('SELECT "samples", "lag_max_s" FROM "soclab_bridge" WHERE "device" = \'mppt\'')
    assert rows == [{"time": T0 + 10, "samples": 1, "lag_max_s": 5e-9}]
