"""The bridge's configuration: the example file, environment overrides, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from soclab.cloud.bridge import ConfigError, load

EXAMPLE = Path(__file__).parents[2] / "cloud/soclab/cloud/bridge/bridge.example.toml"
TOKEN = {"SOCLAB_BRIDGE_INFLUX_TOKEN": "t0ken"}


def test_the_example_loads_with_a_token_from_the_environment() -> None:
    config = load(EXAMPLE, env=TOKEN)
    assert config.influx.token == "t0ken"
    assert config.client_id == "soclab-bridge-lab1"
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls_ca) == (
        "mqtt.example.org",
        8883,
        "/etc/soclab/ca.crt",
    )
    assert "t0ken" not in repr(config)


def test_environment_variables_override_the_file() -> None:
    env = {
        **TOKEN,
        "SOCLAB_BRIDGE_SITE": "lab2",
        "SOCLAB_BRIDGE_MQTT_PORT": "1883",
        "SOCLAB_BRIDGE_INFLUX_GZIP": "true",
        "SOCLAB_BRIDGE_BATCH_MS": "250",
        "SOCLAB_BRIDGE_MQTT_PASSWORD": "pw",
        "SOCLAB_BRIDGE_INTAKE_MAX_PAYLOAD_BYTES": "1000000",
        "SOCLAB_BRIDGE_INTAKE_PAST_S": "3600",
    }
    config = load(EXAMPLE, env=env)
    assert (config.site, config.mqtt.port, config.influx.gzip, config.batch.ms) == ("lab2", 1883, True, 250)
    assert config.mqtt.password == "pw"
    assert (config.intake.max_payload_bytes, config.intake.past_s, config.intake.future_s) == (
        1_000_000,
        3600,
        300,
    )


def test_secrets_come_from_files_named_in_the_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n", encoding="utf-8")
    config_file = tmp_path / "bridge.toml"
    config_file.write_text(
        f'[influx]\nurl = "http://x:8086"\norg = "o"\nbucket = "b"\ntoken_file = "{tmp_path / "token"}"\n',
        encoding="utf-8",
    )
    assert load(config_file, env={}).influx.token == "from-file"


INFLUX = '[influx]\nurl = "http://x:8086"\norg = "o"\nbucket = "b"\n'


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (INFLUX + 'token = "secret"', TOKEN, "secrets are not read from the config file"),
        (INFLUX + '[mqtt]\npassword = "secret"', TOKEN, "secrets are not read from the config file"),
        ("", TOKEN, "[influx] url is required"),
        (INFLUX, {}, "InfluxDB token missing"),
        (INFLUX + "[mqtt]\nhots = 1", TOKEN, "[mqtt] has no setting 'hots'"),
        (INFLUX + '[mqtt]\nport = "1883"', TOKEN, "[mqtt] port must be int"),
        (INFLUX + "[bridge]\nsite = 'Lab 1'", TOKEN, "[bridge] site 'Lab 1' must be '+' or match"),
        (INFLUX + "[batch]\npoints = 0", TOKEN, "[batch] points must be positive"),
        (INFLUX + "[intake]\nmax_spread_s = 0", TOKEN, "[intake] max_spread_s must be positive"),
        (
            INFLUX + "[mqtt]\nmax_pending_bytes = 1000",
            TOKEN,
            "max_pending_bytes must be at least [intake] max_payload_bytes",
        ),
        (INFLUX + "[nope]", TOKEN, "unknown section(s) ['nope']"),
        (INFLUX + '[mqtt]\nusername = "u"\npassword_file = "/nonexistent"', TOKEN, "No such file"),
        (INFLUX + 'token_file = "/x"', TOKEN, "both set"),
        (
            INFLUX,
            {**TOKEN, "SOCLAB_BRIDGE_SITTE": "lab1"},
            "SOCLAB_BRIDGE_SITTE names no setting of the bridge",
        ),
        (INFLUX, {**TOKEN, "SOCLAB_BRIDGE_MQTT_HOTS": "x"}, "SOCLAB_BRIDGE_MQTT_HOTS"),
        (INFLUX, {**TOKEN, "SOCLAB_BRIDGE_INTAKE_PAST_S": "soon"}, "SOCLAB_BRIDGE_INTAKE_PAST_S='soon'"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    config_file = tmp_path / "bridge.toml"
    config_file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load(config_file, env=env)
    assert message in str(error.value)
