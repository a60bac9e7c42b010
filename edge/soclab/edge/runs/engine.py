"""A run's logic, without I/O: which step, what to switch, when to move on, when to stop.

The engine is fed readings (``reading``) and woken (``tick``); it acts through ``Controls``
(one synchronous instrument command at a time, answered done, refused or failed) and reports
every transition through ``record`` (run events and command results, the run journal). The
clock is injected, so a whole run of many hours is a unit test of milliseconds.

Judging. Each quantity (voltage, current, temperature) is read on its channel (by default the
LabJack reference); while that reading is missing (older than ``max_age_s``) the first fresh
fallback (the instruments' own readings) stands in, and the status says so (``fallback``). A
step ends when one of its conditions has held continuously for ``confirm_s`` (so one noisy
sample does not end it), or when its duration has passed. A limit trips on a single reading:
then the run stops and everything goes to the safe state. A run that cannot judge its limits
(no voltage or current reading on any channel for ``max_age_s``) stops the same way: safety
never waits for a reading.

Steps become commands (``plan``): a discharge takes the load's remote control, sets its current
(or power) and switches its input on, with charging off; a charge sets the charge controller's
current limit and its charge voltage (below ``max_v``: the controller's own regulation keeps the
battery under the limit even if everything on the Pi stopped) and switches charging on, with the
load's input off; a hold sets the charge voltage; a rest switches both off. What switches off
always goes before what switches on. The safe state is the ``safe`` command of each instrument:
the load's input off, the charge controller's charging off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

CHARGE_VOLTAGE_MARGIN_V = 0.1  # the charge controller regulates this far below max_v at most
DEFAULT_MAX_AGE_S = {"voltage": 2.0, "current": 2.0, "temperature": 30.0}


class Controls(Protocol):
    def execute(self, device: str, command: str, args: Mapping[str, Any]) -> tuple[str, str, str, int]:
        """Run one command on a device: ``(outcome, reason, command id, issued_ns)``."""
        ...


@dataclass(frozen=True, slots=True)
class Action:
    device: str
    command: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a run is: ``cycle`` counts from 1 over the repeats, ``step`` over the whole run (BDF's
    "Step Count"), ``step_index`` inside its cycle."""

    cycle: int
    step: int
    step_index: int
    spec: Mapping[str, Any]


def positions(document: Mapping[str, Any]) -> Iterator[Position]:
    cycle = step = 0
    for block in document["cycles"]:
        for _ in range(block["repeat"]):
            cycle += 1
            for index, spec in enumerate(block["steps"], start=1):
                step += 1
                yield Position(cycle, step, index, spec)


def plan(
    spec: Mapping[str, Any], document: Mapping[str, Any], previous_charge_a: float | None
) -> list[Action]:
    """The commands that put the instruments into a step, what switches off first."""
    load, charger = document["instruments"]["load"], document["instruments"]["charger"]
    limits = document["limits"]
    action = spec["action"]
    if action == "rest":
        return [Action(load, "input", {"on": False}), Action(charger, "charging", {"on": False})]
    if action == "discharge":
        setpoint = (
            Action(load, "set_current", {"a": spec["current_a"]})
            if "current_a" in spec
            else Action(load, "set_power", {"w": spec["power_w"]})
        )
        return [
            Action(charger, "charging", {"on": False}),
            Action(load, "remote", {"on": True}),
            setpoint,
            Action(load, "input", {"on": True}),
        ]
    ceiling = limits["max_v"] - CHARGE_VOLTAGE_MARGIN_V
    if action == "charge":
        amps = spec["current_a"]
        volts = ceiling
    else:  # hold
        amps = previous_charge_a or limits["max_a"]
        volts = min(spec["voltage_v"], ceiling)
    return [
        Action(load, "input", {"on": False}),
        Action(charger, "charge_limits", {"current_max_a": amps, "voltage_v": volts}),
        Action(charger, "charging", {"on": True}),
    ]


@dataclass
class _Reading:
    value: float
    t: float


@dataclass
class Judged:
    """A quantity's value now: where it was read and whether a fallback stands in."""

    value: float
    channel: str
    fallback: bool


class RunEngine:
    """One run: ``start()``, then ``reading()`` and ``tick()`` until ``ended``; ``stop()`` any time."""

    def __init__(
        self,
        document: Mapping[str, Any],
        controls: Controls,
        record: Callable[[dict[str, Any]], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        confirm_s: float = 0.5,
    ) -> None:
        self.document = document
        self.id: str = document["id"]
        self.controls = controls
        self._record = record
        self._clock = clock
        self._wall_ns = wall_ns
        self.confirm_s = confirm_s
        self._positions = list(positions(document))
        self._readings: dict[tuple[str, str], _Reading] = {}
        self._index = -1
        self._started = 0.0
        self.started_ns = 0
        self._step_started = 0.0
        self._holding_since: dict[int, float] = {}
        self._previous_charge_a: float | None = None
        self._fallback_said: set[str] = set()
        self.state = "ready"  # ready -> running -> ended
        self.outcome = ""  # why it ended: "end", "stop", "limit"
        self.last_event: dict[str, Any] | None = None

    # --- inputs -----------------------------------------------------------------------------------
    def reading(self, device: str, values: Mapping[str, Any], t: float | None = None) -> None:
        """A sample of ``device`` (its values by field name), taken at monotonic time ``t``."""
        now = self._clock() if t is None else t
        for name, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._readings[(device, name)] = _Reading(float(value), now)

    def judge(self, quantity: str) -> Judged | None:
        """The quantity's freshest trustworthy value, on its channel or a fallback; None if none."""
        channel = self.document["channels"].get(quantity)
        if channel is None:
            return None
        max_age = channel.get("max_age_s", DEFAULT_MAX_AGE_S[quantity])
        now = self._clock()
        candidates = [(channel["device"], channel["field"])]
        candidates += [(f["device"], f["field"]) for f in channel.get("fallback", [])]
        for number, key in enumerate(candidates):
            found = self._readings.get(key)
            if found is not None and now - found.t <= max_age:
                name = f"{key[0]}.{key[1]}"
                if number and name not in self._fallback_said:
                    self._fallback_said.add(name)
                    log.warning("event=channel_fallback quantity=%s missing=%s.%s using=%s", quantity,
                                channel["device"], channel["field"], name)  # fmt: skip
                elif not number and self._fallback_said:
                    self._fallback_said.clear()
                    log.info("event=channel_back quantity=%s channel=%s", quantity, name)
                return Judged(found.value, name, bool(number))
        return None

    # --- running ----------------------------------------------------------------------------------
    def start(self, reason: str) -> bool:
        """Start if the limits can be judged now; False (nothing switched) otherwise."""
        if self.state != "ready":
            raise RuntimeError(f"run {self.id} is {self.state}")
        missing = [q for q in ("voltage", "current") if self.judge(q) is None]
        if missing:
            self.state = "ended"
            self.outcome = "stop"
            self._event("stop", f"not started: no {' or '.join(missing)} reading on any channel")
            return False
        voltage = self.judge("voltage")
        assert voltage is not None
        if not self.document["limits"]["min_v"] <= voltage.value <= self.document["limits"]["max_v"]:
            self.state = "ended"
            self.outcome = "stop"
            self._event("stop", f"not started: the battery is at {voltage.value:g} V, outside the limits",
                        value=voltage.value, channel=voltage.channel)  # fmt: skip
            return False
        self.state = "running"
        self._started = self._clock()
        self.started_ns = self._wall_ns()
        self._event("start", reason)
        self._enter(0, "run started")
        return True

    def tick(self) -> None:
        """Judge limits, then the step's end: at most one transition per tick."""
        if self.state != "running":
            return
        if self._check_limits():
            return
        position = self._positions[self._index]
        now = self._clock()
        elapsed = now - self._step_started
        duration = position.spec.get("duration_s")
        for number, condition in enumerate(position.spec.get("until", [])):
            judged = self.judge(condition["quantity"])
            if judged is None or not _holds(condition, judged.value):
                self._holding_since.pop(number, None)
                continue
            since = self._holding_since.setdefault(number, now)
            if now - since >= self.confirm_s:
                reason = f"{_describe(condition)} ({judged.value:g} on {judged.channel})"
                self._advance(reason, judged)
                return
        if duration is not None and elapsed >= duration:
            self._advance(f"duration {duration:g} s", None)

    def stop(self, reason: str, *, event: str = "stop", judged: Judged | None = None) -> None:
        """End the run now and make everything safe (a second stop does nothing)."""
        if self.state != "running":
            return
        self.state = "ended"
        self.outcome = event
        if judged is not None:
            self._event(event, reason, value=judged.value, channel=judged.channel)
        else:
            self._event(event, reason)
        self._make_safe()

    def instrument_lost(self, device: str, why: str) -> None:
        """A device of the run cannot be commanded or read any more (unplugged, its process gone)."""
        self.stop(f"{device}: {why}")

    # --- internals --------------------------------------------------------------------------------
    def _check_limits(self) -> bool:
        limits = self.document["limits"]
        voltage, current = self.judge("voltage"), self.judge("current")
        if voltage is None or current is None:
            missing = "voltage" if voltage is None else "current"
            self.stop(f"no {missing} reading on any channel: limits cannot be judged")
            return True
        trips = [
            (voltage.value < limits["min_v"], f"voltage below min_v {limits['min_v']:g} V", voltage),
            (voltage.value > limits["max_v"], f"voltage above max_v {limits['max_v']:g} V", voltage),
            (abs(current.value) > limits["max_a"], f"current beyond max_a {limits['max_a']:g} A", current),
        ]
        if "max_degc" in limits:
            temperature = self.judge("temperature")
            if temperature is None:
                self.stop("no temperature reading on any channel: max_degc cannot be judged")
                return True
            trips.append((temperature.value > limits["max_degc"], f"temperature above max_degc "
                          f"{limits['max_degc']:g} degC", temperature))  # fmt: skip
        for crossed, why, judged in trips:
            if crossed:
                self.stop(why, event="limit", judged=judged)
                return True
        if "max_duration_s" in limits and self._clock() - self._started > limits["max_duration_s"]:
            self.stop(f"run longer than max_duration {limits['max_duration_s']:g} s", event="limit")
            return True
        return False

    def _advance(self, reason: str, judged: Judged | None) -> None:
        if self._index + 1 >= len(self._positions):
            self.state = "ended"
            self.outcome = "end"
            if judged is not None:
                self._event("end", f"last step done: {reason}", value=judged.value, channel=judged.channel)
            else:
                self._event("end", f"last step done: {reason}")
            self._make_safe()
            return
        self._enter(self._index + 1, reason, judged)

    def _enter(self, index: int, reason: str, judged: Judged | None = None) -> None:
        self._index = index
        position = self._positions[index]
        self._step_started = self._clock()
        self._holding_since.clear()
        extra: dict[str, Any] = {"value": judged.value, "channel": judged.channel} if judged else {}
        self._event("step", reason, **extra)
        for action in plan(position.spec, self.document, self._previous_charge_a):
            outcome, why = self._execute(action)
            if outcome != "done":
                self.stop(f"{action.command} on {action.device} {outcome}: {why}")
                return
        if position.spec["action"] == "charge":
            self._previous_charge_a = position.spec["current_a"]

    def _make_safe(self) -> None:
        results = []
        for device in (self.document["instruments"]["load"], self.document["instruments"]["charger"]):
            outcome, why = self._execute(Action(device, "safe", {"reason": f"run {self.id} {self.outcome}"}))
            results.append(f"{device} safe" if outcome == "done" else f"{device} NOT safe ({outcome}: {why})")
        self._event("safe", "; ".join(results))

    def _execute(self, action: Action) -> tuple[str, str]:
        try:
            outcome, reason, command_id, issued_ns = self.controls.execute(
                action.device, action.command, action.args
            )
        except Exception as exc:  # a control path that broke is a failed command, never a crash
            log.exception("event=control_error device=%s command=%s", action.device, action.command)
            outcome, reason, command_id, issued_ns = "failed", f"{type(exc).__name__}: {exc}", "", 0
        self._record(
            {
                "t_ns": self._wall_ns(),
                "command": {
                    "device": action.device,
                    "id": command_id or f"{self.id}.local",
                    "command": action.command,
                    "issuer": f"run/{self.id}",
                    "outcome": outcome,
                    "reason": reason[:500],
                    "issued_ns": issued_ns,
                },
            }
        )
        return outcome, reason

    def _event(self, event: str, reason: str, **extra: Any) -> None:
        body: dict[str, Any] = {"run": self.id, "event": event, "reason": reason[:500]}
        if self._index >= 0:
            position = self._positions[self._index]
            body.update(
                cycle=position.cycle,
                step=position.step,
                step_index=position.step_index,
                description=position.spec["description"],
            )
        body.update(extra)
        self.last_event = body
        log.info("event=run_%s run=%s step=%s reason=%r", event, self.id, body.get("step"), reason)
        self._record({"t_ns": self._wall_ns(), "run_event": body})

    # --- status -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The ``run`` object of ``soclab.run.status/1``."""
        now = self._clock()
        index = max(self._index, 0)
        position = self._positions[index]
        status: dict[str, Any] = {
            "id": self.id,
            "name": self.document["name"],
            "started_ns": self.started_ns,
            "cycle": position.cycle,
            "cycles": self._positions[-1].cycle,
            "step": position.step,
            "steps": len(self._positions),
            "step_index": position.step_index,
            "description": position.spec["description"],
            "elapsed_s": round(max(0.0, now - self._started), 3) if self.started_ns else 0.0,
            "step_elapsed_s": round(max(0.0, now - self._step_started), 3) if self.started_ns else 0.0,
        }
        conditions = position.spec.get("until", [])
        if conditions:
            status["until"] = " or ".join(_describe(c) for c in conditions)
            quantity = conditions[0]["quantity"]
        else:
            status["until"] = f"{position.spec['duration_s']:g} s"
            quantity = "voltage"
        if "duration_s" in position.spec and conditions:
            status["until"] += f" or {position.spec['duration_s']:g} s"
        judged = self.judge(quantity)
        channel = self.document["channels"][quantity]
        status["watching"] = {
            "quantity": quantity,
            "channel": judged.channel if judged else f"{channel['device']}.{channel['field']}",
            "value": judged.value if judged else None,
            "fallback": judged.fallback if judged else False,
        }
        return status


def _holds(condition: Mapping[str, Any], value: float) -> bool:
    if condition["quantity"] == "current":
        value = abs(value)
    target = float(condition["value"])
    return value <= target if condition["op"] == "<=" else value >= target


def _describe(condition: Mapping[str, Any]) -> str:
    unit = "V" if condition["quantity"] == "voltage" else "A"
    magnitude = "|current|" if condition["quantity"] == "current" else "voltage"
    return f"{magnitude} {condition['op']} {condition['value']:g} {unit}"
