"""The operator's InfluxDB settings and the one query path: InfluxQL over ``/query`` with a token,
through the v2 shim in front of the real InfluxDB 1.6.7 (as InfluxDB 1.8+ and 2 serve it)."""

from __future__ import annotations

import argparse

import pytest

from soclab.tools.influx import (
    ConfigError,
    InfluxClient,
    InfluxError,
    InfluxSettings,
    add_influx_arguments,
    influx_settings,
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_influx_arguments(parser)
    return parser.parse_args(argv)


def test_settings_come_from_file_then_environment_then_flags(tmp_path) -> None:
    config = tmp_path / "tools.toml"
    config.write_text('[influx]\nurl = "https://influx.lab.example:8086"\norg = "lab"\nbucket = "soclab"\n')
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    env = {"SOCLAB_INFLUX_BUCKET": "other", "SOCLAB_INFLUX_TOKEN_FILE": str(token)}
    settings = influx_settings(parse(["--config", str(config), "--influx-org", "lab2"]), env)
    assert (settings.url, settings.org, settings.bucket, settings.token) == (
        "https://influx.lab.example:8086",
        "lab2",
        "other",
        "s3cret",
    )
    assert "s3cret" not in repr(settings)
    assert InfluxSettings(bucket="db/rp").db == "db"
    assert InfluxSettings(bucket="db/rp").rp == "rp"


def test_secrets_never_come_from_the_file_and_not_from_two_places(tmp_path) -> None:
    config = tmp_path / "tools.toml"
    config.write_text('[influx]\nbucket = "soclab"\ntoken = "oops"\n')
    with pytest.raises(ConfigError, match="SOCLAB_INFLUX_TOKEN or token_file"):
        influx_settings(parse(["--config", str(config)]), {})
    token = tmp_path / "token"
    token.write_text("a")
    with pytest.raises(ConfigError, match="both set"):
        influx_settings(
            parse(["--influx-bucket", "b", "--influx-token-file", str(token)]), {"SOCLAB_INFLUX_TOKEN": "b"}
        )
    with pytest.raises(ConfigError, match="bucket"):
        influx_settings(parse([]), {})
    with pytest.raises(ConfigError, match="tls_ca"):
        influx_settings(parse(["--influx-bucket", "b", "--influx-tls-ca", str(tmp_path / "no-ca.crt")]), {})


def test_queries_go_through_the_shim_with_the_token_and_errors_are_named(influxdb) -> None:
    from influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS

    with InfluxDBClient(url=influxdb.url, token=influxdb.token, org="-") as writer:
        lines = [f"labjack,site=s,node=n,device=lj bat_a={i / 10} {i * 1_000_000_000}" for i in range(25)]
        writer.write_api(write_options=SYNCHRONOUS).write(bucket=influxdb.bucket, record=lines)
    client = InfluxClient(InfluxSettings(url=influxdb.url, bucket=influxdb.bucket, token=influxdb.token))
    series = list(client.query("SELECT bat_a FROM labjack GROUP BY device", chunk_size=10))
    assert [len(s["values"]) for s in series] == [10, 10, 5]  # chunked, as a long answer arrives
    assert series[0]["tags"] == {"device": "lj"}
    assert series[0]["values"][1] == [1_000_000_000, 0.1]
    with pytest.raises(InfluxError, match="error parsing query"):
        list(client.query("SELEKT nothing"))
    bad = InfluxClient(InfluxSettings(url=influxdb.url, bucket=influxdb.bucket, token="no-colon"))
    with pytest.raises(InfluxError, match="HTTP 401"):
        list(bad.query("SELECT * FROM labjack"))
    gone = InfluxClient(InfluxSettings(url="http://127.0.0.1:9", bucket="x", timeout_s=2))
    with pytest.raises(InfluxError, match="unreachable"):
        list(gone.query("SELECT 1"))
