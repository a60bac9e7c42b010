"""``soclab watch``: a live monitor of a soclab broker, for people and for scripts.

    soclab watch --config lab1.toml                 # the live view (Ctrl-C ends it)
    soclab watch --config lab1.toml --device 'mppt*' --compact
    soclab watch --config lab1.toml --json | jq .   # one JSON object per sample
    soclab watch --config lab1.toml --status        # states once; exit 0 only if all is well

Broker settings as every soclab command reads them (``--config`` ``[mqtt]``, ``SOCLAB_MQTT_*``,
flags); the monitor's own in ``[watch]`` (``WatchSettings``, or ``SOCLAB_WATCH_*``), flags over
both. Exit codes: 0 fine (``--status``: every device online and fresh), 1 ``--status`` found a
device that is not, 2 bad settings, 3 the broker cannot be reached or refused the account.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TextIO

from rich.console import Console
from rich.live import Live

from soclab.tools.connection import add_mqtt_arguments, mqtt_settings
from soclab.tools.watch.intake import Intake, subscriptions
from soclab.tools.watch.model import Filters, Model, Thresholds, decode_data, duration
from soclab.tools.watch.render import COMPACT_WIDTH, condition, plain, render
from soclab.wire.mqtt import MqttSettings
from soclab.wire.settings import ConfigError, read_toml, section

EXIT_OK, EXIT_NOT_WELL, EXIT_SETTINGS, EXIT_BROKER = 0, 1, 2, 3


@dataclass(frozen=True)
class WatchSettings:
    """The ``[watch]`` table: what to show and when something is an alert."""

    site: str = "*"  # fnmatch patterns on the topic levels
    node: str = "*"
    device: str = "*"
    compact: bool = False  # one line per device (also when the terminal is narrow)
    refresh_s: float = 1.0
    silent_s: float = 10.0
    gap_grace_s: float = 30.0
    lag_s: float = 10.0
    spool_growth_s: float = 30.0
    backlog_age_s: float = 120.0
    recent_s: float = 300.0
    status_wait_s: float = 2.0  # --status: how long to listen before judging

    def thresholds(self) -> Thresholds:
        return Thresholds(**{f.name: getattr(self, f.name) for f in fields(Thresholds)})

    def filters(self) -> Filters:
        return Filters(self.site, self.node, self.device)


_FLAGS = {  # flag -> [watch] key
    "site": "site",
    "node": "node",
    "device": "device",
    "compact": "compact",
    "refresh": "refresh_s",
    "silent_after": "silent_s",
    "lag_alert": "lag_s",
    "wait": "status_wait_s",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="soclab watch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print one JSON object per sample, no screen")
    mode.add_argument("--status", action="store_true", help="print each device's state once and exit 0/1")
    view = p.add_argument_group("what to show ([watch] in --config, SOCLAB_WATCH_*)")
    view.add_argument("--site", help="site pattern (fnmatch, e.g. 'lab*'); default all")
    view.add_argument("--node", help="node pattern")
    view.add_argument("--device", help="device pattern")
    view.add_argument("--compact", action="store_true", default=None, help="one line per device")
    view.add_argument("--refresh", type=float, help="seconds between screen updates (default 1)")
    view.add_argument("--silent-after", type=float, help="a device without data this long is silent (10)")
    view.add_argument("--lag-alert", type=float, help="bridge lag in seconds that is an alert (10)")
    view.add_argument("--wait", type=float, help="--status: seconds to listen before judging (2)")
    add_mqtt_arguments(p)
    return p


def watch_settings(args: argparse.Namespace, env: dict[str, str] | None = None) -> WatchSettings:
    env = dict(os.environ if env is None else env)
    raw = read_toml(args.config) if getattr(args, "config", None) else {}
    settings: WatchSettings = section("watch", WatchSettings, raw.get("watch", {}), env, "SOCLAB_")
    flags = {
        key: getattr(args, flag) for flag, key in _FLAGS.items() if getattr(args, flag, None) is not None
    }
    settings = replace(settings, **flags)
    for name in ("refresh_s", "silent_s", "status_wait_s"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"[watch] {name} must be positive")
    return settings


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        mqtt = mqtt_settings(args)
        settings = watch_settings(args)
    except ConfigError as exc:
        print(f"soclab watch: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    if args.json:
        return _json(mqtt, settings, sys.stdout)
    if args.status:
        return _status(mqtt, settings, sys.stdout)
    return _live(mqtt, settings)


def describe(mqtt: MqttSettings) -> str:
    """Where the monitor is connected, as the header shows it."""
    scheme = "mqtts" if mqtt.tls_ca else "mqtt"
    user = f"{mqtt.username}@" if mqtt.username else ""
    return f"{scheme}://{user}{mqtt.host}:{mqtt.port}"


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def request_stop(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def _start(intake: Intake) -> bool:
    try:
        intake.start()
    except ConnectionError as exc:
        print(f"soclab watch: {exc}", file=sys.stderr)
        return False
    return True


# --- the live view -------------------------------------------------------------------------------


class Screen:
    """The model drawn every ``refresh_s``: in place on a terminal, as text snapshots on a pipe."""

    def __init__(
        self,
        model: Model,
        intake: Intake,
        title: str,
        *,
        compact: bool = False,
        extra: Callable[[], list[str]] | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.model, self.intake, self.title = model, intake, title
        self.compact = compact
        self.extra = extra or list
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream)
        self._live: Live | None = None

    def __enter__(self) -> Screen:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def draw(self, now: float | None = None) -> None:
        """Draw once; raise what stopped the intake, if anything did (a bug: never hidden)."""
        if self.intake.failure is not None:
            raise self.intake.failure
        now = time.time() if now is None else now
        compact = self.compact or (self.console.is_terminal and self.console.width < COMPACT_WIDTH)
        stats = self.intake.stats()
        with self.intake.lock:
            screen = render(
                self.model, now, title=self.title, compact=compact, intake=stats, extra=self.extra()
            )
        if self.console.is_terminal:
            if self._live is None:  # the terminal's screen is taken only once there is something to show
                self._live = Live(console=self.console, screen=True, auto_refresh=False, transient=False)
                self._live.__enter__()
            self._live.update(screen, refresh=True)
        else:
            self.stream.write(plain(screen) + "\n")
            self.stream.flush()


def _live(mqtt: MqttSettings, settings: WatchSettings) -> int:
    model = Model(settings.thresholds(), settings.filters(), started=time.time())
    intake = Intake(mqtt, _feed(model), subscriptions(site=settings.site))
    stop = _stop_on_signals()
    if not _start(intake):
        return EXIT_BROKER
    try:
        with Screen(model, intake, describe(mqtt), compact=settings.compact) as screen:
            while not stop.is_set():
                screen.draw()
                stop.wait(settings.refresh_s)
    finally:
        intake.stop()
    return EXIT_OK


def _feed(model: Model) -> Callable[[str, bytes, float, bool], None]:
    def handle(topic: str, payload: bytes, arrived: float, retained: bool) -> None:
        model.ingest(topic, payload, arrived, retained=retained)

    return handle


# --- --json --------------------------------------------------------------------------------------


class SampleLines:
    """``--json``: each sample of each valid data message as one JSON line; the rest counted."""

    def __init__(self, out: TextIO, err: TextIO, filters: Filters) -> None:
        self.out, self.err, self.filters = out, err, filters
        self.samples = 0
        self.malformed = 0
        self.closed = False

    def __call__(self, topic: str, payload: bytes, arrived: float, retained: bool) -> None:
        if self.closed:
            return
        try:
            where, message = decode_data(topic, payload)
        except Exception as exc:  # never fatal: said on stderr, counted
            self.malformed += 1
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            self.err.write(f"soclab watch: malformed message on {topic[:200]}: {str(reason)[:300]}\n")
            return
        if not self.filters.match(where.site, where.node, where.device):
            return
        kind = message["source"]["kind"]
        lines = []
        for sample in message["samples"]:
            line = {
                "site": where.site,
                "node": where.node,
                "device": where.device,
                "kind": kind,
                "seq": sample["seq"],
                "t_ns": sample["t_ns"],
                "values": sample["values"],
            }
            if sample.get("flags"):
                line["flags"] = sample["flags"]
            lines.append(json.dumps(line, separators=(",", ":")))
        try:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
        except BrokenPipeError:  # the reader (jq, head) went away: stop quietly
            self.closed = True
            return
        self.samples += len(lines)


def _json(mqtt: MqttSettings, settings: WatchSettings, out: TextIO) -> int:
    sink = SampleLines(out, sys.stderr, settings.filters())
    intake = Intake(mqtt, sink, subscriptions(("data",), site=settings.site, bridges=False))
    stop = _stop_on_signals()
    if not _start(intake):
        return EXIT_BROKER
    try:
        while not stop.is_set() and not sink.closed and intake.failure is None:
            stop.wait(0.2)
    finally:
        intake.stop()
        if sink.closed:  # keep Python from complaining about the closed pipe at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


# --- --status ------------------------------------------------------------------------------------


def _status(mqtt: MqttSettings, settings: WatchSettings, out: TextIO) -> int:
    model = Model(settings.thresholds(), settings.filters(), started=time.time())
    intake = Intake(mqtt, _feed(model), subscriptions(site=settings.site))
    if not _start(intake):
        return EXIT_BROKER
    try:
        time.sleep(settings.status_wait_s)
    finally:
        intake.stop()
    lines, problems = judge(model, time.time(), settings.silent_s)
    out.write("\n".join(lines) + "\n")
    if problems:
        out.write(f"not well: {len(problems)}\n" + "".join(f"  {p}\n" for p in problems))
        return EXIT_NOT_WELL
    out.write("all devices online and fresh\n")
    return EXIT_OK


def judge(model: Model, now: float, fresh_s: float) -> tuple[list[str], list[str]]:
    """One line per device and bridge, and the reasons why the lab is not well (empty if it is).

    A device is well when its status says online and it was heard from within ``fresh_s``
    (its status's own time stamp, or data received while listening).
    """
    lines: list[str] = []
    problems: list[str] = []
    if not model.devices:
        problems.append("no device seen (wrong broker, filters or account?)")
    width = max((len(k) for k in model.devices), default=10)
    for key in sorted(model.devices):
        device = model.devices[key]
        word, _ = condition(model, device, now)
        t_ns = device.status.get("t_ns")
        status_age = now - t_ns / 1e9 if isinstance(t_ns, int) else None
        data_age = None if device.last_data_at is None else now - device.last_data_at
        heard = [a for a in (status_age, data_age) if a is not None]
        age = min(heard) if heard else None
        detail = f"heard {duration(age)} ago" if age is not None else "never heard"
        rate = device.rate.rate(now)
        lines.append(f"{key:<{width}}  {word:<16} {detail}, {rate:.1f} samples/s")
        if device.state != "online":
            why = f" ({device.reason})" if device.reason else ""
            problems.append(f"{key}: {device.state}{why}")
        elif age is None or age > fresh_s:
            problems.append(f"{key}: online, but nothing heard for {duration(age or 0)} (over {fresh_s:g} s)")
    for bridge_id in sorted(model.bridges):
        lines.append(f"bridge {bridge_id}: {model.bridges[bridge_id].state}")
    for bad in model.malformed:
        lines.append(f"malformed on {bad.topic}: {bad.reason}")
    return lines, problems
