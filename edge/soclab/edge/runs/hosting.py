"""An instrument's control, hosted by the publisher that owns its port (``[control]`` in its file).

The publisher is the only process that talks to the instrument, so every command goes through
it, over two ways in, into one ``control.InstrumentControl``:

- operators: MQTT ``soclab/<site>/<node>/<device>/cmd`` (the publisher's own connection); each
  command's one result goes out on ``.../cmd/result`` (QoS 1) and the bridge stores it;
- the run controller on the same Pi: the local socket (``local``, ``[control] socket``), which
  works without the network. Its commands' results are answered on the socket and kept in the
  run's journal, which the bridge stores: they are not published a second time.

What the host adds to ``InstrumentControl``: the instrument's safe state at every (re)open of its
port and when the publisher stops (an instrument nobody controls is left off); a lease checked
every 0.1 s; the guard judged on every reading; readings and events passed to the local socket;
commands from MQTT executed on a thread of their own (an instrument's answer may take a second,
the MQTT network thread must not wait for it). Counters go into the instrument's health, so the
publisher's status shows them: ``commands_done``, ``commands_refused``, ``commands_failed``,
``commands_invalid``, ``safe_states``, ``safe_failures``, ``readings_dropped_local``.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from soclab.edge.instruments.base import Instrument, Reading
from soclab.edge.runs.actuators import actuator_for
from soclab.edge.runs.control import InstrumentControl, command_result
from soclab.edge.runs.local import LocalServer, Message, Peer
from soclab.wire import CMD_RESULT_SCHEMA, CMD_SCHEMA, InvalidMessage, Topic, decode, encode

log = logging.getLogger(__name__)

_TICK_S = 0.1


@dataclass(frozen=True)
class ControlConfig:
    """``[control]`` of a publisher's file: with it, the publisher hosts its instrument's control.

    ``socket``: the local socket for the run controller (``{device}`` is replaced), e.g.
    ``/run/soclab/{device}.sock``; empty: no local socket (operators' MQTT commands only).
    """

    socket: str = ""

    def socket_path(self, device: str) -> str:
        return self.socket.format(device=device)


class ControlHost:
    """The control of ``instrument`` (device ``topic.device``); ``send(topic, payload)`` hands a
    result to the publisher's sender, which publishes it (QoS 1)."""

    def __init__(
        self,
        config: ControlConfig,
        topic: Topic,
        instrument: Instrument,
        send: Callable[[str, bytes], None],
    ) -> None:
        self.instrument = instrument
        self.device = topic.device
        self.cmd_topic = str(topic.with_kind("cmd"))
        self._result_topic = str(topic.with_kind("cmd/result"))
        self._send = send
        actuator = actuator_for(instrument)
        self.control = (
            None
            if actuator is None
            else InstrumentControl(
                topic.device, actuator, site=topic.site, node=topic.node, on_event=self._control_event
            )
        )
        path = config.socket_path(topic.device) if config.socket else ""
        self.server = LocalServer(path, self._request, self._peer_gone) if path else None
        self._commands: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        instrument.on_open = self._opened
        instrument.on_lost = self._lost

    # --- the publisher's hooks ------------------------------------------------------------------
    def start(self) -> None:
        """Before the instrument opens: the socket listens, the lease is watched."""
        if self.server is not None:
            self.server.start()
        for target, name in ((self._tick, "control-tick"), (self._execute_mqtt, "control-commands")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def closing(self) -> None:
        """The publisher stops (acquisition thread, before the instrument closes): leave it safe."""
        if self.control is not None:
            self.control.make_safe("the publisher is stopping")

    def stop(self) -> None:
        self._stop.set()
        self._commands.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        if self.server is not None:
            self.server.stop()

    def readings(self, readings: Sequence[Reading]) -> None:
        """Every acquisition (acquisition thread): the guard judges each, the socket gets the last.
        Never raises: the samples must reach the spool whatever happens here."""
        if not readings:
            return
        try:
            if self.control is not None:
                for reading in readings:
                    self.control.reading(reading.values)
            if self.server is not None:
                last = readings[-1]
                message = {"type": "reading", "t_ns": last.t_ns, "values": _finite(last.values)}
                self.server.broadcast(message, subscribers_only=True)
                dropped = sum(peer.dropped for peer in self.server.peers())
                self.instrument.health.set_gauge("readings_dropped_local", float(dropped))
        except Exception:
            log.exception("device=%s event=control_readings_error", self.device)

    def mqtt_command(self, payload: bytes) -> None:
        """A message on the ``cmd`` topic (paho's network thread): queued, never executed here."""
        self._commands.put(payload)

    # --- the instrument's hooks (acquisition thread) ----------------------------------------------
    def _opened(self) -> None:
        if self.control is not None:
            self.control.opened()
        self._broadcast("opened", "the instrument's port (re)opened")

    def _lost(self, why: str) -> None:
        self._broadcast("lost", f"connection to the instrument lost: {why}")

    # --- threads ------------------------------------------------------------------------------
    def _tick(self) -> None:
        while not self._stop.wait(_TICK_S):
            if self.control is not None:
                self.control.tick()
                self.instrument.health.set_gauge("lease_held", 0.0 if self.control.lease is None else 1.0)

    def _execute_mqtt(self) -> None:
        while (payload := self._commands.get()) is not None:
            result = self._execute_payload(payload)
            if result is not None:
                self._send(self._result_topic, encode(result))

    def _execute_payload(self, payload: bytes) -> dict[str, Any] | None:
        try:
            command = decode(payload, CMD_SCHEMA)
        except InvalidMessage as exc:
            self.instrument.health.count("commands_invalid")
            log.error("device=%s event=invalid_command reason=%r", self.device, exc.reason)
            return _refusal_of_invalid(payload, exc.reason)
        return self._execute(command, holder=None)

    def _execute(self, command: dict[str, Any], holder: str | None) -> dict[str, Any]:
        if self.control is None:
            result = _result(command, "refused", f"{self.device} takes no commands (it only measures)")
        else:
            result = self.control.execute(command, holder=holder)
        self.instrument.health.count(f"commands_{result['outcome']}")
        return result

    # --- the local socket (its connection threads) -------------------------------------------------
    def _request(self, peer: Peer, request: Message) -> Message | None:
        op = request.get("op")
        if op == "subscribe":
            peer.subscribed = True
            return {"ok": True, "reason": ""}
        if op == "command":
            try:
                command = decode(encode(request.get("command", {})), CMD_SCHEMA)
            except InvalidMessage as exc:
                self.instrument.health.count("commands_invalid")
                return {"ok": False, "reason": f"invalid command: {exc.reason}"}
            holder = command["issuer"] if command["issuer"] in peer.holders else None
            return {"ok": True, "reason": "", "result": self._execute(command, holder)}
        if self.control is None:
            return {"ok": False, "reason": f"{self.device} takes no commands (it only measures)"}
        holder = str(request.get("holder", ""))
        if op == "acquire":
            ok, why = self.control.acquire(holder, float(request.get("ttl_s", 0)), request.get("guard"))
            if ok:
                peer.holders.add(holder)
            return {"ok": ok, "reason": why}
        if op == "release":
            self.control.release(holder, safe=bool(request.get("safe", True)))
            peer.holders.discard(holder)
            return {"ok": True, "reason": ""}
        return {"ok": False, "reason": f"unknown op {op!r}; ops: subscribe, acquire, release, command"}

    def _peer_gone(self, peer: Peer) -> None:
        if self.control is not None:
            for holder in peer.holders:
                self.control.holder_gone(holder)

    # --- events -----------------------------------------------------------------------------------
    def _control_event(self, event: str, reason: str) -> None:
        if event == "safe":
            self.instrument.health.count("safe_states")
        elif event == "safe_failed":
            self.instrument.health.count("safe_failures")
            self.instrument.health.last_error = f"safe state not reached: {reason}"
        self._broadcast(event, reason)

    def _broadcast(self, event: str, reason: str) -> None:
        if self.server is not None:
            self.server.broadcast({"type": "event", "event": event, "reason": reason, "t_ns": time.time_ns()})


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """JSON has no nan or infinity (the spool flags such values; here they are left out)."""
    return {k: v for k, v in values.items() if not (isinstance(v, float) and not math.isfinite(v))}


def _result(command: dict[str, Any], outcome: str, reason: str) -> dict[str, Any]:
    return command_result(command, outcome, reason, time.time_ns())


def _refusal_of_invalid(payload: bytes, reason: str) -> dict[str, Any] | None:
    """A command that is not valid still gets its one result, if it says enough to address one."""
    try:
        raw = json.loads(payload)
        result = _result(
            {
                "id": raw["id"],
                "command": raw["command"],
                "issuer": raw["issuer"],
                "issued_ns": raw["issued_ns"],
                "target": raw["target"],
            },
            "refused",
            f"invalid command: {reason}",
        )
        return decode(encode(result), CMD_RESULT_SCHEMA)
    except (ValueError, KeyError, TypeError, InvalidMessage):
        return None  # nothing to answer to: logged and counted
