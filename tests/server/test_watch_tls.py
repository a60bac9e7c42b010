"""``soclab watch`` as a person uses it: in a real terminal (tmux), against the server's TLS broker
with a monitor account, while the simulated lab runs through it (every publisher with its own
device account, the bridge with its own); and the README's "Watching a lab" commands, parsed from
the README and run as written (``mosquitto_sub`` gets only ``-C``/``-W`` so that it ends), so the
README cannot drift.

The screen is read with ``tmux capture-pane``. It must show every device with its values and
state and the bridge; a device whose publisher is killed -9 must turn silent within the monitor's
threshold; hostile messages published while it runs (not JSON, nested too deep, an integer of
5000 digits, a wrong source, on data and status topics) must be counted and shown while the
monitor goes on, and the bridge's dead letter must appear with its reason.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from serverkit import BRIDGE, DEVICES, LABJACK, MONITORS, REPO, Account, TlsClient, broker_with_monitor

from soclab.dev.lab.cli import LabSettings, run_lab
from soclab.dev.lab.processes import Children
from soclab.dev.lab.view import LabView
from soclab.dev.localservices import InfluxDB1, Mosquitto, V2WriteShim

pytestmark = pytest.mark.slow

MPPT, ELOAD = DEVICES
# A monitor account per connection open at the same time (the broker may allow one each): soclab
# watch in tmux, make lab's own view, the README's mosquitto_sub recipes, --status and --json.
WATCH, LAB_VIEW, RECIPES, SCRIPTS = MONITORS
README = REPO / "README.md"
SILENT_S = 4.0  # the monitor's threshold in these tests ([watch] silent_s)
WAIT_S = 60.0  # bound of every wait for the screen
BIN = Path(sys.executable).parent  # soclab, as `make setup` installs it


# --- the README ----------------------------------------------------------------------------------


def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def code_blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def commands(section: str, program: str) -> list[str]:
    return [
        line.strip()
        for block in code_blocks(section, "sh")
        for line in block.splitlines()
        if line.strip().startswith(program + " ")
    ]


# --- the lab over TLS ----------------------------------------------------------------------------


@dataclass
class TlsLab:
    broker: Mosquitto
    children: Children
    view: LabView  # make lab's own view, watching with the monitor account too
    accounts: dict[str, Account]
    watch_config: Path  # the README's soclab file, with this lab's values (WATCH's account)
    script_config: Path  # the same with SCRIPTS' account
    home: Path  # XDG_CONFIG_HOME holding the README's mosquitto_sub file

    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "XDG_CONFIG_HOME": str(self.home)}


def _password_file(folder: Path, account: Account) -> Path:
    path = folder / (account.user.replace("/", ".") + ".password")
    path.write_text(account.password, encoding="utf-8")
    path.chmod(0o600)
    return path


def _watch_config(folder: Path, broker: Mosquitto, monitor: Account, secret: Path, name: str) -> Path:
    """The README's soclab settings file with this lab's broker and monitor account."""
    (block,) = [b for b in code_blocks(readme_section("Watching a lab"), "toml") if "[mqtt]" in b]
    table = tomllib.loads(block)
    assert table["mqtt"]["username"].startswith("monitor/")
    table["mqtt"].update(
        host="localhost",
        port=broker.port,
        username=monitor.user,
        password_file=str(secret),
        tls_ca=str(monitor.certs / "ca.crt"),
        tls_cert=str(monitor.certs / "client.crt"),
        tls_key=str(monitor.certs / "client.key"),
    )
    table["watch"]["silent_s"] = SILENT_S
    lines = []
    for name, values in table.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {value!r}".replace("'", '"') for key, value in values.items())
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _mosquitto_sub_config(home: Path, broker: Mosquitto, monitor: Account) -> None:
    """The README's ~/.config/mosquitto_sub with this lab's values, in ``home``."""
    (block,) = [b for b in code_blocks(readme_section("Watching a lab"), "text") if "mosquitto_sub" in b]
    values = {
        "-h": "localhost",
        "-p": str(broker.port),
        "--cafile": str(monitor.certs / "ca.crt"),
        "--cert": str(monitor.certs / "client.crt"),
        "--key": str(monitor.certs / "client.key"),
        "-u": monitor.user,
        "-P": monitor.password,
    }
    lines = []
    for line in block.splitlines():
        option = line.split(maxsplit=1)[0] if line.strip() else ""
        if option.startswith("#") or not option:
            lines.append(line)
        else:
            lines.append(f"{option} {values.pop(option)}")
    assert not values, f"the README's mosquitto_sub file lacks {sorted(values)}"
    (home / "mosquitto_sub").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (home / "mosquitto_sub").chmod(0o600)


@pytest.fixture(scope="module")
def tls_lab(
    tmp_path_factory: pytest.TempPathFactory,
    pki: Path,
    passwd_dir: Path,
    accounts: dict[str, Account],
    _influx_server: tuple[InfluxDB1, V2WriteShim],
) -> Iterator[TlsLab]:
    folder = tmp_path_factory.mktemp("tls-lab")
    secrets = folder / "secrets"
    secrets.mkdir(mode=0o700)
    server, shim = _influx_server
    server.create_database("watchtls")
    monitor = accounts[LAB_VIEW]
    bridge = accounts[BRIDGE]
    ca = str(monitor.certs / "ca.crt")

    def device_env(user: str) -> dict[str, str]:
        account = accounts[user]
        return {
            "SOCLAB_MQTT_USERNAME": user,
            "SOCLAB_MQTT_PASSWORD_FILE": str(_password_file(secrets, account)),
            "SOCLAB_MQTT_TLS_CERT": str(account.certs / "client.crt"),
            "SOCLAB_MQTT_TLS_KEY": str(account.certs / "client.key"),
        }

    with broker_with_monitor(folder / "broker", pki, passwd_dir) as broker:
        settings = LabSettings(
            site="lab1",
            node="pi-01",
            instruments={
                "mppt": {"env": device_env(MPPT)},
                "eload": {"env": device_env(ELOAD)},
                "labjack": {"env": device_env(LABJACK)},
            },
            mqtt={  # the lab's own view watches with the monitor account too
                "host": "localhost",
                "port": broker.port,
                "username": monitor.user,
                "password_file": str(_password_file(secrets, monitor)),
                "tls_ca": ca,
                "tls_cert": str(monitor.certs / "client.crt"),
                "tls_key": str(monitor.certs / "client.key"),
            },
            influxdb={"url": shim.url, "org": "-", "bucket": "watchtls"},
            env={
                "SOCLAB_MQTT_TLS_CA": ca,
                "SOCLAB_STATUS_INTERVAL_S": "1",
                "SOCLAB_BRIDGE_MQTT_USERNAME": bridge.user,
                "SOCLAB_BRIDGE_MQTT_PASSWORD": bridge.password,
                "SOCLAB_BRIDGE_MQTT_TLS_CA": ca,
                "SOCLAB_BRIDGE_MQTT_TLS_CERT": str(bridge.certs / "client.crt"),
                "SOCLAB_BRIDGE_MQTT_TLS_KEY": str(bridge.certs / "client.key"),
                "SOCLAB_BRIDGE_STATUS_INTERVAL_S": "1",
                "SOCLAB_BRIDGE_INFLUX_TOKEN": "watch:unused",
            },
        )
        home = folder / "config"
        home.mkdir()
        _mosquitto_sub_config(home, broker, accounts[RECIPES])
        watching, scripts = accounts[WATCH], accounts[SCRIPTS]
        config = _watch_config(folder, broker, watching, _password_file(secrets, watching), "lab1.toml")
        script_config = _watch_config(
            folder, broker, scripts, _password_file(secrets, scripts), "scripts.toml"
        )
        try:
            with run_lab(settings, folder / "var") as (view, children):
                yield TlsLab(broker, children, view, accounts, config, script_config, home)
        finally:
            server.drop_database("watchtls")


# --- tmux ----------------------------------------------------------------------------------------


class Terminal:
    """A tmux server of the test's own (its own socket) running one command in a fixed-size window."""

    def __init__(self, socket: str, env: dict[str, str]) -> None:
        self.base = ["tmux", "-L", socket]
        self.env = env

    def run(self, command: str, width: int = 200, height: int = 60) -> None:
        shell = f"{command}; echo EXIT=$?; sleep 600"
        args = ["new-session", "-d", "-s", "watch", "-x", str(width), "-y", str(height), shell]
        subprocess.run([*self.base, *args], env=self.env, check=True, timeout=10)

    def screen(self) -> str:
        done = subprocess.run(
            [*self.base, "capture-pane", "-p", "-t", "watch"], capture_output=True, text=True
        )
        return done.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "watch", *keys], check=True, timeout=10)

    def wait_for(self, what: str, ok: object, timeout: float = WAIT_S) -> str:
        """The screen once ``ok(screen)`` is true; fail with the last screen otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if ok(screen):  # type: ignore[operator]
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not on the screen after {timeout:.0f} s:\n{screen}")
            time.sleep(0.25)

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def terminal(tls_lab: TlsLab, request: pytest.FixtureRequest) -> Iterator[Terminal]:
    term = Terminal(f"soclab-watch-test-{os.getpid()}", tls_lab.env())
    yield term
    term.close()


def row(screen: str, device: str) -> str:
    lines = [line for line in screen.splitlines() if line.startswith(f"lab1/pi-01/{device} ")]
    return lines[0] if lines else ""


def shows_running(screen: str, device: str) -> bool:
    """The device's row: online, a rate, bat_v and bat_a with units and plausible values."""
    line = row(screen, device)
    volts = re.search(r"bat_v\s(-?[\d.]+)\sV", line)
    amps = re.search(r"bat_a\s(-?[\d.]+)\sA", line)
    return bool(
        re.search(rf"^lab1/pi-01/{device}\s+{device}\s+online\s", line)
        and volts
        and 9.0 < float(volts[1]) < 16.0
        and amps
    )


# --- the tests -----------------------------------------------------------------------------------


def test_the_readmes_mosquitto_sub_recipes_answer_against_the_tls_broker(tls_lab: TlsLab) -> None:
    recipes = commands(readme_section("Watching a lab"), "mosquitto_sub")
    assert len(recipes) == 4, recipes

    def run(command: str, count: int) -> subprocess.Popen[str]:
        bounded = command.replace("mosquitto_sub ", f"mosquitto_sub -C {count} -W 30 ", 1)
        return subprocess.Popen(bounded, shell=True, env=tls_lab.env(), stdout=subprocess.PIPE, text=True)

    data, statuses, dead, bridges = recipes
    out, _ = run(data, 3).communicate(timeout=60)
    samples = [line for line in out.splitlines() if line.strip()]
    assert len(samples) >= 3, out
    assert all('"seq":' in s and '"bat_v":' in s for s in samples), out
    out, _ = run(statuses, 50).communicate(timeout=60)
    assert sorted(out.split()[0::2][:3]) == ["eload", "labjack", "mppt"], out
    assert all(line.split()[1] == "online" for line in out.splitlines()), out
    out, _ = run(bridges, 1).communicate(timeout=60)
    assert '"bridge":"lab","state":"online"' in out, out
    listener = run(dead, 1)
    time.sleep(1.0)  # subscribed
    device = TlsClient(tls_lab.broker, tls_lab.accounts[MPPT])
    try:
        assert not device.connect().is_failure
        device.publish(f"soclab/{MPPT}/data", b"this is not JSON")
    finally:
        device.close()
    out, _ = listener.communicate(timeout=60)
    assert out.startswith(f"soclab/{MPPT}/data: not JSON"), out


def test_soclab_watch_in_a_terminal_shows_the_lab_alerts_and_survives_bad_messages(
    tls_lab: TlsLab, terminal: Terminal
) -> None:
    watch = commands(readme_section("Watching a lab"), "soclab watch")
    assert len(watch) == 4, watch
    live = watch[0].replace("~/.config/soclab/lab1.toml", str(tls_lab.watch_config))
    # while it runs, the scripts (--json, --status) connect with an account of their own
    as_json, status = (c.replace("~/.config/soclab/lab1.toml", str(tls_lab.script_config)) for c in watch[2:])

    terminal.run(live)
    screen = terminal.wait_for(
        "every device online with its values, and the bridge with its lag",
        lambda s: (
            all(shows_running(s, d) for d in ("mppt", "eload", "labjack"))
            and re.search(r"^lab\s+online\s.*\d+\.\d+ / \d+\.\d+ s", s, flags=re.M)
        ),
    )
    assert "alerts: none" in screen, screen
    assert re.search(r"soc_pct\s\d+\s%", row(screen, "mppt")), screen
    print("\n--- soclab watch, the lab running ---\n" + screen)

    # --status and --json as the README writes them, while all is well
    status_alone = status.split(" || ")[0]
    done = subprocess.run(
        status_alone, shell=True, env=tls_lab.env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all devices online and fresh" in done.stdout
    lines = subprocess.run(
        as_json + " | head -n 3", shell=True, env=tls_lab.env(), capture_output=True, text=True, timeout=60
    ).stdout.splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith("{") and '"bat_v":' in line for line in lines), lines

    # hostile messages from a device account, on the topics it may publish
    device = TlsClient(tls_lab.broker, tls_lab.accounts[MPPT])
    hostile = [
        b"not JSON {",
        b"[" * 50_000,
        b'{"schema": "soclab.data/1", "seq": ' + b"9" * 5000 + b"}",
        b'{"schema":"soclab.data/1","source":{"site":"lab1","node":"pi-01","device":"eload","kind":"eload"},'
        b'"samples":[{"seq":1,"t_ns":1700000000000000000,"values":{"bat_v":1}}]}',
    ]
    try:
        assert not device.connect().is_failure
        for payload in hostile:
            device.publish(f"soclab/{MPPT}/data", payload)
        device.publish(f"soclab/{MPPT}/status", b"\x00\xff not a status")
    finally:
        device.close()
    screen = terminal.wait_for(
        "the dead letters with their reasons, and the malformed messages counted",
        lambda s: (
            "malformed 5  dead letters 5" in s.splitlines()[0]
            and "! dead letters: 5 in the last" in s
            and "! malformed: 5 in the last" in s
            and re.search(rf"ago\s+soclab/{MPPT}/data\s+not JSON: Expecting value", s)
            and re.search(rf"ago\s+soclab/{MPPT}/data\s+source lab1/pi-01/eload does not match", s)
        ),
    )
    time.sleep(SILENT_S + 1.0)  # had the monitor stopped taking messages, the MPPT would now be silent
    screen = terminal.wait_for(
        "the monitor going on after them", lambda s: shows_running(s, "mppt"), timeout=2
    )
    print("\n--- after hostile messages ---\n" + screen)
    # make lab's view (the same monitor, in this process) took them too, and goes on
    with tls_lab.view.intake.lock:
        lab_model = tls_lab.view.model
        assert lab_model.malformed_total >= 5
        assert lab_model.condition(lab_model.devices[f"{MPPT}"], time.time()) == "online"
    assert tls_lab.view.intake.failure is None

    # a publisher that hangs (SIGSTOP: connected, sending nothing) turns silent at the threshold
    labjack = tls_lab.children.pid("labjack")
    os.kill(labjack, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        screen = terminal.wait_for(
            "the LabJack silent",
            lambda s: (
                re.search(r"^lab1/pi-01/labjack\s+labjack\s+silent", s, flags=re.M)
                and "! lab1/pi-01/labjack: silent for" in s
            ),
            timeout=SILENT_S + 20,
        )
        silent_after_s = time.monotonic() - stopped
    finally:
        os.kill(labjack, signal.SIGCONT)
    print(
        f"\n--- LabJack publisher stopped (SIGSTOP), shown silent after {silent_after_s:.1f} s ---\n" + screen
    )
    assert SILENT_S - 1.0 <= silent_after_s <= SILENT_S + 3.0, (
        f"{silent_after_s:.1f} s, threshold {SILENT_S} s"
    )
    terminal.wait_for("the LabJack back", lambda s: shows_running(s, "labjack"))

    # a publisher killed -9: its last will says offline at once, within the threshold anyway
    tls_lab.children.kill("eload")
    killed = time.monotonic()
    screen = terminal.wait_for(
        "the e-load silent or offline",
        lambda s: (
            re.search(r"^lab1/pi-01/eload\s+eload\s+(silent|offline)", s, flags=re.M)
            and re.search(r"! lab1/pi-01/eload: (silent|offline)", s)
        ),
        timeout=SILENT_S + 20,
    )
    noticed_s = time.monotonic() - killed
    print(f"\n--- e-load publisher killed -9, shown after {noticed_s:.1f} s ---\n" + screen)
    assert noticed_s <= SILENT_S + 3.0, f"shown after {noticed_s:.1f} s, threshold {SILENT_S} s"
    done = subprocess.run(
        status_alone, shell=True, env=tls_lab.env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stdout
    assert re.search(r"lab1/pi-01/eload: (online, but nothing heard for|offline)", done.stdout), done.stdout
    as_written = subprocess.run(
        status, shell=True, env=tls_lab.env(), capture_output=True, text=True, timeout=60
    )
    assert "the lab needs attention" in as_written.stdout, as_written.stdout

    terminal.keys("C-c")
    screen = terminal.wait_for("the monitor ending on Ctrl-C", lambda s: "EXIT=" in s, timeout=15)
    assert "EXIT=0" in screen, screen
