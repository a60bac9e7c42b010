"""What an instrument's publisher enforces for itself: it owns the port, so it owns the safety.

Everything that can switch this instrument goes through one ``InstrumentControl``: operators'
commands from MQTT and the run controller's over the local socket. It guarantees:

- **Safe at (re)open.** Whenever the port (re)opens (the publisher starts, restarts after a
  crash or kill -9, finds the instrument again after an unplug), the instrument is put in its
  safe state before anything else: a load left on by a dead process is switched off by the next.
- **A lease, renewed or lost.** A run takes control with a lease (a holder name, a time to live,
  guard limits). The holder renews it (every ttl/3); if it stops renewing (its process hung or
  was killed: a closed socket is noticed at once, a silent one at the expiry) the instrument is
  made safe. Safety never depends on the run controller staying alive.
- **Guard limits.** While a lease is held, the lease's limits are judged on this instrument's
  own readings (``bat_v``, ``bat_a``), independently of the run controller: a crossing makes the
  instrument safe and ends the lease. Limits are judged in two processes, on two sensors.
- **Commands with an expiry and one result.** A command that arrives after ``expires_ns`` is
  refused, never executed; every command gets exactly one result: ``done``, ``refused`` with the
  reason, or ``failed`` with the instrument's error. While a lease is held only its holder may
  switch the instrument on or change set values; anyone may switch it off (``safe``, input off,
  charging off), which ends the lease: the run sees it (event ``lease_end``) and stops.

The class does no I/O of its own: the clock is injected and the actuator does the wire. Its
methods are called from several threads (MQTT, the socket, the acquisition loop): one lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from soclab.edge.runs.actuators import Actuator
from soclab.wire import CMD_RESULT_SCHEMA

log = logging.getLogger(__name__)

GUARD_KEYS = ("min_v", "max_v", "max_a")


@dataclass
class Lease:
    holder: str
    ttl_s: float
    expires: float
    guard: dict[str, float] = field(default_factory=dict)


class InstrumentControl:
    """The control of one instrument (``device``) through its ``actuator``."""

    def __init__(
        self,
        device: str,
        actuator: Actuator,
        *,
        site: str = "",
        node: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.device = device
        self.site = site
        self.node = node
        self.actuator = actuator
        self._clock = clock
        self._wall_ns = wall_ns
        self._on_event = on_event or (lambda event, reason: None)
        self._lock = threading.RLock()
        self.lease: Lease | None = None
        self.safe_events: list[tuple[float, str]] = []  # (monotonic time, why): for status and tests

    # --- safety -------------------------------------------------------------------------------------
    def make_safe(self, why: str) -> bool:
        """Switch to the safe state now; False (logged, reported) if the instrument did not take it."""
        with self._lock:
            try:
                self.actuator.safe()
            except Exception as exc:
                log.error("device=%s event=safe_failed why=%r error=%r", self.device, why, f"{exc}")
                self._on_event("safe_failed", f"{why}: {type(exc).__name__}: {exc}")
                return False
            self.safe_events.append((self._clock(), why))
            log.warning("device=%s event=safe why=%r", self.device, why)
            self._on_event("safe", why)
            return True

    def opened(self) -> None:
        """The port (re)opened: whatever was left on, switch it off; no lease survives a reopen."""
        with self._lock:
            if self.lease is not None:
                self._end_lease("the instrument was reopened")
            self.make_safe("port opened")

    def tick(self) -> None:
        """Call often (every 0.1 s): a lease not renewed in time makes the instrument safe."""
        with self._lock:
            if self.lease is not None and self._clock() > self.lease.expires:
                holder, ttl = self.lease.holder, self.lease.ttl_s
                self._end_lease(f"lease of {holder} expired")
                self.make_safe(f"lease of {holder} expired (not renewed within {ttl:g} s)")

    def reading(self, values: Mapping[str, Any]) -> None:
        """The instrument's own reading: judged against the lease's guard limits."""
        with self._lock:
            lease = self.lease
            if lease is None or not lease.guard:
                return
            crossed = _crossed(lease.guard, values)
            if crossed:
                self._end_lease(f"guard: {crossed}")
                self.make_safe(f"guard of {lease.holder}: {crossed}")

    # --- the lease ----------------------------------------------------------------------------------
    def acquire(
        self, holder: str, ttl_s: float, guard: Mapping[str, float] | None = None
    ) -> tuple[bool, str]:
        """Take (or renew) control for ``holder``; ``(False, why)`` if someone else holds it."""
        if not 0 < ttl_s <= 60:
            return False, f"ttl_s must be in (0, 60], got {ttl_s}"
        unknown = set(guard or {}) - set(GUARD_KEYS)
        if unknown:
            return False, f"unknown guard limits {sorted(unknown)}; known: {', '.join(GUARD_KEYS)}"
        with self._lock:
            if self.lease is not None and self.lease.holder != holder:
                return False, f"{self.lease.holder} holds control of {self.device}"
            fresh = self.lease is None
            self.lease = Lease(holder, ttl_s, self._clock() + ttl_s, dict(guard or {}))
            if fresh:
                log.info("device=%s event=lease holder=%s ttl_s=%g guard=%s", self.device, holder, ttl_s,
                         self.lease.guard)  # fmt: skip
            return True, ""

    def release(self, holder: str, *, safe: bool = True) -> None:
        """The holder gives control back (the instrument goes safe unless told otherwise)."""
        with self._lock:
            if self.lease is not None and self.lease.holder == holder:
                self._end_lease(f"released by {holder}")
                if safe:
                    self.make_safe(f"released by {holder}")

    def holder_gone(self, holder: str) -> None:
        """The holder's connection closed (its process ended, maybe by kill -9): safe at once."""
        with self._lock:
            if self.lease is not None and self.lease.holder == holder:
                self._end_lease(f"{holder} disconnected")
                self.make_safe(f"{holder} disconnected while holding control")

    def _end_lease(self, why: str) -> None:
        if self.lease is not None:
            log.warning("device=%s event=lease_end holder=%s why=%r", self.device, self.lease.holder, why)
            self._on_event("lease_end", why)
        self.lease = None

    # --- commands -----------------------------------------------------------------------------------
    def execute(self, command: Mapping[str, Any], *, holder: str | None = None) -> dict[str, Any]:
        """Execute one valid ``soclab.cmd/1`` command; its one ``soclab.cmd.result/1``.

        ``holder`` is the lease holder the command comes from (the local socket's), None for MQTT.
        """
        with self._lock:
            outcome, reason = self._decide(command, holder)
            if outcome == "done":
                try:
                    if command["command"] == "safe":
                        if not self.make_safe(f"command {command['id']} from {command['issuer']}"):
                            raise RuntimeError("the instrument did not take its safe state")
                    else:
                        self.actuator.apply(command["command"], command.get("args", {}))
                except Exception as exc:  # the instrument's error becomes the result, never a crash
                    outcome, reason = "failed", f"{type(exc).__name__}: {exc}"
            if outcome == "done" and self.lease is not None and holder != self.lease.holder:
                # Someone else switched it off (all _decide lets through): the run cannot go on.
                self._end_lease(f"{command['command']} by {command['issuer']} (command {command['id']})")
            log.info("device=%s event=command id=%s command=%s issuer=%s outcome=%s reason=%r", self.device,
                     command["id"], command["command"], command["issuer"], outcome, reason)  # fmt: skip
            return self.result(command, outcome, reason)

    def _decide(self, command: Mapping[str, Any], holder: str | None) -> tuple[str, str]:
        target = command["target"]
        if target["device"] != self.device or (self.site and (target["site"], target["node"]) != (
            self.site, self.node
        )):  # fmt: skip
            where = f"{target['site']}/{target['node']}/{target['device']}"
            return "refused", f"addressed to {where}, this is {self.site}/{self.node}/{self.device}"
        now_ns = self._wall_ns()
        if now_ns > command["expires_ns"]:
            late = (now_ns - command["expires_ns"]) / 1e9
            return "refused", f"expired {late:.1f} s before it arrived (expires_ns {command['expires_ns']})"
        name, args = command["command"], command.get("args", {})
        if name != "safe" and name not in self.actuator.commands:
            known = ", ".join(sorted({"safe", *self.actuator.commands}))
            return "refused", f"{self.device} has no command {name!r}; it has {known}"
        lease = self.lease
        switching_on = name != "safe" and not self.actuator.towards_safe(name, args)
        if lease is not None and holder != lease.holder and switching_on:
            return "refused", f"{lease.holder} holds control of {self.device}: only switching off is allowed"
        return "done", ""

    def result(self, command: Mapping[str, Any], outcome: str, reason: str) -> dict[str, Any]:
        return command_result(command, outcome, reason, self._wall_ns())


def command_result(command: Mapping[str, Any], outcome: str, reason: str, t_ns: int) -> dict[str, Any]:
    """The one ``soclab.cmd.result/1`` of ``command``: ``done``, ``refused`` or ``failed``, why."""
    return {
        "schema": CMD_RESULT_SCHEMA,
        "id": command["id"],
        "command": command["command"],
        "issuer": command["issuer"],
        "issued_ns": command["issued_ns"],
        "target": dict(command["target"]),
        "outcome": outcome,
        "reason": reason[:500],
        "t_ns": t_ns,
    }


def _crossed(guard: Mapping[str, float], values: Mapping[str, Any]) -> str:
    volts, amps = values.get("bat_v"), values.get("bat_a")
    if isinstance(volts, int | float) and not isinstance(volts, bool):
        if "min_v" in guard and volts < guard["min_v"]:
            return f"bat_v {volts:g} V below {guard['min_v']:g} V"
        if "max_v" in guard and volts > guard["max_v"]:
            return f"bat_v {volts:g} V above {guard['max_v']:g} V"
    if (
        isinstance(amps, int | float)
        and not isinstance(amps, bool)
        and "max_a" in guard
        and abs(amps) > guard["max_a"]
    ):
        return f"bat_a {amps:g} A beyond {guard['max_a']:g} A"
    return ""
