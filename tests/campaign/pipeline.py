"""The bad-input campaign's pipeline: the lab as it runs, its processes, and every good sample counted.

``Pipeline`` runs, on this machine:

- a broker: the production configuration (``ProductionBroker``: TLS, passwords, the per-device ACL,
  compose's limits; an account for the bridge, each good device and each attacker) or, for the
  findings made on the lab pipeline, the development Mosquitto that ``make lab`` runs (anonymous);
- the bridge as its own process (``python -m soclab.cloud.bridge``): a crash is an exit;
- the simulated lab in this process (one battery; the MPPT and the electronic load on
  pseudo-terminals, so that an attack can inject bytes on the MPPT's serial line), and one real
  publisher process per instrument with the lab's configuration, each with its own account;
- a database of its own on the session's InfluxDB 1.6.7, written through the v2 shim.

Good samples are the publishers' own: each assigns consecutive sequence numbers and keeps a
sample in its spool until the bridge confirms it. ``account()`` says, for a range of sequence
numbers, how many are stored, lost (neither stored nor still in the spool) and doubled (stored at
more than one time); ``settle()`` waits until everything assigned so far is stored.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from soclab.dev.lab.processes import Children
from soclab.dev.localservices import InfluxDB1, Mosquitto
from soclab.dev.localservices.production import ProductionBroker
from soclab.dev.sim.battery import Battery
from soclab.dev.sim.instruments.ea_el3000 import EaLoadSimulator
from soclab.dev.sim.instruments.libresolar_mppt import MpptSimulator
from soclab.dev.sim.lab import SimulatedLab
from soclab.wire.mqtt import MqttSettings, make_client

NODE = "pi-01"
DEVICES = ("mppt", "eload")  # the good devices; device name = kind, as in the lab
ATTACKERS = ("evil", "flood", "liar")  # device accounts on node pi-66 that misbehave
ATTACK_NODE = "pi-66"
SETTLE_S = 30.0  # a healthy pipeline settles in seconds (publishers resend after 3 s)
WAIT_S = 10.0


@dataclass
class Count:
    """Good samples of one device in a range of sequence numbers."""

    assigned: int = 0
    stored: int = 0
    lost: list[int] = field(default_factory=list)
    doubled: int = 0
    waiting: int = 0  # still in the spool, not yet confirmed


class Pipeline:
    def __init__(
        self,
        folder: Path,
        influx: InfluxDB1,
        shim_url: str,
        *,
        site: str,
        production: bool,
        device_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """``device_env``: extra settings of a good device's publisher (SOCLAB_* variables)."""
        self.folder = folder
        self.device_env = device_env or {}
        self.influx = influx
        self.site = site
        self.production = production
        self.db = f"campaign_{site.replace('-', '_')}"
        self.shim_url = shim_url
        self.children = Children(folder / "logs")
        self.production_broker: ProductionBroker | None = None
        self.broker: Mosquitto
        self.restarts: dict[str, int] = {}
        self._stack = contextlib.ExitStack()

    # --- life -----------------------------------------------------------------------------------

    def start(self) -> Pipeline:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start(self) -> None:
        stack = self._stack
        self.influx.create_database(self.db)
        stack.callback(self.influx.drop_database, self.db)
        users = [
            "soclab-bridge",
            *(self.user(d) for d in DEVICES),
            *(self.user(a, ATTACK_NODE) for a in ATTACKERS),
        ]
        if self.production:
            self.production_broker = stack.enter_context(ProductionBroker(self.folder / "broker", users))
            self.broker = self.production_broker.broker
        else:
            self.broker = stack.enter_context(Mosquitto(self.folder / "broker"))
        stack.callback(self.children.stop_all)
        self.children.start("bridge", ["-m", "soclab.cloud.bridge"], env=self._bridge_env())
        battery = Battery(soc=0.6)
        self.mppt = MpptSimulator(battery, self.folder / "dev" / "mppt", period_s=0.2)
        self.eload = EaLoadSimulator(battery, self.folder / "dev" / "eload")
        lab = SimulatedLab(battery, None, {"mppt": self.mppt, "eload": self.eload})
        lab.start()
        stack.callback(lab.stop)
        for device in DEVICES:
            self.children.start(
                device,
                ["-m", "soclab.edge.publisher", "--config", self._config(device)],
                env=self._publisher_env(device),
            )
        self.wait_flowing()

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- accounts and settings --------------------------------------------------------------------

    def user(self, device: str, node: str = NODE) -> str:
        return f"{self.site}/{node}/{device}"

    def settings(self, device: str, node: str = ATTACK_NODE) -> MqttSettings:
        """How a device's own software would reach the broker (its account on production)."""
        if self.production_broker is not None:
            return self.production_broker.accounts[self.user(device, node)].mqtt(self.broker)
        return MqttSettings(host=self.broker.host, port=self.broker.port)

    def topic(self, device: str, kind: str = "data", node: str = ATTACK_NODE) -> str:
        return f"soclab/{self.site}/{node}/{device}/{kind}"

    def _mqtt_env(self, user: str, prefix: str) -> dict[str, str]:
        if self.production_broker is not None:
            return self.production_broker.accounts[user].env(self.broker, prefix)
        return {f"{prefix}HOST": self.broker.host, f"{prefix}PORT": str(self.broker.port)}

    def _bridge_env(self) -> dict[str, str]:
        return {
            **self._mqtt_env("soclab-bridge", "SOCLAB_BRIDGE_MQTT_"),
            "SOCLAB_BRIDGE_ID": self.site,
            "SOCLAB_BRIDGE_SITE": self.site,
            "SOCLAB_BRIDGE_INFLUX_URL": self.shim_url,
            "SOCLAB_BRIDGE_INFLUX_ORG": "-",
            "SOCLAB_BRIDGE_INFLUX_BUCKET": f"{self.db}/autogen",
            "SOCLAB_BRIDGE_INFLUX_TOKEN": "campaign:unused",
            "SOCLAB_BRIDGE_MQTT_RECONNECT_MAX_S": "2",
            "SOCLAB_BRIDGE_RETRY_MAX_S": "2",
            "SOCLAB_BRIDGE_STATUS_INTERVAL_S": "1",
        }

    def _config(self, device: str) -> str:
        return str(files("soclab.dev.lab") / "publishers" / f"{device}.toml")

    def spool_path(self, device: str) -> Path:
        return self.folder / "spool" / f"{device}.sqlite"

    def _publisher_env(self, device: str) -> dict[str, str]:
        return {
            **self._mqtt_env(self.user(device), "SOCLAB_MQTT_"),
            "SOCLAB_SOURCE_SITE": self.site,
            "SOCLAB_SOURCE_NODE": NODE,
            "SOCLAB_SPOOL_PATH": str(self.spool_path(device)),
            "SOCLAB_INSTRUMENT_PORT": str(self.folder / "dev" / device),
            "SOCLAB_MQTT_KEEPALIVE_S": "5",
            "SOCLAB_MQTT_RECONNECT_MAX_S": "2",
            "SOCLAB_MQTT_RESEND_GRACE_S": "3",
            "SOCLAB_STATUS_INTERVAL_S": "1",
            **self.device_env.get(device, {}),
        }

    # --- health ---------------------------------------------------------------------------------

    def crashed(self) -> list[tuple[str, int]]:
        """Processes of the pipeline that ended by themselves: (name, exit code)."""
        return self.children.failed()

    def restart_crashed(self) -> list[tuple[str, int]]:
        """Start again what crashed (so that the next attack meets a whole pipeline); what it was."""
        crashed = self.crashed()
        for name, _code in crashed:
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self.children.restart(name)
        return crashed

    def wait_flowing(self, timeout_s: float = 30.0) -> None:
        """Until every good device has samples stored after this call (new ones, not old)."""
        marks = {d: self.assigned(d) for d in DEVICES}
        deadline = time.monotonic() + timeout_s
        while not all(self._stored_count(d, marks[d], None) > 0 for d in DEVICES):
            if time.monotonic() > deadline:
                raise AssertionError(f"good samples stopped flowing: {self._describe()}")
            time.sleep(0.2)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.folder / "logs" / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _describe(self) -> str:
        return (
            "; ".join(
                f"{d}: assigned {self.assigned(d)}, stored {self._stored_count(d, 0, None)}" for d in DEVICES
            )
            + f"; crashed {self.crashed()}"
        )

    # --- accounting -------------------------------------------------------------------------------

    def marks(self) -> dict[str, int]:
        """Each good device's next sequence number: samples before it exist."""
        return {d: self.assigned(d) for d in DEVICES}

    def assigned(self, device: str) -> int:
        path = self.spool_path(device)
        if not path.exists():
            return 0
        with _spool(path) as db:
            try:
                row = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
            except sqlite3.OperationalError:
                return 0  # its tables are still being made
        return int(row[0]) if row else 0

    def settle(self, since: dict[str, int], timeout_s: float = SETTLE_S) -> dict[str, Count]:
        """Wait until every good sample assigned from ``since`` to now is stored or gone from its
        spool (lost: nothing will bring it back), bounded by ``timeout_s``; then count them."""
        until = self.marks()
        deadline = time.monotonic() + timeout_s
        while True:
            counts = {d: self.account(d, since[d], until[d]) for d in DEVICES}
            if not any(c.waiting for c in counts.values()) or time.monotonic() > deadline:
                return counts
            time.sleep(0.25)

    def account(self, device: str, first: int, end: int) -> Count:
        seqs = self._stored_seqs(device, first, end)
        stored = set(seqs)
        with _spool(self.spool_path(device)) as db:
            waiting = {
                r[0] for r in db.execute("SELECT seq FROM samples WHERE seq >= ? AND seq < ?", (first, end))
            }
        lost = sorted(set(range(first, end)) - stored - waiting)
        return Count(end - first, len(stored), lost, len(seqs) - len(stored), len(waiting - stored))

    def _stored_seqs(self, device: str, first: int, end: int) -> list[int]:
        q = (
            f"SELECT seq FROM {device} WHERE device = '{device}' AND node = '{NODE}' "
            f"AND seq >= {first} AND seq < {end}"
        )
        return [int(v[1]) for s in self.influx.query(q, db=self.db) for v in s["values"]]

    def _stored_count(self, device: str, first: int, end: int | None) -> int:
        upper = f" AND seq < {end}" if end is not None else ""
        where = f"device = '{device}' AND node = '{NODE}' AND seq >= {first}{upper}"
        q = f"SELECT count(seq) FROM {device} WHERE {where}"
        series = self.influx.query(q, db=self.db)
        return int(series[0]["values"][0][1]) if series else 0

    def query(self, q: str) -> list[dict[str, Any]]:
        return self.influx.query(q, db=self.db)


@contextlib.contextmanager
def _spool(path: Path) -> Iterator[sqlite3.Connection]:
    """A publisher's spool, read-only (SQLite WAL lets us read while it writes)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        yield db
    finally:
        db.close()


class Attacker:
    """A misbehaving client: any client id, clean session by default, QoS 1 publishes that wait
    for the broker's acknowledgement (bounded), and an inbox for what it subscribed to."""

    def __init__(self, settings: MqttSettings, client_id: str = "", *, clean_session: bool = True) -> None:
        self.settings = settings
        self.client = make_client(
            settings, client_id or f"attacker-{time.monotonic_ns()}", clean_session=clean_session
        )
        self.client.reconnect_delay_set(60, 60)  # no quiet reconnection hiding what happened
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.client.on_connect = lambda c, u, f, reason, p: self._events.put(("connack", reason))
        self.client.on_subscribe = lambda c, u, mid, reasons, p: self._events.put(("suback", reasons))
        self.client.on_message = lambda c, u, message: self.inbox.put(message)

    def connect(self) -> Attacker:
        self.client.connect(self.settings.host, self.settings.port, keepalive=30)
        self.client.loop_start()
        kind, reason = self._events.get(timeout=WAIT_S)
        assert kind == "connack"
        assert not reason.is_failure, f"connection refused: {reason}"
        return self

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        kind, _reasons = self._events.get(timeout=WAIT_S)
        assert kind == "suback"

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(WAIT_S)

    def received(self, timeout_s: float = WAIT_S) -> mqtt.MQTTMessage | None:
        try:
            return self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.client.disable_logger()
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Attacker:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()


def unfixed(finding: int, why: str) -> pytest.MarkDecorator:
    """An attack whose fix is not on main yet: it must fail, on an assertion (strict; any other
    error is a real failure). Remove the mark when the fix lands."""
    return pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"finding {finding}: {why}")


def assert_harmless(row: Any, pipeline: Pipeline) -> None:
    """No process of the pipeline crashed, no good sample was lost or doubled."""
    logs = "\n".join(f"--- {name}\n{pipeline.log_tail(name)}" for name, _ in row.crashes)
    assert row.crashes == [], f"crashed: {row.crashes}\n{logs}"
    assert (row.lost, row.doubled) == (0, 0), f"good samples lost {row.lost}, doubled {row.doubled}"
