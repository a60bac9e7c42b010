"""Converge the edge role on a debootstrapped Debian bookworm, twice, then look at what it made.

The target is a chroot (community.general.chroot): packages install from Debian for real, the edge
distribution is packed from a snapshot of this checkout and pip-installed from PyPI into its
venv, files are written, units enabled. systemd is not PID 1 there, so the role starts, restarts
and reloads nothing (it checks /run/systemd/system), and neither the udev rules nor the services
can be seen at work: what is checked is what a boot would use.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ansiblekit import Project, Run, snapshot_sources
from bookworm import Target, TargetError

# A converge takes minutes (the debootstrap the first time, apt and pip from the network).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

HOST = "pi-07"
SITE = "lab9"
INSTRUMENTS: list[dict[str, Any]] = [
    # Two of one kind, told apart by their USB serial numbers.
    {"device": "mppt-a", "kind": "mppt", "usb_serial": "0671FF3834"},
    {"device": "mppt-b", "kind": "mppt", "usb_serial": "066EFF5052", "instrument": {"port": "/dev/ttyACM9"}},
    {"device": "eload", "kind": "eload", "instrument": {"poll_hz": 2.0}, "log_level": "DEBUG"},
    {
        "device": "labjack",
        "kind": "labjack",
        "instrument": {
            "backend": "ljm",
            "mode": "stream",
            "scan_rate_hz": 100.0,
            "scans_per_read": 50,
            "channels": {
                "bat_a": {"ain": "AIN1", "calibration": "lem_la55p", "resistor_ohm": 150.0, "turns": 1},
                "bat_v": {"ain": "AIN2", "calibration": "divider", "ratio": 2.0},
            },
        },
        "batch": {"max_samples": 500, "max_delay_s": 0.0},
        "spool_max_samples": 2000000,
    },
]
BROKER = "broker.lab9.test"
UNITS = [f"soclab-publisher@{i['device']}.service" for i in INSTRUMENTS]
RUN = f"{SITE}/{HOST}/run"  # the run controller's account (a load and a charger are attached)


def user(device: str) -> str:
    return f"{SITE}/{HOST}/{device}"


@dataclass
class Converged:
    target: Target
    project: Project
    check: Run
    first: Run
    second: Run
    accounts: dict[str, dict[str, str]]
    ca: str


@pytest.fixture(scope="module")
def converged(tmp_path_factory: pytest.TempPathFactory, pki) -> Iterator[Converged]:
    folder = tmp_path_factory.mktemp("edge")
    if os.geteuid() != 0:
        pytest.skip("a chroot target needs root")
    try:
        target = Target.create(folder / "root", HOST)
    except TargetError as exc:
        pytest.fail(f"no bookworm target: {exc}")
    try:
        project = Project.create(folder)
        sources = snapshot_sources(folder / "sources")
        accounts = {}
        for device in [i["device"] for i in INSTRUMENTS] + ["run"]:
            pem = pki("client", user(device))
            accounts[user(device)] = {
                "password": f"pw-{device}-x",
                "tls_cert": pem["cert"],
                "tls_key": pem["key"],
            }
        accounts["soclab-bridge"] = {"password": "pw-bridge"}
        ca = pki("ca")["cert"]
        project.write_vault(
            {
                "vault_soclab_mqtt_accounts": accounts,
                "vault_soclab_tls_ca_cert": ca,
                "vault_soclab_tls_server_cert": "x",
                "vault_soclab_tls_server_key": "x",
            }
        )
        project.write_inventory(
            {
                "soclab_edge": {
                    "hosts": {
                        HOST: {
                            "ansible_connection": "community.general.chroot",
                            "ansible_host": str(target.path),
                            "ansible_python_interpreter": "/usr/bin/python3",
                            # group_vars/all/main.yml holds the lab's settings; host variables
                            # go over them.
                            "soclab_site": SITE,
                            "soclab_mqtt_host": BROKER,
                            "soclab_edge_source_dir": str(sources),
                            "soclab_edge_instruments": INSTRUMENTS,
                        }
                    }
                },
            }
        )
        check, first, second = project.converge_twice("edge.yml", "edge")
        yield Converged(target, project, check, first, second, accounts, ca)
    finally:
        target.destroy()


def test_check_mode_on_a_fresh_target(converged: Converged) -> None:
    recap = converged.check.recap[HOST]
    assert recap["failed"] == 0
    assert recap["changed"] > 0


def test_first_run_changes_the_target(converged: Converged) -> None:
    recap = converged.first.recap[HOST]
    assert recap["failed"] == 0
    assert recap["changed"] > 0


def test_second_run_changes_nothing(converged: Converged) -> None:
    recap = converged.second.recap[HOST]
    assert recap["failed"] == 0
    assert recap["changed"] == 0, "\n".join(converged.second.changed_tasks())


def test_units_are_installed_enabled_and_valid(converged: Converged) -> None:
    root = converged.target.path
    assert (root / "etc/systemd/system/soclab-publisher@.service").is_file()
    for unit in UNITS:
        link = root / "etc/systemd/system/multi-user.target.wants" / unit
        assert link.is_symlink(), f"{unit} is not enabled"
    for unit in ("chrony.service", "chrony-wait.service"):
        assert (root / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink(), unit
    result = converged.target.run(["systemd-analyze", "verify", *UNITS], check=False)
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), "systemd-analyze verify warned"
    # The hardening, as systemd itself scores it (0 = locked down, 10 = exposed): "OK" is < 3.
    result = converged.target.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=30", "--no-pager", UNITS[0]],
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    unit = (root / "etc/systemd/system/soclab-publisher@.service").read_text()
    for line in (
        "After=network-online.target time-sync.target",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/soclab/spool",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyACM rw",
        "DeviceAllow=char-usb_device rw",
        "User=soclab",
        "SupplementaryGroups=dialout",
        "ExecStart=/opt/soclab/venv/bin/soclab-publish --config /etc/soclab/publishers/%i.toml",
    ):
        assert line in unit.splitlines(), line


def test_the_link_watchdog_is_scheduled_and_valid(converged: Converged) -> None:
    root = converged.target.path
    assert (root / "etc/systemd/system/timers.target.wants/soclab-linkwatch.timer").is_symlink()
    units = ["soclab-linkwatch.service", "soclab-linkwatch.timer"]
    result = converged.target.run(["systemd-analyze", "verify", *units], check=False)
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), "systemd-analyze verify warned"
    service = (root / "etc/systemd/system/soclab-linkwatch.service").read_text().splitlines()
    [exec_start] = [line for line in service if line.startswith("ExecStart=")]
    assert exec_start.split("=", 1)[1].split() == [
        "/opt/soclab/venv/bin/soclab-linkwatch", "--host", BROKER, "--port", "8883",
        "--interface", "wlan0", "--failures", "3", "--reboot-after", "0",
        "--state", "/run/soclab-linkwatch/state.json",
    ]  # fmt: skip
    assert "CapabilityBoundingSet=CAP_NET_ADMIN" in service
    timer = (root / "etc/systemd/system/soclab-linkwatch.timer").read_text()
    assert "OnUnitActiveSec=60s" in timer.splitlines()
    # The command runs on the target, as the timer would run it (no broker there: a dry run).
    result = converged.target.run(
        [*exec_start.split("=", 1)[1].split()[:-2], "--state", "/tmp/linkwatch.json", "--dry-run",
         "--timeout", "1", "--host", "127.0.0.1", "--port", "9"],
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "event=link_down" in result.stderr
    powersave = (root / "etc/NetworkManager/conf.d/50-soclab-wifi-powersave.conf").read_text()
    assert "wifi.powersave = 2" in powersave.splitlines()


def test_udev_rules_name_every_instrument(converged: Converged) -> None:
    rules = (converged.target.path / "etc/udev/rules.d/70-soclab.rules").read_text()
    lines = [line for line in rules.splitlines() if line and not line.startswith("#")]

    def rule(*parts: str) -> None:
        assert any(all(p in line for p in parts) for line in lines), f"no rule with {parts}:\n{rules}"

    rule(
        'SUBSYSTEM=="tty"',
        'ATTRS{idVendor}=="0483"',
        'ATTRS{idProduct}=="374b"',
        'ATTRS{serial}=="0671FF3834"',
        'SYMLINK+="soclab-mppt-a"',
    )
    rule('ATTRS{serial}=="066EFF5052"', 'SYMLINK+="soclab-mppt-b"')
    rule('ATTRS{idVendor}=="232e"', 'ATTRS{idProduct}=="0010"', 'SYMLINK+="soclab-eload"', 'GROUP="dialout"')
    rule('ATTRS{idVendor}=="232e"', 'ATTRS{idProduct}=="0018"', 'SYMLINK+="soclab-eload"')
    rule(
        'SUBSYSTEM=="usb"',
        'ATTR{idVendor}=="0cd5"',
        'ATTR{idProduct}=="0007"',
        'GROUP="soclab"',
        'MODE="0660"',
    )
    assert len(lines) == 5
    modules = (converged.target.path / "etc/modules-load.d/soclab.conf").read_text().split()
    assert {"cdc_acm", "usbserial"} <= set(modules)


def test_the_venv_has_the_edge_distribution_only(converged: Converged) -> None:
    python = "/opt/soclab/venv/bin/python"
    result = converged.target.run(
        [
            python,
            "-c",
            "import importlib.util as u, soclab.edge.publisher.cli, soclab.wire;"
            "print(u.find_spec('influxdb_client'), u.find_spec('soclab.cloud'), u.find_spec('soclab.dev'),"
            " u.find_spec('soclab.tools'), u.find_spec('labjack.ljm') is not None)",
        ]
    )
    # No server code, no development code (local servers, simulators, the LJM stand-in) on the Pi.
    assert result.stdout.split() == ["None", "None", "None", "None", "True"]
    packages = converged.target.run([python, "-m", "pip", "list", "--format=freeze"]).stdout.lower()
    names = {line.split("==")[0] for line in packages.split()}
    assert {"soclab-edge", "soclab-wire", "paho-mqtt", "pyserial", "labjack-ljm", "msgspec"} <= names
    assert not names & {"influxdb-client", "soclab-cloud", "soclab-dev", "soclab-tools", "reactivex"}, names


def expected_config(instrument: dict[str, Any]) -> dict[str, Any]:
    """What the inventory says, with the role's documented defaults."""
    device = instrument["device"]
    files = f"/etc/soclab/secrets/{user(device).replace('/', '.')}"
    table = {"port": f"/dev/soclab-{device}"} if instrument["kind"] != "labjack" else {}
    if instrument["kind"] == "mppt":
        table |= {"extra_fields": ["int_degc", "bat_degc"], "extra_every_s": 10.0}
    return {
        "log_level": instrument.get("log_level", "INFO"),
        "source": {"site": SITE, "node": HOST, "device": device, "kind": instrument["kind"]},
        "instrument": table | instrument.get("instrument", {}),
        "mqtt": {
            "host": BROKER,
            "port": 8883,
            "username": user(device),
            "password_file": f"{files}.password",
            "keepalive_s": 30,
            "tls_ca": "/etc/soclab/tls/ca.crt",
            "tls_cert": f"{files}.crt",
            "tls_key": f"{files}.key",
        },
        "batch": instrument.get("batch", {"max_samples": 100, "max_delay_s": 0.0}),
        "spool": {
            "path": f"/var/lib/soclab/spool/{device}.sqlite",
            "max_samples": instrument.get("spool_max_samples", 10_000_000),
            "sync": "full",
        },
        "status": {"interval_s": 5.0},
        "control": {"socket": "/run/soclab/{device}.sock"},
    }


def test_configuration_files_match_the_inventory(converged: Converged) -> None:
    folder = converged.target.path / "etc/soclab/publishers"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i['device']}.toml" for i in INSTRUMENTS)
    for instrument in INSTRUMENTS:
        rendered = tomllib.loads((folder / f"{instrument['device']}.toml").read_text())
        assert rendered == expected_config(instrument), instrument["device"]
    root = converged.target.path
    assert (root / "etc/soclab/tls/ca.crt").read_text() == converged.ca.strip() + "\n"
    for instrument in INSTRUMENTS:
        account = converged.accounts[user(instrument["device"])]
        files = root / "etc/soclab/secrets" / user(instrument["device"]).replace("/", ".")
        assert Path(f"{files}.password").read_text() == account["password"] + "\n"
        assert Path(f"{files}.crt").read_text() == account["tls_cert"].strip() + "\n"
        assert Path(f"{files}.key").read_text() == account["tls_key"].strip() + "\n"
        assert Path(f"{files}.key").stat().st_mode & 0o777 == 0o640


def test_the_publisher_accepts_its_configuration_as_the_service_user(converged: Converged) -> None:
    """What soclab-publish does at start, run as the service account: load the file, read the
    password, build the driver from [instrument] (no device is opened)."""
    script = (
        "import sys\n"
        "from soclab.edge.publisher import config as c\n"
        "from soclab.edge.instruments import build\n"
        "from soclab.edge.instruments.labjack_t7.backend import LJMUnavailable\n"
        "for device in sys.argv[1:]:\n"
        "    cfg = c.load(f'/etc/soclab/publishers/{device}.toml', env={})\n"
        "    try:\n"
        "        build(cfg.source.kind, cfg.instrument)\n"
        "    except LJMUnavailable:\n"
        "        pass  # the settings were checked; LJM's native library is not installed here\n"
        "    print(device, cfg.topic, cfg.spool_path, cfg.spool.max_samples, cfg.mqtt.password)\n"
    )
    devices = [i["device"] for i in INSTRUMENTS]
    result = converged.target.run(
        ["runuser", "-u", "soclab", "--", "/opt/soclab/venv/bin/python", "-c", script, *devices], check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for instrument, line in zip(INSTRUMENTS, lines, strict=True):
        device = instrument["device"]
        assert line.split() == [
            device,
            f"soclab/{SITE}/{HOST}/{device}/data",
            f"/var/lib/soclab/spool/{device}.sqlite",
            str(instrument.get("spool_max_samples", 10_000_000)),
            converged.accounts[user(device)]["password"],
        ]


def test_the_run_controller_is_installed_enabled_and_configured(converged: Converged) -> None:
    """A load and a charger are attached, so runs are on: soclab-run.service with its settings,
    account and journal; it loads its configuration as the service user."""
    root = converged.target.path
    assert (root / "etc/systemd/system/multi-user.target.wants/soclab-run.service").is_symlink()
    result = converged.target.run(["systemd-analyze", "verify", "soclab-run.service"], check=False)
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), "systemd-analyze verify warned"
    result = converged.target.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            "--threshold=30",
            "--no-pager",
            "soclab-run.service",
        ],
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    unit = (root / "etc/systemd/system/soclab-run.service").read_text().splitlines()
    for line in (
        "ExecStart=/opt/soclab/venv/bin/soclab-run --config /etc/soclab/run.toml",
        "User=soclab",
        "Restart=on-failure",
        "RestartSec=1",
        "RuntimeDirectory=soclab",
        "RuntimeDirectoryPreserve=yes",
        "ReadWritePaths=/var/lib/soclab/run",
        "KillSignal=SIGTERM",
    ):
        assert line in unit, line
    publisher = (root / "etc/systemd/system/soclab-publisher@.service").read_text().splitlines()
    assert "RuntimeDirectory=soclab" in publisher
    assert "RestartSec=1" in publisher
    files = f"/etc/soclab/secrets/{RUN.replace('/', '.')}"
    assert tomllib.loads((root / "etc/soclab/run.toml").read_text()) == {
        "log_level": "INFO",
        "source": {"site": SITE, "node": HOST},
        "mqtt": {"host": BROKER, "port": 8883, "username": RUN, "password_file": f"{files}.password",
                 "keepalive_s": 30, "tls_ca": "/etc/soclab/tls/ca.crt", "tls_cert": f"{files}.crt",
                 "tls_key": f"{files}.key"},
        "run": {"socket": "/run/soclab/{device}.sock"},
        "journal": {"path": "/var/lib/soclab/run/journal.sqlite"},
    }  # fmt: skip
    assert Path(f"{root}{files}.password").read_text() == converged.accounts[RUN]["password"] + "\n"
    journal = root / "var/lib/soclab/run"
    assert journal.is_dir()
    assert journal.stat().st_mode & 0o777 == 0o750
    script = (
        "from soclab.edge.runs import config as c\n"
        "cfg = c.load('/etc/soclab/run.toml', env={})\n"
        "print(cfg.topic, cfg.run.socket_path('eload'), cfg.journal.path, cfg.mqtt.password)\n"
    )
    result = converged.target.run(
        ["runuser", "-u", "soclab", "--", "/opt/soclab/venv/bin/python", "-c", script], check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        f"soclab/{SITE}/{HOST}/run/cmd",
        "/run/soclab/eload.sock",
        "/var/lib/soclab/run/journal.sqlite",
        converged.accounts[RUN]["password"],
    ]


def test_service_account_spool_journal_and_clock(converged: Converged) -> None:
    root = converged.target.path
    ids = converged.target.run(["id", "soclab"]).stdout
    assert re.search(r"groups=.*\bdialout\b", ids), ids
    spool = root / "var/lib/soclab/spool"
    assert spool.is_dir()
    assert spool.stat().st_mode & 0o777 == 0o750
    assert converged.target.run(["stat", "-c", "%U", "/var/lib/soclab/spool"]).stdout.strip() == "soclab"
    journald = (root / "etc/systemd/journald.conf.d/50-soclab.conf").read_text()
    assert "Storage=persistent" in journald
    assert "SystemMaxUse=200M" in journald
    assert converged.target.run(["chronyc", "--version"]).returncode == 0
    assert (root / "usr/local/bin/soclab-edge-status").stat().st_mode & 0o111
    wait = (root / "etc/systemd/system/chrony-wait.service.d/soclab.conf").read_text()
    assert "TimeoutStartSec=180" in wait


def test_nothing_was_started_in_the_chroot(converged: Converged) -> None:
    """systemd is not running there: the role must have skipped every start, restart and reload."""
    output = converged.first.output
    started = "Start chrony, the publishers, the run controller and the link watchdog"
    for task in (started, "Read the clock's synchronisation status"):
        block = output.split(f"TASK [soclab_edge : {task}]", 1)[1].split("TASK [", 1)[0]
        assert "skipping:" in block, block
        assert "changed:" not in block, block
        assert "ok:" not in block, block


def test_switching_the_link_watchdog_off_removes_it(converged: Converged) -> None:
    """Last in this module: it changes the converged target."""
    off = converged.project.playbook("edge.yml", "-e", '{"soclab_edge_linkwatch_enabled": false}')
    off.check()
    print(f"\nedge converge, link watchdog off: {off.seconds:.1f} s")
    assert off.recap[HOST]["changed"] > 0
    units = converged.target.path / "etc/systemd/system"
    timer = "soclab-linkwatch.timer"
    for path in ("soclab-linkwatch.service", timer, f"timers.target.wants/{timer}"):
        assert not (units / path).exists(), path
        assert not (units / path).is_symlink(), path
    assert (units / "soclab-publisher@.service").is_file(), "the rest stays"
