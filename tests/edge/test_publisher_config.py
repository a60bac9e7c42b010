"""Publisher configuration: TOML, environment over it, clear errors."""

from __future__ import annotations

import pytest

from soclab.edge.instruments.ea_el3000.options import EaLoadOptions
from soclab.edge.instruments.labjack_t7.options import LabJackOptions
from soclab.edge.instruments.libresolar_mppt.options import MpptOptions
from soclab.edge.publisher.config import EXAMPLE, ConfigError, load

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
    assert config.instrument == MpptOptions(port="/dev/soclab-mppt")


def test_password_from_environment_or_file_never_from_the_toml(tmp_path):
    with_user = TOML + 'username = "lab1/pi-01/mppt"\n'
    config = load(write(tmp_path, with_user), env={"SOCLAB_MQTT_PASSWORD": "from-env"})
    assert config.mqtt.password == "from-env"
    assert "from-env" not in repr(config)
    (tmp_path / "pw").write_text("from-file\n")
    config = load(write(tmp_path, with_user + f'password_file = "{tmp_path / "pw"}"\n'), env={})
    assert config.mqtt.password == "from-file"
    with pytest.raises(ConfigError, match="secrets are not read from the config file"):
        load(write(tmp_path, TOML + 'password = "x"\n'), env={})


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        ('password_file = "{missing}"\n', {}, "password_file '.*missing': No such file"),
        ('password_file = "{pw}"\n', {"SOCLAB_MQTT_PASSWORD": "x"}, "both set: set only one"),
        ('password_file = "{empty}"\n', {}, "is empty"),
    ],
)
def test_password_mistakes_are_configuration_errors(tmp_path, extra, env, message):
    (tmp_path / "pw").write_text("secret")
    (tmp_path / "empty").write_text("\n")
    paths = {name: tmp_path / name for name in ("missing", "pw", "empty")}
    text = TOML + 'username = "u"\n' + extra.format(**paths)
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text), env=env)


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (TOML.replace('kind = "mppt"', 'kind = "toaster"'), {}, "[source] kind 'toaster' is not one of mppt"),
        (TOML.replace('site = "lab1"', 'site = "Lab 1"'), {}, "site"),
        (TOML + "[nonsense]\n", {}, "unknown section"),
        (TOML, {"SOCLAB_MQTT_HOTS": "x"}, "SOCLAB_MQTT_HOTS: [mqtt] has no setting 'hots'"),
        (TOML, {"SOCLAB_INSTRUMENT_POLL_HZ": "2"}, "SOCLAB_INSTRUMENT_POLL_HZ: [instrument] has no setting"),
        (TOML.replace('port = "/dev/soclab-mppt"', "port = 3"), {}, "[instrument] port must be str, got 3"),
        (TOML, {"SOCLAB_MQTT_PORT": "eighty"}, "SOCLAB_MQTT_PORT"),
        (TOML.replace("port = 8883", 'port = "8883"'), {}, "port must be int"),
        ("[source\n", {}, "p.toml"),
    ],
)
def test_bad_settings_are_named(tmp_path, text, env, message):
    with pytest.raises(ConfigError) as error:
        load(write(tmp_path, text), env=env)
    assert message in str(error.value)


LABJACK = """
[source]
site = "lab1"
node = "pi-01"
device = "labjack"
kind = "labjack"

[instrument]
backend = "standin"

[instrument.channels.bat_v]
ain = "AIN2"
calibration = "divider"
ratio = 2.0

[instrument.standin]
battery_file = "/run/x"
"""


def test_environment_reaches_into_instrument_sub_tables(tmp_path):
    env = {
        "SOCLAB_INSTRUMENT_STANDIN__BATTERY_FILE": "/var/lab/b",
        "SOCLAB_INSTRUMENT_CHANNELS__BAT_V__RATIO": "2.5",
        "SOCLAB_INSTRUMENT_MODE": "stream",
    }
    config = load(write(tmp_path, LABJACK), env=env)
    assert isinstance(config.instrument, LabJackOptions)
    assert config.instrument.standin == {"battery_file": "/var/lab/b"}
    assert config.instrument.channels["bat_v"].ratio == 2.5
    assert config.instrument.mode == "stream"


def test_each_kind_gets_its_own_options_and_none_without_a_table(tmp_path):
    eload = TOML.replace('kind = "mppt"', 'kind = "eload"')
    config = load(write(tmp_path, eload), env={"SOCLAB_INSTRUMENT_CAST": "false"})
    assert config.instrument == EaLoadOptions(port="/dev/soclab-mppt", cast=False)
    bare = TOML.replace('[instrument]\nport = "/dev/soclab-mppt"\n', "")
    assert load(write(tmp_path, bare), env={}).instrument is None  # a caller bringing its own instrument


def test_the_example_configuration_loads_as_it_is_documented():
    """The example a Pi user copies (edge/soclab/edge/publisher/publisher.example.toml)."""
    config = load(EXAMPLE, env={"SOCLAB_MQTT_PASSWORD_FILE": "", "SOCLAB_MQTT_PASSWORD": "x"})
    assert config.instrument == MpptOptions(
        port="/dev/soclab-mppt", extra_fields=("int_degc", "bat_degc"), extra_every_s=10.0
    )
    assert str(config.topic) == "soclab/lab1/pi-01/mppt/data"
    assert (config.mqtt.port, config.mqtt.tls_ca) == (8883, "/etc/soclab/tls/ca.crt")
