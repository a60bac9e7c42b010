"""Telegraf's configuration against the wire contract and the bridge's mapping (Telegraf itself
cannot be installed here; cloud/soclab/cloud/telegraf/README.md lists what stays unverified)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from soclab.cloud.bridge import points
from soclab.wire import DATA_SCHEMA, Topic
from soclab.wire.messages import schema_document

REPO = Path(__file__).resolve().parents[2]
TELEGRAF = REPO / "cloud" / "soclab" / "cloud" / "telegraf"
MOSQUITTO = REPO / "compose" / "mosquitto" / "config"


def config() -> dict[str, Any]:
    return tomllib.loads((TELEGRAF / "telegraf.conf").read_text(encoding="utf-8"))


def consumer() -> dict[str, Any]:
    (plugin,) = config()["inputs"]["mqtt_consumer"]
    return plugin


def test_the_readme_embeds_the_configuration_unchanged() -> None:
    readme = (TELEGRAF / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL)
    assert blocks == [(TELEGRAF / "telegraf.conf").read_text(encoding="utf-8")]


def test_the_readmes_expected_line_is_the_bridges() -> None:
    readme = (TELEGRAF / "README.md").read_text(encoding="utf-8")
    (expected,) = re.findall(r"```text\n(.*?)\n```", readme, flags=re.DOTALL)
    example = json.loads((REPO / "schemas" / "examples" / "valid" / "data-mppt.json").read_text())
    # The points the bridge writes (tests/cloud/test_points.py holds line_protocol to these).
    assert [point.to_line_protocol() for point in points.to_points(example)] == [expected]


def test_it_consumes_every_data_topic_with_qos_1_in_a_persistent_session() -> None:
    plugin = consumer()
    assert plugin["topics"] == [Topic.subscription("data")]
    assert plugin["qos"] == 1
    assert plugin["persistent_session"] is True
    assert plugin["client_id"]  # fixed: the broker keeps the session by it
    assert plugin["max_undelivered_messages"] <= 1000  # within the broker's max_inflight_messages
    assert plugin["topic_tag"] == ""  # no tag the bridge does not write
    assert config()["agent"]["omit_hostname"] is True


def test_it_connects_like_any_client_of_the_servers_broker() -> None:
    plugin = consumer()
    (server,) = plugin["servers"]
    assert server.startswith("ssl://")
    port = server.rsplit(":", 1)[1]
    assert f"listener {port}" in (MOSQUITTO / "mosquitto.conf").read_text(encoding="utf-8").splitlines()
    acl = (MOSQUITTO / "acl").read_text(encoding="utf-8")
    (grants,) = re.findall(rf"^user {plugin['username']}\n((?:topic .*\n)+)", acl, flags=re.MULTILINE)
    assert grants.splitlines() == [f"topic read {Topic.subscription('data')}"]
    assert plugin["password"].startswith("@{")  # a secret store, not a password
    for key in ("tls_ca", "tls_cert", "tls_key"):
        assert plugin[key]


def test_measurement_tags_fields_and_time_follow_the_schema_and_the_bridge() -> None:
    plugin = consumer()
    assert plugin["data_format"] == "json_v2"
    (parser,) = plugin["json_v2"]
    schema = schema_document(DATA_SCHEMA)
    sample = schema["$defs"]["sample"]["properties"]

    assert parser["measurement_name_path"] == "source.kind"  # points: measurement = source.kind
    assert "kind" in schema["$defs"]["source"]["required"]
    assert sorted(tag["path"] for tag in parser["tag"]) == sorted(f"source.{t}" for t in points.TAGS)
    assert all("rename" not in tag for tag in parser["tag"])  # tag name = the last path element
    assert set(points.TAGS) <= set(schema["$defs"]["source"]["required"])

    (samples,) = parser["object"]
    assert samples["path"] == "samples"
    assert schema["properties"]["samples"]["type"] == "array"
    assert samples["timestamp_key"] == "t_ns"
    assert sample["t_ns"]["type"] == "integer"
    assert "nanoseconds" in sample["t_ns"]["description"]
    assert samples["timestamp_format"] == "unix_ns"
    assert samples["disable_prepend_keys"] is True  # values.bat_v -> bat_v, as points.py names it
    assert samples["fields"] == {points.SEQ_FIELD: "int"}  # the only integer field, as in points.py
    assert sample[points.SEQ_FIELD]["type"] == "integer"
    assert samples["excluded_keys"] == [points.FLAGS_FIELD]  # documented: json_v2 has no join
    assert "tags" not in samples  # nothing of a sample becomes a tag


def test_it_writes_where_the_bridge_writes() -> None:
    (output,) = config()["outputs"]["influxdb_v2"]
    assert output["organization"] == "${SOCLAB_INFLUX_ORG}"
    assert output["bucket"] == "${SOCLAB_INFLUX_BUCKET}"
    assert output["token"].startswith("@{")  # compose's test checks the variables are the bridge's


def test_the_readme_names_the_image_compose_runs() -> None:
    compose = (REPO / "compose" / "compose.yaml").read_text(encoding="utf-8")
    (image,) = re.findall(r"image: (telegraf:\S+)", compose)
    assert f"`{image}`" in (TELEGRAF / "README.md").read_text(encoding="utf-8")
