"""The simulated lab with its edge processes, for the tests of runs through the real pipeline.

In this process: the simulated battery and the wire-level simulators of the e-load and the MPPT
on pseudo-terminals (so a test can unplug them and read what flows), the battery's shared file
for the LabJack stand-in, the bridge (``soclab.cloud.bridge``) into a database of its own.
As processes, started, killed (-9) and restarted by name as systemd would: one publisher per
instrument (the lab's own files, ``dev/soclab/dev/lab/publishers``, with ``[control]``) and the
node's run controller (``dev/soclab/dev/lab/run.toml``). A broker of the rig's own, so a test
can stop it.

``Watch`` samples, every few milliseconds, what flows into the battery from the load and from
the charger: the safe state is both at zero, and its time is measured from what a test did.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from soclab.cloud.bridge import Bridge, BridgeConfig, InfluxConfig, MqttConfig
from soclab.dev.lab.processes import Children
from soclab.dev.localservices import InfluxDB1, Mosquitto
from soclab.dev.sim.battery import Battery, BatteryParams
from soclab.dev.sim.instruments.ea_el3000 import EaLoadSimulator
from soclab.dev.sim.instruments.libresolar_mppt import CHARGER, MpptSimulator
from soclab.dev.sim.lab import SimulatedLab
from soclab.dev.sim.profiles import SupplyProfile
from soclab.tools.runs.cli import command_message, send
from soclab.wire.mqtt import MqttSettings

LAB = Path(__file__).parents[2] / "dev" / "soclab" / "dev" / "lab"
DEVICES = ("eload", "mppt", "labjack")
WAIT_S = 20.0
_names = itertools.count()


@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic()
    voltage_v: float
    load_a: float  # what the e-load draws (>= 0)
    charger_a: float  # what the MPPT charges with (>= 0)

    @property
    def safe(self) -> bool:
        return self.load_a == 0.0 and self.charger_a == 0.0


class Watch:
    """What flows into the battery, sampled every ``period_s`` (a few thousand samples kept)."""

    def __init__(self, battery: Battery, period_s: float = 0.005) -> None:
        self.battery = battery
        self.period_s = period_s
        self.samples: collections.deque[Sample] = collections.deque(maxlen=20_000)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            b = self.battery
            sample = Sample(
                time.monotonic(), b.state().voltage_v, -b.current_of("eload"), b.current_of(CHARGER)
            )
            with self._lock:
                self.samples.append(sample)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def now(self) -> Sample:
        b = self.battery
        return Sample(time.monotonic(), b.state().voltage_v, -b.current_of("eload"), b.current_of(CHARGER))

    def wait(self, what: Callable[[Sample], bool], since: float, timeout: float = WAIT_S) -> Sample:
        """The first sample at or after ``since`` for which ``what`` holds (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = next((s for s in self.samples if s.t >= since and what(s)), None)
            if found is not None:
                return found
            assert time.monotonic() < deadline, f"not reached within {timeout} s; now: {self.now()}"
            time.sleep(0.01)

    def time_to_safe(self, since: float, timeout: float = WAIT_S) -> float:
        """Seconds from ``since`` to the first sample with nothing flowing."""
        return self.wait(lambda s: s.safe, since, timeout).t - since


class Rig:
    """See the module doc. ``start()`` brings everything up; ``close()`` takes it all down."""

    def __init__(self, folder: Path, influx: InfluxDB1, *, capacity_ah: float, soc: float, supply_a: float,
                 confirm_s: float = 0.3) -> None:  # fmt: skip
        self.folder = folder
        self.site, self.node = f"rig{next(_names)}", "pi-01"
        self.battery = Battery(BatteryParams(capacity_ah=capacity_ah), soc=soc)
        self.sims = {
            "eload": EaLoadSimulator(self.battery, folder / "dev" / "eload"),
            "mppt": MpptSimulator(self.battery, folder / "dev" / "mppt", period_s=0.25),
        }
        self.state_file = folder / "battery.state"
        self.lab = SimulatedLab(
            self.battery, SupplyProfile(supply_a), dict(self.sims), state_file=self.state_file
        )
        self.broker = Mosquitto(folder / "mosquitto")
        self.influx = influx
        self.db = f"runs{next(_names)}"
        self.children = Children(folder / "logs")
        self.confirm_s = confirm_s
        self.bridge: Bridge | None = None
        self.watch: Watch | None = None
        self.results: list[str] = []

    # --- life -----------------------------------------------------------------------------------
    def start(self) -> Rig:
        self.broker.start()
        self.influx.create_database(self.db)
        self.lab.start()
        self.watch = Watch(self.battery)
        self.start_bridge()
        for device in DEVICES:
            self.start_publisher(device)
        self.start_controller()
        for device in DEVICES:
            self.wait_for(lambda d=device: self.socket(d).exists(), f"{device}'s control socket")
        for device in (*DEVICES, "run"):
            self.wait_online(device)
        return self

    def wait_online(self, device: str, timeout: float = WAIT_S) -> None:
        """Until ``device``'s retained status says it is up. Each process subscribes to its
        commands before it first publishes its status, and the broker handles one connection's
        packets in order: a command sent after this reaches it. (One sent before is lost, as for
        any subscriber that is not there yet: ``soclab run start`` then waited 15 s in vain.)"""
        seen: queue.Queue[dict[str, Any]] = queue.Queue()
        client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        client.on_message = lambda _c, _u, message: seen.put(json.loads(message.payload))
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        try:
            client.subscribe(f"soclab/{self.site}/{self.node}/{device}/status", qos=1)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                assert left > 0, f"{device}: no status other than offline within {timeout} s"
                try:
                    if seen.get(timeout=left).get("state") != "offline":
                        return
                except queue.Empty:
                    pass
        finally:
            client.disconnect()
            client.loop_stop()

    def close(self) -> None:
        self.children.stop_all()
        if self.bridge is not None:
            self.bridge.stop()
        if self.watch is not None:
            self.watch.stop()
        self.lab.stop()
        self.broker.stop()

    def start_bridge(self) -> None:
        mqtt_config = MqttConfig(
            host=self.broker.host, port=self.broker.port, reconnect_min_s=0.5, reconnect_max_s=1
        )
        influx = InfluxConfig(url=self.shim_url, org="soclab", bucket=self.db, token="soclab:unused")
        config = BridgeConfig(mqtt=mqtt_config, influx=influx, id=self.site, site=self.site,
                              status_interval_s=1.0, shutdown_timeout_s=5.0)  # fmt: skip
        self.bridge = Bridge(config).start()
        self.bridge.wait_subscribed(WAIT_S)

    shim_url = ""  # the v2 write shim in front of ``influx``, set by the fixture

    # --- processes ------------------------------------------------------------------------------
    def socket(self, device: str) -> Path:
        return self.folder / "control" / f"{device}.sock"

    def common_env(self) -> dict[str, str]:
        return {
            "SOCLAB_SOURCE_SITE": self.site,
            "SOCLAB_SOURCE_NODE": self.node,
            "SOCLAB_MQTT_HOST": self.broker.host,
            "SOCLAB_MQTT_PORT": str(self.broker.port),
            "SOCLAB_MQTT_RECONNECT_MIN_S": "0.5",
            "SOCLAB_MQTT_RECONNECT_MAX_S": "1",
        }

    def start_publisher(self, device: str) -> None:
        env = {
            **self.common_env(),
            "SOCLAB_SPOOL_PATH": str(self.folder / "spool" / "{device}.sqlite"),
            "SOCLAB_STATUS_INTERVAL_S": "1",
            "SOCLAB_CONTROL_SOCKET": str(self.folder / "control" / "{device}.sock"),
        }
        if device == "labjack":
            env["SOCLAB_INSTRUMENT_STANDIN__BATTERY_FILE"] = str(self.state_file)
            env["SOCLAB_INSTRUMENT_SCANS_PER_READ"] = "10"  # a reading every 0.1 s for the run
        else:
            env["SOCLAB_INSTRUMENT_PORT"] = str(self.folder / "dev" / device)
        config = LAB / "publishers" / f"{device}.toml"
        args = ["-m", "soclab.edge.publisher", "--config", str(config), "--log-format", "text"]
        self.children.start(device, args, env=env)

    def start_controller(self) -> None:
        env = {
            **self.common_env(),
            "SOCLAB_RUN_SOCKET": str(self.folder / "control" / "{device}.sock"),
            "SOCLAB_RUN_CONFIRM_S": str(self.confirm_s),
            "SOCLAB_RUN_STATUS_INTERVAL_S": "1",
            "SOCLAB_JOURNAL_PATH": str(self.folder / "run" / "journal.sqlite"),
            "SOCLAB_JOURNAL_RESEND_S": "3",
        }
        args = ["-m", "soclab.edge.runs", "--config", str(LAB / "run.toml"), "--log-format", "text"]
        self.children.start("run", args, env=env)

    def kill(self, name: str) -> float:
        """kill -9 the process ``name``; the moment it was sent (monotonic)."""
        at = time.monotonic()
        self.children.kill(name)
        return at

    def kill_all(self, names: tuple[str, ...]) -> float:
        """kill -9 these processes at the same moment (the power goes); when (monotonic)."""
        at = time.monotonic()
        for name in names:
            os.kill(self.children.pid(name), signal.SIGKILL)
        for name in names:
            self.children.kill(name)  # reaps it
        return at

    def restart(self, name: str) -> float:
        at = time.monotonic()
        self.children.restart(name)
        return at

    def log(self, name: str) -> str:
        return (self.folder / "logs" / f"{name}.log").read_text(errors="replace")

    # --- commands as an operator sends them ---------------------------------------------------------
    @property
    def mqtt(self) -> MqttSettings:
        return MqttSettings(host=self.broker.host, port=self.broker.port)

    def command(self, device: str, name: str, args: dict[str, Any] | None = None, *,
                expires_s: float = 30.0) -> dict[str, Any]:  # fmt: skip
        message = command_message((self.site, self.node, device), name, args or {}, issuer="operator/test",
                                  expires_s=expires_s)  # fmt: skip
        result = send(self.mqtt, message, wait_s=WAIT_S)
        assert result is not None, f"no result for {name} on {device}"
        return result

    def start_run(self, document: dict[str, Any]) -> dict[str, Any]:
        result = self.command("run", "start", {"run": document})
        assert result["outcome"] == "done", result
        return result

    # --- waiting and reading ----------------------------------------------------------------------
    def wait_for(self, condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        while not (found := condition()):
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
            time.sleep(0.02)
        return found

    def rows(self, query: str) -> list[dict[str, Any]]:
        rows = []
        for series in self.influx.query(query, db=self.db, epoch="ns"):
            for values in series["values"]:
                rows.append({**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))})
        return rows

    def run_events(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows(f"SELECT * FROM run_events WHERE site = '{self.site}' AND run = '{run_id}'")

    def wait_for_event(self, run_id: str, event: str, timeout: float = WAIT_S) -> list[dict[str, Any]]:
        """The run's stored events once one of them is ``event``."""
        return self.wait_for(
            lambda: (rows := self.run_events(run_id)) and any(r["event"] == event for r in rows) and rows,
            f"run {run_id}: a stored {event!r} event",
            timeout,
        )

    def holes(self, device: str) -> tuple[int, int]:
        """(samples stored, samples missing) of a device: its sequence numbers in the database
        from 0 to the highest stored, and those of them neither stored nor still in its spool."""
        found = self.rows(
            f"SELECT count(seq), max(seq) FROM {device} WHERE site = '{self.site}' AND device = '{device}'"
        )
        if not found or found[0]["max"] is None:
            return 0, 0
        count, highest = int(found[0]["count"]), int(found[0]["max"])
        waiting = spool_seqs(self.folder / "spool" / f"{device}.sqlite", below=highest)
        return count, highest + 1 - count - waiting

    def wait_nothing_lost(self, timeout: float = 30.0) -> dict[str, int]:
        """Every device's samples up to its highest stored one are in the database: stored counts."""
        deadline = time.monotonic() + timeout
        while True:
            counts = {device: self.holes(device) for device in DEVICES}
            if all(count > 0 and missing == 0 for count, missing in counts.values()):
                return {device: count for device, (count, _) in counts.items()}
            assert time.monotonic() < deadline, f"samples missing after {timeout} s: {counts}"
            time.sleep(0.2)


def journal_depth(path: Path) -> int:
    """How many records the run controller's journal still holds (not confirmed by the bridge)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])
    finally:
        db.close()


def spool_seqs(path: Path, *, below: int) -> int:
    """How many samples with seq <= ``below`` a publisher's spool still holds (read-only)."""
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(db.execute("SELECT COUNT(*) FROM samples WHERE seq <= ?", (below,)).fetchone()[0])
    finally:
        db.close()
