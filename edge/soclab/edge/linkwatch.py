"""``soclab-linkwatch``: bring a hung Wi-Fi link back, one check per systemd timer tick.

A Pi's Wi-Fi can hang without ever coming back by itself (power saving, the driver): the
publishers then spool for ever. Each run probes the broker with a TCP connection; after
``--failures`` failed runs in a row it takes the interface down and up again, and after
``--reboot-after`` such bounces without success (0 = never) it reboots the Pi. The count is kept
in a small state file between runs (under /run: a boot starts afresh). A broker that is down while
the network is fine costs a bounce now and then, never data: the spools hold the samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from soclab.wire import logs

log = logging.getLogger("soclab.edge.linkwatch")


@dataclasses.dataclass
class State:
    """What the runs before this one saw, since the link last worked."""

    failures: int = 0  # failed runs in a row
    bounces: int = 0  # interface bounces since the link last worked
    down_since: float | None = None  # wall-clock time of the first failed run

    @classmethod
    def load(cls, path: Path) -> State:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return cls()
        except (ValueError, TypeError) as exc:  # a torn or foreign file: start afresh, say so
            log.warning("event=state_unreadable path=%s error=%r", path, str(exc))
            return cls()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self)))
        tmp.replace(path)


def reachable(host: str, port: int, timeout_s: float) -> str | None:
    """None when a TCP connection to host:port opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return str(exc) or type(exc).__name__


@dataclasses.dataclass(frozen=True)
class Policy:
    failures: int = 3
    reboot_after: int = 0


def decide(state: State, error: str | None, policy: Policy, now: float) -> tuple[State, str]:
    """The next state and the action: "ok", "wait", "bounce" or "reboot"."""
    if error is None:
        return State(), "ok"
    failures = state.failures + 1
    down_since = state.down_since if state.down_since is not None else now
    if failures < policy.failures:
        return State(failures, state.bounces, down_since), "wait"
    if policy.reboot_after and state.bounces >= policy.reboot_after:
        return State(0, 0, down_since), "reboot"
    return State(0, state.bounces + 1, down_since), "bounce"


def bounce(interface: str) -> None:
    for updown in ("down", "up"):
        subprocess.run(["ip", "link", "set", "dev", interface, updown], check=True)


def reboot() -> None:
    subprocess.run(["systemctl", "reboot"], check=True)


def run_once(
    args: argparse.Namespace,
    do_bounce: Callable[[str], None] = bounce,
    do_reboot: Callable[[], None] = reboot,
) -> str:
    state_path = Path(args.state)
    state = State.load(state_path)
    error = reachable(args.host, args.port, args.timeout)
    now = time.time()
    new_state, action = decide(state, error, Policy(args.failures, args.reboot_after), now)
    new_state.save(state_path)
    down_s = now - state.down_since if state.down_since is not None else 0.0
    if action == "ok":
        if state.failures or state.bounces:
            log.info("event=link_back down_s=%.0f bounces=%d", down_s, state.bounces)
        return action
    log.warning(
        "event=link_down target=%s:%d error=%r failures=%d bounces=%d action=%s",
        args.host, args.port, error, state.failures + 1, state.bounces, action,
    )  # fmt: skip
    if args.dry_run or action == "wait":
        return action
    try:
        if action == "bounce":
            do_bounce(args.interface)
        else:
            do_reboot()
    except (OSError, subprocess.CalledProcessError) as exc:
        log.error("event=action_failed action=%s interface=%s error=%r", action, args.interface, str(exc))
    return action


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="soclab-linkwatch", description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="the broker (what the publishers reach)")
    parser.add_argument("--port", type=int, default=8883)
    parser.add_argument("--interface", default="wlan0", help="the interface to bounce")
    parser.add_argument("--failures", type=int, default=3, help="failed runs in a row before a bounce")
    parser.add_argument("--reboot-after", type=int, default=0, help="bounces before a reboot; 0 = never")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for the TCP connection")
    parser.add_argument("--state", default="/run/soclab-linkwatch/state.json")
    parser.add_argument("--dry-run", action="store_true", help="log the action, do not take it")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    args = parser.parse_args(argv)
    if args.failures < 1 or args.reboot_after < 0 or not 0 < args.port < 65536:
        parser.error("--failures must be >= 1, --reboot-after >= 0, --port within 1-65535")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure("INFO", args.log_format)
    run_once(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
