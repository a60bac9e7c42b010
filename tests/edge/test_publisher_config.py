"""Publisher configuration: TOML, environment over it, clear errors."""

from __future__ import annotations

import pytest

from soclab.edge.publisher.config import ConfigError, load

TOML = """
[source]
site = "lab1"
node = "pi-01"
device = "mppt"
kind = "mppt"

[instrument]
port = "/dev/soclab-mppt"

[mqtt]
host = "broker.example"
port = 8883
"""


def write(tmp_path, text):
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_file_then_environment(tmp_path):
    env = {"SOCLAB_MQTT_HOST": "127.0.0.1", "SOCLAB_MQTT_PORT": "1884", "SOCLAB_BATCH_MAX_SAMPLES": "7"}
    config = load(write(tmp_path, TOML), env=env)
    assert (config.mqtt.host, config.mqtt.port, config.batch.max_samples) == ("127.0.0.1", 1884, 7)
    assert str(config.topic) == "soclab/lab1/pi-01/mppt/data"
    assert config.client_id == "soclab-lab1-pi-01-mppt"
    assert config.instrument == {"port": "/dev/soclab-mppt"}


def test_password_only_from_environment(tmp_path):
    config = load(write(tmp_path, TOML), env={"SOCLAB_MQTT_PASSWORD": "from-env"})
    assert config.mqtt.password() is None  # load() does not read os.environ when env is given
    with pytest.raises(ConfigError, match="no setting 'password'"):
        load(write(tmp_path, TOML + 'password = "x"\n'), env={})


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (TOML.replace('kind = "mppt"', 'kind = "toaster"'), {}, "source.kind"),
        (TOML.replace('site = "lab1"', 'site = "Lab 1"'), {}, "site"),
        (TOML + "[nonsense]\n", {}, "unknown section"),
        (TOML, {"SOCLAB_MQTT_PORT": "eighty"}, "SOCLAB_MQTT_PORT"),
        (TOML.replace("port = 8883", 'port = "8883"'), {}, "port must be int"),
        ("[source\n", {}, "p.toml"),
    ],
)
def test_bad_settings_are_named(tmp_path, text, env, message):
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text), env=env)


def test_environment_reaches_into_instrument_sub_tables(tmp_path):
    text = TOML.replace("[mqtt]", '[instrument.standin]\nbattery_file = "/run/x"\n\n[mqtt]')
    env = {"SOCLAB_INSTRUMENT_STANDIN__BATTERY_FILE": "/var/lab/b", "SOCLAB_INSTRUMENT_PORT": "/dev/pts/3"}
    config = load(write(tmp_path, text), env=env)
    assert config.instrument == {"port": "/dev/pts/3", "standin": {"battery_file": "/var/lab/b"}}
