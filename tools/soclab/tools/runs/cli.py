"""``soclab run``: start a run on a node, follow it, stop it, or send one instrument a command.

    soclab run check two-cycles.toml                         # compile only: what the Pi would run
    soclab run start two-cycles.toml --node lab1/pi-01       # waits for the controller's answer
    soclab run status --node lab1/pi-01 [--follow] [--json]  # step, elapsed, end condition, value
    soclab run stop --node lab1/pi-01 --reason "end of the day"
    soclab run cmd lab1/pi-01/eload input off                # one command, its one result
    soclab run cmd lab1/pi-01/eload set_current 2.5
    soclab run cmd lab1/pi-01/mppt charge_limits current_max_a=3 voltage_v=14.2
    soclab run cmd lab1/pi-01/mppt conf BatChgMax_A=4 Topping_V=14.4   # the firmware's names

Broker settings as every soclab command reads them (``--config`` ``[mqtt]``, ``SOCLAB_MQTT_*``,
flags): an operator account (``operator/<name>``) may command. Every command carries an id, its
issuer (the account), its issue time and an expiry (``--expires``, default 30 s): one that
reaches the Pi later (queued during an outage) is refused there, never executed. The command
waits for the one result (``--wait``) and prints it.

Exit codes: 0 done (or the status shown), 1 refused or failed, 2 bad arguments, settings or run
file, 3 the broker cannot be reached or refused the account, 4 no answer within ``--wait``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import queue
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from soclab.tools.connection import add_mqtt_arguments, connect, mqtt_settings
from soclab.tools.runs.runfile import RunFileError, load
from soclab.wire import (
    CMD_RESULT_SCHEMA,
    CMD_SCHEMA,
    RUN_STATUS_SCHEMA,
    InvalidMessage,
    Topic,
    TopicError,
    decode,
    validate,
)
from soclab.wire.mqtt import MqttSettings
from soclab.wire.settings import ConfigError

EXIT_DONE, EXIT_REFUSED, EXIT_USAGE, EXIT_BROKER, EXIT_NO_ANSWER = 0, 1, 2, 3, 4
_SWITCHES = ("remote", "input", "charging", "load_output")
_SETPOINTS = {"set_current": "a", "set_voltage": "v", "set_power": "w"}


class UsageError(ValueError):
    """Arguments that do not make a command; the message says why."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="soclab run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="compile a run file and print the run document (no broker)")
    check.add_argument("file", type=Path)
    start = sub.add_parser("start", help="start a run from a run file on a node")
    start.add_argument("file", type=Path)
    status = sub.add_parser("status", help="the run of a node: step, elapsed, end condition, live value")
    status.add_argument("--follow", action="store_true", help="print every update until Ctrl-C")
    status.add_argument("--json", action="store_true", help="the status messages as JSON lines")
    stop = sub.add_parser("stop", help="stop the run of a node (everything goes to the safe state)")
    stop.add_argument("--reason", default="", help="why (stored with the run's events)")
    cmd = sub.add_parser("cmd", help="one command to one instrument: DEVICE COMMAND [VALUE | key=value ...]")
    cmd.add_argument("device", help="site/node/device, e.g. lab1/pi-01/eload")
    cmd.add_argument("command", help="safe, remote, input, set_current, set_voltage, set_power, "
                     "charging, load_output, charge_limits, conf")  # fmt: skip
    cmd.add_argument("values", nargs="*", help="on|off, a number, or key=value pairs")
    for action in (start, status, stop):
        action.add_argument("--node", required=True, help="site/node, e.g. lab1/pi-01")
    for action in (start, stop, cmd):
        action.add_argument("--expires", type=float, default=30.0, help="seconds the command stays valid")
        action.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the result")
    for action in (start, status, stop, cmd):
        add_mqtt_arguments(action)
    start.add_argument("--id", help="the run's id (default: r-<date>-<time>-<random>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.action == "check":
            print(json.dumps(load(args.file), indent=2))
            return EXIT_DONE
        settings = mqtt_settings(args)
        if args.action == "status":
            return show_status(settings, _node(args.node), follow=args.follow, as_json=args.json)
        target, name, arguments = _command(args)
        message = command_message(target, name, arguments, issuer=issuer(settings), expires_s=args.expires)
    except (RunFileError, ConfigError, UsageError, InvalidMessage) as exc:
        print(f"soclab run: {getattr(exc, 'reason', None) or exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = send(settings, message, wait_s=args.wait)
    except ConnectionError as exc:
        print(f"soclab run: {exc}", file=sys.stderr)
        return EXIT_BROKER
    if result is None:
        print(f"soclab run: no result for command {message['id']} within {args.wait:g} s "
              f"(is {'/'.join(target)} running and hosting its control?)", file=sys.stderr)  # fmt: skip
        return EXIT_NO_ANSWER
    print(f"{result['outcome']}: {result['command']} on {'/'.join(target)} (command {result['id']})"
          + (f": {result['reason']}" if result["reason"] else ""))  # fmt: skip
    return EXIT_DONE if result["outcome"] == "done" else EXIT_REFUSED


def _command(args: argparse.Namespace) -> tuple[tuple[str, str, str], str, dict[str, Any]]:
    if args.action == "start":
        document = load(args.file, run_id=args.id)
        return (*_node(args.node), "run"), "start", {"run": document}
    if args.action == "stop":
        return (*_node(args.node), "run"), "stop", {"reason": args.reason} if args.reason else {}
    parts = args.device.split("/")
    if len(parts) != 3:
        raise UsageError(f"device {args.device!r}: write site/node/device, e.g. lab1/pi-01/eload")
    return (parts[0], parts[1], parts[2]), args.command, arguments(args.command, args.values)


def _node(text: str) -> tuple[str, str]:
    parts = text.split("/")
    if len(parts) != 2:
        raise UsageError(f"node {text!r}: write site/node, e.g. lab1/pi-01")
    return parts[0], parts[1]


def arguments(command: str, values: list[str]) -> dict[str, Any]:
    """A command's ``args`` from the words after it (``on``, ``2.5``, ``key=value``)."""
    if command in _SWITCHES and len(values) == 1 and "=" not in values[0]:
        return {"on": _switch(values[0])}
    if command in _SETPOINTS and len(values) == 1 and "=" not in values[0]:
        return {_SETPOINTS[command]: _number(values[0])}
    pairs: dict[str, Any] = {}
    for word in values:
        key, sep, text = word.partition("=")
        if not sep or not key:
            raise UsageError(f"{word!r}: write key=value")
        pairs[key] = _value(text)
    return {"values": pairs} if command == "conf" else pairs


def _switch(text: str) -> bool:
    value = _value(text)
    if not isinstance(value, bool):
        raise UsageError(f"{text!r}: write on or off")
    return value


def _number(text: str) -> float:
    value = _value(text)
    if isinstance(value, bool) or not isinstance(value, float):
        raise UsageError(f"{text!r} is not a number")
    return value


def _value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("on", "true", "yes"):
        return True
    if lowered in ("off", "false", "no"):
        return False
    try:
        return float(text)
    except ValueError:
        return text


def issuer(settings: MqttSettings) -> str:
    """Who issues: the broker account (operator/alice), else operator/<local user>."""
    name = settings.username or f"operator/{getpass.getuser()}"
    return re.sub(r"[^a-z0-9_./-]", "-", name.lower()).lstrip("-./_")[:128] or "operator"


def command_message(
    target: tuple[str, str, str], name: str, args: dict[str, Any], *, issuer: str, expires_s: float
) -> dict[str, Any]:
    """A valid ``soclab.cmd/1`` (InvalidMessage naming what is wrong otherwise)."""
    try:
        Topic(*target, "cmd")
    except TopicError as exc:
        raise UsageError(str(exc)) from None
    now = time.time_ns()
    message: dict[str, Any] = {
        "schema": CMD_SCHEMA,
        "id": f"c-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}",
        "issuer": issuer,
        "issued_ns": now,
        "expires_ns": now + int(expires_s * 1e9),
        "target": {"site": target[0], "node": target[1], "device": target[2]},
        "command": name,
    }
    if args or name not in ("safe", "stop"):
        message["args"] = args
    return validate(message, CMD_SCHEMA)


def send(settings: MqttSettings, message: dict[str, Any], *, wait_s: float) -> dict[str, Any] | None:
    """Publish the command, return its result (None if none came within ``wait_s``)."""
    target = message["target"]
    topic = Topic(target["site"], target["node"], target["device"], "cmd")
    results: queue.Queue[dict[str, Any]] = queue.Queue()
    subscribed: queue.Queue[Any] = queue.Queue()

    def setup(client: mqtt.Client) -> None:
        client.on_subscribe = lambda c, u, mid, reasons, props: subscribed.put(reasons)
        client.on_message = lambda c, u, m: _take_result(bytes(m.payload), message["id"], results)

    client = connect(settings, "run", setup=setup)
    try:
        client.subscribe(str(topic.with_kind("cmd/result")), qos=1)
        reasons = subscribed.get(timeout=10)
        if reasons[0].is_failure:
            raise ConnectionError(f"the broker refused reading {topic.with_kind('cmd/result')}: {reasons[0]}")
        client.publish(str(topic), json.dumps(message).encode(), qos=1).wait_for_publish(timeout=10)
        try:
            return results.get(timeout=wait_s)
        except queue.Empty:
            return None
    finally:
        client.disconnect()
        client.loop_stop()


def _take_result(payload: bytes, wanted: str, results: queue.Queue[dict[str, Any]]) -> None:
    try:
        result = decode(payload, CMD_RESULT_SCHEMA)
    except InvalidMessage:
        return
    if result["id"] == wanted:
        results.put(result)


# --- status ----------------------------------------------------------------------------------------


def show_status(settings: MqttSettings, node: tuple[str, str], *, follow: bool, as_json: bool) -> int:
    topic = str(Topic(*node, "run", "status"))
    updates: queue.Queue[dict[str, Any]] = queue.Queue()

    def setup(client: mqtt.Client) -> None:
        client.on_message = lambda c, u, m: _take_status(bytes(m.payload), updates)

    try:
        client = connect(settings, "run-status", setup=setup)
    except ConnectionError as exc:
        print(f"soclab run: {exc}", file=sys.stderr)
        return EXIT_BROKER
    try:
        client.subscribe(topic, qos=1)
        while True:
            try:
                status = updates.get(timeout=5.0 if not follow else None)
            except queue.Empty:
                print(
                    f"soclab run: no status on {topic} (no run controller has ever run there?)",
                    file=sys.stderr,
                )
                return EXIT_NO_ANSWER
            print(json.dumps(status) if as_json else describe(status), flush=True)
            if not follow:
                return EXIT_DONE
    except KeyboardInterrupt:
        return EXIT_DONE
    finally:
        client.disconnect()
        client.loop_stop()


def _take_status(payload: bytes, updates: queue.Queue[dict[str, Any]]) -> None:
    try:
        updates.put(decode(payload, RUN_STATUS_SCHEMA))
    except InvalidMessage:
        return


def describe(status: dict[str, Any]) -> str:
    """The run status for people: where the run is, what it waits for, the value it watches."""
    source = status["source"]
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["t_ns"] / 1e9))
    lines = [f"{source['site']}/{source['node']}: {status['state']} (at {at})"]
    run = status.get("run")
    if run is not None:
        lines.append(f"  run {run['id']}: {run['name']}")
        where = f"cycle {run['cycle']}/{run.get('cycles', '?')}, step {run['step']}/{run.get('steps', '?')}"
        lines.append(f"  {where}: {run['description']}")
        lines.append(f"  elapsed {_hms(run['elapsed_s'])}, in this step {_hms(run['step_elapsed_s'])}; "
                     f"until {run.get('until', '?')}")  # fmt: skip
        watching = run.get("watching")
        if watching:
            value = "no reading" if watching.get("value") is None else f"{watching['value']:g}"
            fallback = " (fallback: the reference is missing)" if watching.get("fallback") else ""
            lines.append(f"  {watching['quantity']} on {watching['channel']}: {value}{fallback}")
    event = status.get("last_event")
    if event is not None:
        where = f" at step {event['step']}" if "step" in event else ""
        lines.append(f"  last event: {event['event']}{where} of run {event['run']}: {event['reason']}")
    return "\n".join(lines)


def _hms(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


if __name__ == "__main__":
    sys.exit(main())
