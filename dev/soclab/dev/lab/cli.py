"""``make lab``: the whole pipeline on this machine, with a live view; Ctrl-C stops all of it.

By default everything is local and simulated: a Mosquitto and an InfluxDB 1.6.7 (with the v2
write shim in front, see ``soclab.dev.localservices.v2shim``) with their data under
``var/lab/``, the simulated lab (battery + instruments on pseudo-terminals), one publisher per
instrument and the bridge. A settings file (``--config``, see ``lab.example.toml``) points it at
real instruments, a real broker or a real InfluxDB 2 instead.

``--run FILE`` starts a run on the lab (``dev/soclab/dev/lab/two-cycles.toml`` is an example):
the publishers then host their instruments' control, the node's run controller runs, the
simulated lab offers the charger a bench supply (profile ``supply:10``) and leaves the load to
the run, and its battery is small (``[simulation] capacity_ah``, 0.05 Ah) so a cycle takes about
a minute. The run file is checked before anything starts; the live view shows the run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

from soclab.dev.lab.processes import Children
from soclab.dev.lab.view import LabView
from soclab.dev.localservices.influxdb import InfluxDB1
from soclab.dev.localservices.mosquitto import Mosquitto
from soclab.dev.localservices.v2shim import V2WriteShim
from soclab.edge.instruments import KINDS, kinds
from soclab.tools.runs.cli import command_message, issuer, send
from soclab.tools.runs.runfile import RunFileError
from soclab.tools.runs.runfile import load as load_run
from soclab.wire import logs
from soclab.wire.mqtt import MqttSettings

log = logging.getLogger("soclab.dev.lab")

INSTRUMENTS = kinds()  # the registry's (soclab.edge.instruments)
LOCAL_DB = "soclab"
RUN_PROFILE = "supply:10"  # a bench supply behind the charger; the load is the run's
RUN_CAPACITY_AH = 0.05


@dataclass
class LabSettings:
    site: str = "lab1"
    node: str = "pi-01"
    instruments: dict[str, dict[str, Any]] = field(default_factory=lambda: {n: {} for n in INSTRUMENTS})
    mqtt: dict[str, Any] = field(default_factory=dict)  # empty: start a local broker
    edge_mqtt: dict[str, Any] = field(default_factory=dict)  # where publishers connect, if not mqtt
    influxdb: dict[str, Any] = field(default_factory=dict)  # empty: start a local database
    simulation: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every child process

    @classmethod
    def load(cls, path: Path | None) -> LabSettings:
        if path is None:
            return cls()
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
        settings = cls(**raw)
        for name in settings.instruments:
            if name not in INSTRUMENTS:
                raise ValueError(f"{path}: unknown instrument {name!r}; known: {', '.join(INSTRUMENTS)}")
        return settings

    def check_for_runs(self) -> None:
        """A run needs the simulated load left to it: a profile that works its front panel cannot run."""
        profile = str(self.simulation.get("profile", RUN_PROFILE))
        if not (profile.startswith("supply:") or profile == "none"):
            why = "works the load by hand; a run needs supply:<amps> or none"
            raise ValueError(f"[simulation] profile = {profile!r} {why}")

    def simulated(self) -> list[str]:
        """Instruments with neither a real port nor a publisher configuration of their own."""
        return [
            name
            for name, table in self.instruments.items()
            if not table.get("port") and not table.get("config")
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", type=Path, help="settings (see lab.example.toml); default: all simulated")
    parser.add_argument("--var", type=Path, default=Path("var/lab"), help="data, logs and devices go here")
    parser.add_argument("--duration", type=float, help="stop after this many seconds (default: Ctrl-C)")
    parser.add_argument("--fresh", action="store_true", help="delete the previous run's data first")
    parser.add_argument(
        "--run", type=Path, help="start this run file on the lab (e.g. dev/soclab/dev/lab/two-cycles.toml)"
    )
    args = parser.parse_args(argv)
    logs.configure("INFO", "text")
    try:
        settings = LabSettings.load(args.config)
        run = load_run(args.run) if args.run else None
        if run is not None:
            settings.check_for_runs()
    except RunFileError as exc:
        print(f"make lab: the run file cannot be run (nothing was started): {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError, tomllib.TOMLDecodeError) as exc:
        print(f"make lab: bad settings: {exc}", file=sys.stderr)
        return 2
    if args.fresh and args.var.exists():
        shutil.rmtree(args.var)
    stop_requested = False

    def request_stop(*_: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    var = args.var.resolve()
    with run_lab(settings, var, runs=run is not None) as (view, children):
        if run is not None and not start_run(settings, view.settings, run):
            return 1
        deadline = time.monotonic() + args.duration if args.duration else None
        next_query = 0.0
        while not stop_requested and (deadline is None or time.monotonic() < deadline):
            if time.monotonic() >= next_query:
                view.refresh_stored()
                next_query = time.monotonic() + 3.0
            failed = children.failed()
            view.problems = [
                f"{name} exited with code {code}: see {var / 'logs' / name}.log" for name, code in failed
            ]
            view.show()
            time.sleep(1.0)
    print("lab stopped; nothing left running. Data and logs are in", args.var)
    return 0


@contextlib.contextmanager
def run_lab(settings: LabSettings, var: Path, *, runs: bool = False) -> Iterator[tuple[LabView, Children]]:
    """Start everything in order; stop it all in reverse order, whatever happens. ``runs``: the
    publishers host their instruments' control and the run controller runs."""
    children = Children(var / "logs")
    with contextlib.ExitStack() as stack:
        broker_host, broker_port = _broker(settings, var, stack)
        influx_env, stored_counts = _database(settings, var, stack)
        # Children stop in reverse order of start, before the servers: publishers flush to the
        # broker, then the simulated lab goes, then the bridge writes what is left.
        stack.callback(children.stop_all)
        children.start(
            "bridge",
            ["-m", "soclab.cloud.bridge"],
            env={
                "SOCLAB_BRIDGE_MQTT_HOST": broker_host,
                "SOCLAB_BRIDGE_MQTT_PORT": str(broker_port),
                "SOCLAB_BRIDGE_ID": "lab",
                "SOCLAB_BRIDGE_SITE": settings.site,
                **influx_env,
                **settings.env,
            },
        )
        edge = settings.edge_mqtt
        env = _publisher_env(settings, var, edge.get("host", broker_host), int(edge.get("port", broker_port)))
        _start_simulated_lab(settings, var, children, env, runs=runs)
        if runs:  # each publisher hosts its instrument's control; the LabJack reads every 0.1 s
            env = {**env, "SOCLAB_CONTROL_SOCKET": str(var / "control" / "{device}.sock")}
        for name, table in settings.instruments.items():
            _start_publisher(name, table, var, children, env, runs=runs)
        if runs:
            _start_run_controller(var, children, env)
        view = LabView(_view_mqtt(settings, broker_host, broker_port), stored_counts)
        view.start()
        stack.callback(view.stop)
        yield view, children


def _broker(settings: LabSettings, var: Path, stack: contextlib.ExitStack) -> tuple[str, int]:
    if settings.mqtt:
        return settings.mqtt["host"], int(settings.mqtt.get("port", 1883))
    broker = stack.enter_context(Mosquitto(var / "mosquitto"))
    return broker.host, broker.port


def _view_mqtt(settings: LabSettings, host: str, port: int) -> MqttSettings:
    """How the live view reaches the broker: ``[mqtt]``'s other keys (a monitor account's user
    name, ``password_file``, TLS files) on a real broker; nothing more on the local one."""
    table = {k: v for k, v in settings.mqtt.items() if k not in ("host", "port")}
    return MqttSettings(host=host, port=port, **table).with_password({}, "SOCLAB_MQTT_PASSWORD")


def _database(settings: LabSettings, var: Path, stack: contextlib.ExitStack) -> tuple[dict[str, str], Any]:
    if settings.influxdb:
        i = settings.influxdb
        env = {
            "SOCLAB_BRIDGE_INFLUX_URL": i["url"],
            "SOCLAB_BRIDGE_INFLUX_ORG": i["org"],
            "SOCLAB_BRIDGE_INFLUX_BUCKET": i["bucket"],
        }
        return env, None  # a remote InfluxDB 2: the view shows the bridge's own counts
    db = stack.enter_context(InfluxDB1(var / "influxdb"))
    db.create_database(LOCAL_DB)
    shim = stack.enter_context(V2WriteShim(db.url))

    def stored_counts() -> dict[str, int]:
        counts = {}
        for series in db.query(f"SELECT count(seq) FROM {', '.join(INSTRUMENTS)}", db=LOCAL_DB):
            counts[series["name"]] = int(series["values"][0][1])
        return counts

    env = {
        "SOCLAB_BRIDGE_INFLUX_URL": shim.url,
        "SOCLAB_BRIDGE_INFLUX_ORG": "-",
        "SOCLAB_BRIDGE_INFLUX_BUCKET": f"{LOCAL_DB}/autogen",
        "SOCLAB_BRIDGE_INFLUX_TOKEN": os.environ.get("SOCLAB_BRIDGE_INFLUX_TOKEN", "local:unused"),
    }
    return env, stored_counts


def _publisher_env(settings: LabSettings, var: Path, host: str, port: int) -> dict[str, str]:
    env = {
        "SOCLAB_SOURCE_SITE": settings.site,
        "SOCLAB_SOURCE_NODE": settings.node,
        "SOCLAB_MQTT_HOST": host,
        "SOCLAB_MQTT_PORT": str(port),
        "SOCLAB_SPOOL_PATH": str(var / "spool" / "{device}.sqlite"),
        **settings.env,
    }
    return env


def _start_simulated_lab(
    settings: LabSettings, var: Path, children: Children, env: dict[str, str], *, runs: bool
) -> None:
    wire = [n for n in settings.simulated() if KINDS[n].simulator]
    sim = settings.simulation
    profile = sim.get("profile", RUN_PROFILE if runs else "lab-evening")
    capacity = sim.get("capacity_ah", RUN_CAPACITY_AH if runs else 9.0)
    args = [
        "-m",
        "soclab.dev.sim",
        "--dev-dir",
        str(var / "dev"),
        "--instruments",
        ",".join(wire),
        "--state-file",
        str(var / "battery.state"),
        "--profile",
        str(profile),
        "--capacity-ah",
        str(capacity),
        "--speed",
        str(sim.get("speed", 1.0)),
        "--mppt-dialect",
        str(sim.get("mppt_dialect", "v21")),
        "--mppt-period",
        str(sim.get("mppt_period_s", 1.0)),
    ]
    proc = children.start("simulator", args, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode().strip()
        if line == "ready":
            return
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"the simulated lab did not start; see {var / 'logs' / 'simulator.log'}")


def _start_publisher(
    name: str,
    table: dict[str, Any],
    var: Path,
    children: Children,
    env: dict[str, str],
    *,
    runs: bool = False,
) -> None:
    config = table.get("config") or files("soclab.dev.lab") / "publishers" / f"{name}.toml"
    extra = dict(env)
    if table.get("config"):
        pass  # the lab engineer's own publisher configuration, as it is (site, node, broker aside)
    elif KINDS[name].transport == "serial":  # a real port, or the simulator's pty
        extra["SOCLAB_INSTRUMENT_PORT"] = table.get("port") or str(var / "dev" / name)
    elif KINDS[name].transport == "ljm":  # the LJM stand-in, fed by the simulated lab's battery
        extra["SOCLAB_INSTRUMENT_STANDIN__BATTERY_FILE"] = str(var / "battery.state")
        if runs:  # the reference judges the run's limits: a reading every 0.1 s, not 0.5 s
            extra["SOCLAB_INSTRUMENT_SCANS_PER_READ"] = "10"
    extra.update(table.get("env", {}))  # this publisher's own (e.g. its account on a real broker)
    children.start(name, ["-m", "soclab.edge.publisher", "--config", str(config)], env=extra)


def _start_run_controller(var: Path, children: Children, env: dict[str, str]) -> None:
    """The node's run controller (``run.toml`` beside this module), its journal under ``var``."""
    run_env = {key: value for key, value in env.items() if key.startswith(("SOCLAB_SOURCE_", "SOCLAB_MQTT_"))}
    run_env["SOCLAB_RUN_SOCKET"] = str(var / "control" / "{device}.sock")
    run_env["SOCLAB_JOURNAL_PATH"] = str(var / "run" / "journal.sqlite")
    config = files("soclab.dev.lab") / "run.toml"
    children.start("run", ["-m", "soclab.edge.runs", "--config", str(config)], env=run_env)


def start_run(settings: LabSettings, mqtt_settings: MqttSettings, document: dict[str, Any]) -> bool:
    """Send the run to the lab's run controller as an operator would; say what it answered."""
    target = (settings.site, settings.node, "run")
    deadline = time.monotonic() + 30  # the publishers open their instruments, the controller connects
    while True:
        message = command_message(
            target, "start", {"run": document}, issuer=issuer(mqtt_settings), expires_s=30
        )
        result = send(mqtt_settings, message, wait_s=10)
        if result is not None and result["outcome"] == "done":
            follow = f"soclab run status --node {settings.site}/{settings.node} --follow"
            print(
                f"run {document['id']} started ({document['name']}): follow it below, or `{follow}`",
                flush=True,
            )
            return True
        if time.monotonic() >= deadline:
            why = "no answer" if result is None else f"{result['outcome']}: {result['reason']}"
            print(f"make lab: the run did not start ({why})", file=sys.stderr)
            return False
        time.sleep(1.0)  # e.g. refused: an instrument's control is not up yet


if __name__ == "__main__":
    sys.exit(main())
