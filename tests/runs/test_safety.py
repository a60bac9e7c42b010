"""Every path to the safe state, with real processes and real kill -9 (issue 10, point 4).

The rig (``rig.Rig``): the simulated lab in this process (battery, e-load and MPPT simulators on
pseudo-terminals, a bench supply behind the MPPT), the three publishers hosting their
instruments' control and the node's run controller as processes, a broker of their own, the
bridge into InfluxDB. Each case starts from a quiet lab (no run, nothing flowing), makes
something flow through a run (or an operator's commands), does what the case says, and measures
(``rig.Watch``, sampling what flows into the battery every 5 ms) the time from the fault to the
safe state: the load's input off and the charger off. Then every device's samples are counted
in the database: none may be missing. The figures are printed at the end of the session.

The safe state, case by case (what the README's "Runs" says):

- a limit crossed: the run controller stops the run at the first reading beyond it;
- the operator's stop (``soclab run stop``, through the broker): the same;
- the run controller killed (-9): its sockets close, each publisher makes its instrument safe at
  once; the controller started again (by systemd) records the run's end ("not resumed");
- the run controller hung (SIGSTOP): its lease is not renewed, the publishers switch off when it
  runs out;
- the e-load's publisher killed (-9) with the load on: nothing can reach the load until its
  publisher is back (systemd restarts it; here after 1 s, ``Restart=on-failure``, ``RestartSec=1``), which
  switches it off as it opens the port; meanwhile the run controller has stopped the run and
  switched the charger off;
- an instrument unplugged mid-step: the run stops at once (charger or load off, whichever is
  still reachable); the unplugged one keeps what it was doing until it is plugged in again, when
  its publisher switches it off as it reopens the port;
- a publisher that starts and finds its instrument on (with no run): off as the port opens;
- the Pi rebooting mid-run: every process gone at once, the instruments keep their state; at
  boot the publishers switch them off as they open them, and the run controller stops the run it
  finds unfinished in its journal: a run is never resumed.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from rig import Rig

from soclab.tools.runs.cli import command_message

pytestmark = pytest.mark.slow

RESTART_S = 1.0  # systemd's RestartSec in the units the Ansible role writes


@pytest.fixture(scope="module")
def rig(rig_factory: Any) -> Rig:
    rig: Rig = rig_factory(capacity_ah=1.0, soc=0.8, supply_a=5.0)
    return rig


@pytest.fixture(autouse=True)
def quiet(rig: Rig) -> None:
    """Each case starts with no run and nothing flowing."""
    assert rig.watch is not None
    rig.watch.wait(lambda s: s.safe, time.monotonic())


FALLBACKS = {
    "voltage": [{"device": "eload", "field": "bat_v"}, {"device": "mppt", "field": "bat_v"}],
    "current": [{"device": "mppt", "field": "bat_a"}, {"device": "eload", "field": "bat_a"}],
}


def document(run_id: str, steps: list[dict[str, Any]], **limits: float) -> dict[str, Any]:
    return {
        "schema": "soclab.run/1",
        "id": run_id,
        "name": run_id,
        "cycles": [{"repeat": 1, "steps": steps}],
        "limits": {"min_v": 11.0, "max_v": 14.8, "max_a": 8.0, **limits},
        "channels": {
            quantity: {"device": "labjack", "field": f"bat_{quantity[0]}", "fallback": FALLBACKS[quantity]}
            for quantity in ("voltage", "current")
        },
        "instruments": {"load": "eload", "charger": "mppt"},
    }


DISCHARGE = {
    "description": "Discharge at 2 A for 1 hour",
    "action": "discharge",
    "current_a": 2.0,
    "duration_s": 3600,
}
CHARGE = {"description": "Charge at 3 A for 1 hour", "action": "charge", "current_a": 3.0, "duration_s": 3600}


def flowing(rig: Rig, run_id: str, step: dict[str, Any]) -> None:
    """Start a run of one step and wait until its current flows."""
    rig.start_run(document(run_id, [step]))
    assert rig.watch is not None
    rig.watch.wait(lambda s: s.load_a > 1.0 or s.charger_a > 1.0, time.monotonic())


def report(run_report: list[str], rig: Rig, case: str, seconds: float, detail: str = "") -> None:
    stored = rig.wait_nothing_lost()
    line = f"{case:<58} safe after {seconds * 1000:7.0f} ms   samples lost 0 (stored {sum(stored.values())})"
    run_report.append(line + (f"   {detail}" if detail else ""))


def test_a_limit_crossed_stops_the_run_at_once(rig: Rig, run_report: list[str]) -> None:
    assert rig.watch is not None
    rest_v = rig.watch.now().voltage_v
    min_v = rest_v - 0.15  # 4 A through the battery's 45 mOhm take 0.18 V at once
    step = {
        "description": "Discharge at 4 A for 1 hour",
        "action": "discharge",
        "current_a": 4.0,
        "duration_s": 3600,
    }
    rig.start_run(document("r-limit", [step], min_v=min_v))
    crossed = rig.watch.wait(lambda s: s.voltage_v < min_v, time.monotonic())
    seconds = rig.watch.time_to_safe(crossed.t)
    events = rig.wait_for_event("r-limit", "safe")
    limit = next(e for e in events if e["event"] == "limit")
    assert limit["reason"].startswith("voltage below min_v"), limit
    assert limit.get("value") is not None, events
    assert limit["value"] < min_v
    report(run_report, rig, "a limit crossed (min_v, judged on the reference)", seconds)


def test_the_operators_stop_through_the_broker(rig: Rig, run_report: list[str]) -> None:
    flowing(rig, "r-stop", DISCHARGE)
    assert rig.watch is not None
    sent = time.monotonic()
    result = rig.command("run", "stop", {"reason": "end of the test"})
    seconds = rig.watch.time_to_safe(sent)
    assert result["outcome"] == "done", result
    events = rig.wait_for_event("r-stop", "safe")
    stop = next(e for e in events if e["event"] == "stop")
    assert stop["reason"] == "stopped by operator/test: end of the test"
    report(run_report, rig, "the operator's stop (soclab run stop, via the broker)", seconds)


def test_the_run_controller_killed(rig: Rig, run_report: list[str]) -> None:
    flowing(rig, "r-kill-run", CHARGE)
    assert rig.watch is not None
    rig.watch.wait(lambda s: s.charger_a > 2.5, time.monotonic())
    killed = rig.kill("run")
    seconds = rig.watch.time_to_safe(killed)
    time.sleep(RESTART_S)
    rig.restart("run")  # as systemd does: it finds the run unfinished and ends it
    events = rig.wait_for_event("r-kill-run", "safe")
    stop = next(e for e in events if e["event"] == "stop")
    assert "not resumed" in stop["reason"]
    assert [e["event"] for e in events] == ["start", "step", "stop", "safe"]
    report(run_report, rig, "the run controller killed (-9) while charging", seconds)


def test_the_eload_publisher_killed_with_the_load_on(rig: Rig, run_report: list[str]) -> None:
    flowing(rig, "r-kill-eload", DISCHARGE)
    assert rig.watch is not None
    killed = rig.kill("eload")
    events = rig.wait_for_event("r-kill-eload", "safe")
    stopped = next(e for e in events if e["event"] == "stop")
    assert stopped["reason"].startswith("eload: its publisher's control socket closed"), stopped
    assert rig.watch.now().load_a > 1.0, "nothing can reach the load while its publisher is gone"
    time.sleep(max(0.0, killed + RESTART_S - time.monotonic()))
    restarted = rig.restart("eload")
    seconds = rig.watch.time_to_safe(killed)
    report(run_report, rig, "the e-load's publisher killed (-9), the load on", seconds,
           f"(restarted by systemd after {RESTART_S:g} s; off {(killed + seconds - restarted) * 1000:.0f} ms "
           "after its start)")  # fmt: skip


@pytest.mark.parametrize(("device", "step"), [("eload", DISCHARGE), ("mppt", CHARGE)])
def test_an_instrument_unplugged_mid_step(
    rig: Rig, run_report: list[str], device: str, step: dict[str, Any]
) -> None:
    run_id = f"r-unplug-{device}"
    flowing(rig, run_id, step)
    assert rig.watch is not None
    unplugged = time.monotonic()
    rig.sims[device].unplug()  # type: ignore[attr-defined]
    events = rig.wait_for_event(run_id, "safe")
    stopped_after = time.monotonic() - unplugged
    stop = next(e for e in events if e["event"] == "stop")
    assert device in stop["reason"], stop
    safe = next(e for e in events if e["event"] == "safe")
    assert f"{device} NOT safe" in safe["reason"], "an unplugged instrument cannot be reached"
    time.sleep(1.0)
    replugged = time.monotonic()
    rig.sims[device].replug()  # type: ignore[attr-defined]
    seconds = rig.watch.time_to_safe(replugged)
    report(run_report, rig, f"the {device} unplugged mid-step, plugged in 1 s later", seconds,
           f"(from the replug; the run stopped {stopped_after * 1000:.0f} ms after the unplug)")  # fmt: skip


def test_a_publisher_that_starts_and_finds_the_load_on(rig: Rig, run_report: list[str]) -> None:
    for name, args in (("remote", {"on": True}), ("set_current", {"a": 1.5}), ("input", {"on": True})):
        assert rig.command("eload", name, args)["outcome"] == "done"  # by hand, no run
    assert rig.watch is not None
    rig.watch.wait(lambda s: s.load_a > 1.0, time.monotonic())
    rig.kill("eload")
    assert rig.watch.now().load_a > 1.0
    started = rig.restart("eload")
    seconds = rig.watch.time_to_safe(started)
    report(run_report, rig, "a publisher (re)started finds the load on, no run", seconds, "(from its start)")


def test_the_pi_reboots_mid_run(rig: Rig, run_report: list[str]) -> None:
    flowing(rig, "r-reboot", DISCHARGE)
    assert rig.watch is not None
    rig.kill_all(("eload", "mppt", "labjack", "run"))  # the power goes; the instruments keep their state
    assert rig.watch.now().load_a > 1.0
    time.sleep(RESTART_S)
    booted = time.monotonic()
    for name in ("eload", "mppt", "labjack", "run"):
        rig.restart(name)
    seconds = rig.watch.time_to_safe(booted)
    events = rig.wait_for_event("r-reboot", "safe")
    assert [e["event"] for e in events] == ["start", "step", "stop", "safe"]
    assert "not resumed" in events[2]["reason"]
    report(run_report, rig, "the Pi rebooting mid-run (stopped, not resumed)", seconds, "(from the boot)")


def test_a_command_queued_through_an_outage_is_refused_when_it_arrives_and_the_load_stays_off(
    rig: Rig,
) -> None:
    """The e-load's publisher is away (killed); an operator's "input on" waits for it at the broker
    (its session is persistent) and arrives after its expiry: refused, nothing switches."""
    for name, args in (("remote", {"on": True}), ("set_current", {"a": 1.5})):
        assert rig.command("eload", name, args)["outcome"] == "done"
    rig.kill("eload")
    late = command_message((rig.site, rig.node, "eload"), "input", {"on": True}, issuer="operator/test",
                           expires_s=1.0)  # fmt: skip
    results: queue.Queue[dict[str, Any]] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: results.put(json.loads(m.payload))
    client.connect(rig.broker.host, rig.broker.port)
    client.loop_start()
    try:
        client.subscribe(f"soclab/{rig.site}/{rig.node}/eload/cmd/result", qos=1)
        client.publish(f"soclab/{rig.site}/{rig.node}/eload/cmd", json.dumps(late), qos=1).wait_for_publish(5)
        time.sleep(1.5)  # the outage outlasts the command's expiry
        rig.restart("eload")
        result = results.get(timeout=20)
    finally:
        client.disconnect()
        client.loop_stop()
    assert result["id"] == late["id"]
    assert result["outcome"] == "refused"
    assert result["reason"].startswith("expired")
    assert rig.watch is not None
    later = time.monotonic() + 1.0
    while time.monotonic() < later:
        assert rig.watch.now().safe, "the load switched on"
        time.sleep(0.05)


def test_the_run_controller_hung_its_lease_runs_out(rig: Rig, run_report: list[str]) -> None:
    """A controller that stops answering (SIGSTOP: hung, not dead) keeps its sockets open: the
    publishers switch off when its lease is not renewed within its ttl (3 s); woken again, it
    finds its leases gone and stops the run."""
    flowing(rig, "r-hung", DISCHARGE)
    assert rig.watch is not None
    stopped = time.monotonic()
    os.kill(rig.children.pid("run"), signal.SIGSTOP)
    try:
        seconds = rig.watch.time_to_safe(stopped)
    finally:
        os.kill(rig.children.pid("run"), signal.SIGCONT)
    assert "why='lease of run/r-hung expired (not renewed within 3 s)'" in rig.log("eload")
    events = rig.wait_for_event("r-hung", "safe")
    stop = next(e for e in events if e["event"] == "stop")
    # Woken, the controller stops the run on what it notices first: its lease gone, or its
    # readings too old to judge the limits on (its socket readers were stopped too).
    assert "lease of run/r-hung expired" in stop["reason"] or stop["reason"].startswith("no "), stop
    # The lease was renewed up to ttl/3 before the stop: it runs out 2 to 3 s after it.
    assert seconds > 1.9, "switched off before the lease ran out: by what?"
    report(run_report, rig, "the run controller hung (SIGSTOP), its lease (3 s) runs out", seconds)


def test_an_operator_may_only_switch_off_during_a_run_which_then_stops(rig: Rig) -> None:
    flowing(rig, "r-override", DISCHARGE)
    refused = rig.command("eload", "set_current", {"a": 5.0})
    assert refused["outcome"] == "refused"
    assert refused["reason"] == "run/r-override holds control of eload: only switching off is allowed"
    assert rig.command("eload", "input", {"on": False})["outcome"] == "done"
    events = rig.wait_for_event("r-override", "safe")
    stop = next(e for e in events if e["event"] == "stop")
    assert stop["reason"].startswith("eload: input by operator/test"), stop
