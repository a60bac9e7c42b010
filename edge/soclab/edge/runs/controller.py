"""The run controller of a node (``soclab-run``): executes one run at a time, on the Pi.

    operator --MQTT run/cmd (start, stop)--> controller --local sockets--> publishers --> instruments
                                              |  journal (SQLite) --MQTT run/journal--> bridge
                                              +-- run/status (retained), run/cmd/result

It reaches the instruments only through their publishers' local sockets (``local``), never
through the network: readings come from there too, so a run goes on through an outage of any
length while its journal waits on disk. Its safety does not rest on it staying alive: it holds a
lease on the load and the charger (renewed every ``lease_ttl_s``/3), and the publishers make
their instruments safe when its connection closes (kill -9 included) or its lease runs out.

What stops a run, besides its end, a limit, or an operator's ``stop``: the load's or the
charger's publisher going away (its socket closes), its instrument lost (unplugged) or reopened,
its lease ended (its guard tripped; someone else switched it off), a command that failed. The
controller then switches everything it can reach to the safe state and says what it reached.

A controller that starts and finds an unfinished run in its journal (it was killed, or the Pi
rebooted) stops that run: it records ``stop`` ("not resumed"), switches the instruments off when
it reaches them, records ``safe``. A run is never resumed: the battery's state after an unknown
gap is not what the run file assumed.

Threads: the main loop (``run``) owns the engine, the journal's sending and the status; paho's
network thread and the sockets' reader threads only put events on its queue. Commands to the
instruments are requests on the sockets, answered on their reader threads.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from soclab.edge.runs.config import ControllerConfig
from soclab.edge.runs.control import command_result
from soclab.edge.runs.engine import RunEngine
from soclab.edge.runs.journal import Journal
from soclab.edge.runs.local import ChannelClosed, LocalClient, Message
from soclab.wire import (
    CMD_SCHEMA,
    JOURNAL_SCHEMA,
    RUN_STATUS_SCHEMA,
    STORED_SCHEMA,
    InvalidMessage,
    decode,
    encode,
)
from soclab.wire.mqtt import Will, make_client

log = logging.getLogger(__name__)

JOURNAL_BATCH = 200  # records per journal message
READINGS_WAIT_S = 5.0  # at start, how long to wait for the readings the limits are judged on


# --- events for the main loop ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Mqtt:
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Connected:
    pass


@dataclass(frozen=True, slots=True)
class _Reading:
    device: str
    values: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _DeviceEvent:
    device: str
    event: str
    reason: str


_Event = _Mqtt | _Connected | _Reading | _DeviceEvent


class Device:
    """The local socket of one instrument's publisher, as the controller uses it."""

    def __init__(self, name: str, path: str, events: queue.SimpleQueue[_Event]) -> None:
        self.name = name
        self._events = events
        self.client = LocalClient(path, self._message, self._closed)

    def connect(self) -> Device:
        self.client.connect()
        reply = self.client.request("subscribe")
        if not reply.get("ok"):
            raise ChannelClosed(f"{self.name} refused the subscription: {reply.get('reason')}")
        return self

    def _message(self, message: Message) -> None:
        if message.get("type") == "reading" and isinstance(message.get("values"), dict):
            self._events.put(_Reading(self.name, message["values"]))
        elif message.get("type") == "event":
            self._events.put(_DeviceEvent(self.name, str(message.get("event")), str(message.get("reason"))))

    def _closed(self, why: str) -> None:
        self._events.put(_DeviceEvent(self.name, "closed", f"its publisher's control socket closed ({why})"))


class RunController:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        topic = config.topic
        self.cmd_topic = str(topic)
        self.result_topic = str(topic.with_kind("cmd/result"))
        self.status_topic = str(topic.with_kind("status"))
        self.journal_topic = str(topic.with_kind("journal"))
        self.stored_topic = str(topic.with_kind("stored"))
        self.source = {"site": config.source.site, "node": config.source.node, "device": "run"}
        self.journal = Journal(config.journal.path)
        self.engine: RunEngine | None = None
        self.devices: dict[str, Device] = {}
        self._holder = ""
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._sent: dict[int, float] = {}  # journal seq -> when it was last published
        self._ids = itertools.count(1)
        self._next_renewal = 0.0
        self._next_status = 0.0
        self._next_journal = 0.0
        self._journal_new = False
        will = Will(self.status_topic, self._status_payload("offline", "connection lost"))
        self.client = make_client(config.mqtt, config.client_id, clean_session=False, will=will)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: self._connected.clear()
        self.client.on_message = lambda c, u, m: self._events.put(_Mqtt(m.topic, bytes(m.payload)))

    # --- paho's network thread ------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("event=connect_refused reason=%s", reason)
            return
        client.subscribe([(self.cmd_topic, 1), (self.stored_topic, 1)])
        self._connected.set()
        self._events.put(_Connected())

    # --- running ------------------------------------------------------------------------------
    def run(self) -> None:
        """Until ``stop()``: then the active run (if any) is stopped and its instruments made safe."""
        m = self.config.mqtt
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()
        try:
            self._close_unfinished_run()
            tick = self.config.run.tick_s
            next_tick = time.monotonic()
            while not self._stop.is_set():
                try:  # everything that happened is handled before the engine judges (tick)
                    self._handle(self._events.get(timeout=max(0.0, next_tick - time.monotonic())))
                    while True:
                        self._handle(self._events.get_nowait())
                except queue.Empty:
                    pass
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + tick
                    self._tick()
        finally:
            if self.engine is not None and self.engine.state == "running":
                self.engine.stop("the run controller was stopped (SIGTERM)")
                self._after_engine()
            self._send_journal(final=True)
            info = self.client.publish(self.status_topic, self._status_payload("offline", "stopped"), 1, True)
            if self._connected.is_set():
                info.wait_for_publish(timeout=3)
            self.client.disable_logger()
            self.client.disconnect()
            self.client.loop_stop()
            self.journal.close()

    def stop(self) -> None:
        self._stop.set()

    def _tick(self) -> None:
        engine = self.engine
        now = time.monotonic()
        if engine is not None and engine.state == "running":
            if now >= self._next_renewal:
                self._next_renewal = now + self.config.run.lease_ttl_s / 3
                self._renew_leases()
            engine.tick()
            self._after_engine()
        if now >= self._next_status:
            self._publish_status()
        # The journal is read once a second, and at once when something was recorded or the broker
        # is back: a long backlog after an outage costs one read a second, not ten.
        if self._journal_new or now >= self._next_journal:
            self._send_journal()
            self._journal_new, self._next_journal = False, now + 1.0

    def _handle(self, event: _Event) -> None:
        match event:
            case _Reading(device, values):
                if self.engine is not None:
                    self.engine.reading(device, values)
            case _DeviceEvent(device, kind, reason):
                self._device_event(device, kind, reason)
            case _Mqtt(topic, payload):
                if topic == self.stored_topic:
                    self._confirmation(payload)
                elif topic == self.cmd_topic:
                    self._command(payload)
            case _Connected():
                log.info("event=connected")
                self._sent.clear()  # whatever was in flight may be lost: send it again
                self._journal_new = True
                self._publish_status()

    # --- commands -------------------------------------------------------------------------------
    def _command(self, payload: bytes) -> None:
        try:
            command = decode(payload, CMD_SCHEMA)
        except InvalidMessage as exc:
            log.error("event=invalid_command reason=%r", exc.reason)
            return
        outcome, reason = self._decide(command)
        log.info("event=command id=%s command=%s issuer=%s outcome=%s reason=%r", command["id"],
                 command["command"], command["issuer"], outcome, reason)  # fmt: skip
        result = command_result(command, outcome, reason, time.time_ns())
        if self.engine is not None:
            result["run"] = self.engine.id
        self.client.publish(self.result_topic, encode(result), qos=1)
        self._publish_status()

    def _decide(self, command: dict[str, Any]) -> tuple[str, str]:
        target = command["target"]
        if (target["site"], target["node"], target["device"]) != (
            self.source["site"], self.source["node"], "run"
        ):  # fmt: skip
            return "refused", f"addressed to {target['site']}/{target['node']}/{target['device']}"
        late = time.time_ns() - command["expires_ns"]
        if late > 0:
            return (
                "refused",
                f"expired {late / 1e9:.1f} s before it arrived (expires_ns {command['expires_ns']})",
            )
        name = command["command"]
        running = self.engine is not None and self.engine.state == "running"
        if name == "stop":
            if not running:
                return "refused", "no run is active"
            assert self.engine is not None
            why = command.get("args", {}).get("reason") or "no reason given"
            self.engine.stop(f"stopped by {command['issuer']}: {why}")
            self._after_engine()
            return "done", f"run {self.engine.id} stopped"
        if name == "start":
            if running:
                assert self.engine is not None
                return "refused", f"run {self.engine.id} is running: stop it first"
            return self._start(
                command["args"]["run"], f"started by {command['issuer']} (command {command['id']})"
            )
        return "refused", f"the run controller has no command {name!r}; it has start, stop"

    # --- a run's life ---------------------------------------------------------------------------
    def _start(self, document: dict[str, Any], reason: str) -> tuple[str, str]:
        instruments = document["instruments"]
        wanted = [instruments["load"], instruments["charger"]]
        for channel in document["channels"].values():
            wanted += [channel["device"], *(f["device"] for f in channel.get("fallback", []))]
        self._disconnect()
        for name in dict.fromkeys(wanted):
            path = self.config.run.socket_path(name)
            try:
                self.devices[name] = Device(name, path, self._events).connect()
            except ChannelClosed as exc:
                if name in instruments.values():
                    self._disconnect()
                    return (
                        "refused",
                        f"cannot reach {name}'s control ({exc}): is its publisher running with [control]?",
                    )
                log.warning("event=channel_device_unreachable device=%s error=%r", name, str(exc))
        self._holder = f"run/{document['id']}"
        limits, r = document["limits"], self.config.run
        guard = {"min_v": limits["min_v"] - r.guard_margin_v, "max_v": limits["max_v"] + r.guard_margin_v,
                 "max_a": limits["max_a"] + r.guard_margin_a}  # fmt: skip
        for name in (instruments["load"], instruments["charger"]):
            try:
                reply = self.devices[name].client.request("acquire", holder=self._holder, ttl_s=r.lease_ttl_s,
                                                          guard=guard)  # fmt: skip
            except ChannelClosed as exc:
                reply = {"ok": False, "reason": str(exc)}
            if not reply.get("ok"):
                self._release()
                self._disconnect()
                return "refused", f"{name} did not give control: {reply.get('reason')}"
        self.engine = RunEngine(document, self, self._record, confirm_s=r.confirm_s)
        deadline = time.monotonic() + READINGS_WAIT_S
        later: list[_Event] = []  # commands wait until this one is answered
        while time.monotonic() < deadline and not all(self.engine.judge(q) for q in ("voltage", "current")):
            try:
                event = self._events.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(event, _Reading):
                self._handle(event)
            else:
                later.append(event)
        for event in later:
            self._events.put(event)
        self._next_renewal = time.monotonic() + r.lease_ttl_s / 3
        if not self.engine.start(reason):
            why = self.engine.last_event["reason"] if self.engine.last_event else "not started"
            self._release()
            self._disconnect()
            return "failed", why
        self.journal.begin(document, self.engine.started_ns)
        return "done", f"run {document['id']} started"

    def _after_engine(self) -> None:
        """After anything that may have ended the run: give the instruments back, forget the run."""
        engine = self.engine
        if engine is None or engine.state != "ended" or not self.devices:
            return
        self._release()
        self._disconnect()
        self.journal.end()
        self._publish_status()

    def _device_event(self, device: str, kind: str, reason: str) -> None:
        engine = self.engine
        if engine is None or engine.state != "running":
            return
        instruments = engine.document["instruments"]
        if device not in (instruments["load"], instruments["charger"]):
            if kind == "closed":  # a reference gone: its fallbacks stand in (the engine says so)
                log.warning("event=channel_device_lost device=%s reason=%r", device, reason)
            return
        if kind in ("lost", "closed"):
            engine.instrument_lost(device, reason)
        elif kind in ("lease_end", "safe", "safe_failed", "opened"):
            event = "limit" if reason.startswith("guard") else "stop"
            engine.stop(f"{device}: {reason}", event=event)
        self._after_engine()

    def _renew_leases(self) -> None:
        engine = self.engine
        assert engine is not None
        r = self.config.run
        for name in (engine.document["instruments"]["load"], engine.document["instruments"]["charger"]):
            device = self.devices.get(name)
            if device is None:
                continue
            try:
                reply = device.client.request(
                    "acquire", holder=self._holder, ttl_s=r.lease_ttl_s, timeout_s=1.0
                )
            except ChannelClosed as exc:
                engine.instrument_lost(name, f"lease not renewed: {exc}")
                break
            if not reply.get("ok"):
                engine.stop(f"{name}: lease not renewed: {reply.get('reason')}")
                break

    def _release(self) -> None:
        for device in self.devices.values():
            with contextlib.suppress(ChannelClosed):  # gone: its publisher makes it safe by itself
                device.client.request("release", holder=self._holder, safe=True, timeout_s=2.0)

    def _disconnect(self) -> None:
        devices, self.devices = self.devices, {}
        for device in devices.values():
            device.client.close()

    # --- the engine's controls (main loop thread) -------------------------------------------------
    def execute(self, device: str, command: str, args: Mapping[str, Any]) -> tuple[str, str, str, int]:
        """One command to an instrument over its socket: ``(outcome, reason, id, issued_ns)``."""
        assert self.engine is not None
        return self._send(self.devices.get(device), device, command, args, self.engine.id)

    def _send(
        self, connection: Device | None, device: str, command: str, args: Mapping[str, Any], run_id: str
    ) -> tuple[str, str, str, int]:
        now = time.time_ns()
        message: dict[str, Any] = {
            "schema": CMD_SCHEMA,
            "id": f"{run_id}.{next(self._ids)}",
            "issuer": f"run/{run_id}",
            "issued_ns": now,
            "expires_ns": now + int(self.config.run.command_expiry_s * 1e9),
            "target": {"site": self.source["site"], "node": self.source["node"], "device": device},
            "command": command,
        }
        if args:
            message["args"] = dict(args)
        if connection is None:
            return "failed", f"{device}'s control is not connected", message["id"], now
        try:
            reply = connection.client.request("command", command=message)
        except ChannelClosed as exc:
            return "failed", str(exc), message["id"], now
        if not reply.get("ok"):
            return "refused", str(reply.get("reason")), message["id"], now
        result = reply["result"]
        return result["outcome"], result["reason"], message["id"], now

    def _record(self, record: dict[str, Any]) -> None:
        stored = self.journal.append(record)
        self._journal_new = True
        if "run_event" in stored:
            self._publish_status()

    # --- at start: a run left unfinished ----------------------------------------------------------
    def _close_unfinished_run(self) -> None:
        active = self.journal.active()
        if active is None:
            return
        document, _started_ns = active
        run_id, holder = document["id"], f"run/{document['id']}"
        log.warning(
            "event=unfinished_run run=%s (the controller restarted: stopping it, not resuming)", run_id
        )
        self.journal.append({"t_ns": time.time_ns(), "run_event": {
            "run": run_id, "event": "stop",
            "reason": "the run controller started again while this run was active (it was killed, or the "
                      "node restarted): the run is stopped, not resumed"}})  # fmt: skip
        self._holder = holder
        outcomes = []
        deadline = time.monotonic() + self.config.run.startup_wait_s
        for name in (document["instruments"]["load"], document["instruments"]["charger"]):
            device, why = self._reach(name, deadline)
            if device is None:
                outcomes.append(f"{name} not reached ({why}): it goes safe when its publisher opens it")
                continue
            args = {"reason": "run not resumed"}
            outcome, why, command_id, issued_ns = self._send(device, name, "safe", args, run_id)
            device.client.close()
            self.journal.append({"t_ns": time.time_ns(), "command": {
                "device": name, "id": command_id, "command": "safe", "issuer": holder, "outcome": outcome,
                "reason": why[:500], "issued_ns": issued_ns}})  # fmt: skip
            outcomes.append(f"{name} safe" if outcome == "done" else f"{name} NOT safe ({outcome}: {why})")
        safe = {"run": run_id, "event": "safe", "reason": "; ".join(outcomes)[:500]}
        self.journal.append({"t_ns": time.time_ns(), "run_event": safe})
        self.journal.end()

    def _reach(self, name: str, deadline: float) -> tuple[Device | None, str]:
        """The device's socket, trying until ``deadline`` (its publisher may still be starting)."""
        while True:
            try:
                return Device(name, self.config.run.socket_path(name), self._events).connect(), ""
            except ChannelClosed as exc:
                if time.monotonic() >= deadline or self._stop.is_set():
                    return None, str(exc)
                time.sleep(0.5)

    # --- the journal on the wire ------------------------------------------------------------------
    def _send_journal(self, final: bool = False) -> None:
        if not self._connected.is_set():
            return
        now = time.monotonic()
        due = [
            r
            for r in self.journal.unconfirmed()
            if now - self._sent.get(r["seq"], -1e9) >= self.config.journal.resend_s
        ]
        for start in range(0, len(due), JOURNAL_BATCH):
            batch = due[start : start + JOURNAL_BATCH]
            message = {"schema": JOURNAL_SCHEMA, "source": self.source, "records": batch}
            info = self.client.publish(self.journal_topic, encode(message), qos=1)
            if final:
                info.wait_for_publish(timeout=2)
            for record in batch:
                self._sent[record["seq"]] = now

    def _confirmation(self, payload: bytes) -> None:
        try:
            message = decode(payload, STORED_SCHEMA)
        except InvalidMessage as exc:
            log.error("event=invalid_confirmation reason=%r", exc.reason)
            return
        ranges = message.get("stored", []) + message.get("dead_lettered", [])
        self.journal.confirmed(ranges)
        for first, last in ranges:
            for seq in [s for s in self._sent if first <= s <= last]:
                del self._sent[seq]
        if message.get("dead_lettered"):
            log.error(
                "event=journal_dead_lettered ranges=%s (the bridge could not store them)",
                message["dead_lettered"],
            )

    # --- status -----------------------------------------------------------------------------------
    def _publish_status(self) -> None:
        self._next_status = time.monotonic() + self.config.run.status_interval_s
        if self._connected.is_set():
            self.client.publish(self.status_topic, self._status_payload(), qos=1, retain=True)

    def _status_payload(self, state: str | None = None, reason: str | None = None) -> bytes:
        engine = self.engine
        running = engine is not None and engine.state == "running"
        status: dict[str, Any] = {
            "schema": RUN_STATUS_SCHEMA,
            "source": self.source,
            "state": state or ("running" if running else "idle"),
            "t_ns": time.time_ns(),
        }
        if reason:
            status["reason"] = reason
        if engine is not None and running:
            status["run"] = engine.status()
        if engine is not None and engine.last_event is not None:
            status["last_event"] = engine.last_event
        return encode(status)
