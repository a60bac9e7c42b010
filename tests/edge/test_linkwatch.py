"""The Wi-Fi watchdog: its policy, its probe against real loopback sockets, its command."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from soclab.edge import linkwatch
from soclab.edge.linkwatch import Policy, State, decide


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]  # nobody listens once it is closed: refused


def test_policy_waits_then_bounces_and_reboots_only_when_asked() -> None:
    policy = Policy(failures=3, reboot_after=2)
    state, actions = State(), []
    for t in range(12):
        state, action = decide(state, "refused", policy, now=100.0 + t)
        actions.append(action)
    assert actions == ["wait", "wait", "bounce"] * 2 + ["wait", "wait", "reboot"] + ["wait", "wait", "bounce"]
    assert state.down_since == 100.0  # the first failure, kept across bounces and the reboot
    assert decide(state, None, policy, now=200.0) == (State(), "ok")


def test_policy_never_reboots_by_default() -> None:
    state, actions = State(), set()
    for t in range(30):
        state, action = decide(state, "timed out", Policy(failures=1), now=float(t))
        actions.add(action)
    assert actions == {"bounce"}
    assert state.bounces == 30


def test_probe_against_real_sockets(listening: int, closed_port: int) -> None:
    assert linkwatch.reachable("127.0.0.1", listening, timeout_s=2.0) is None
    assert linkwatch.reachable("127.0.0.1", closed_port, timeout_s=2.0)


def args(tmp_path: Path, port: int, *extra: str) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port), "--interface", "wlan-test",
            "--failures", "2", "--timeout", "2", "--state", str(tmp_path / "state.json"), *extra]  # fmt: skip


def run_command(argv: list[str]) -> list[dict[str, str]]:
    """The command's log lines, each as its key=value pairs."""
    result = subprocess.run(
        [sys.executable, "-m", "soclab.edge.linkwatch", *argv],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    messages = [json.loads(line)["msg"] for line in result.stderr.splitlines()]
    return [dict(pair.split("=", 1) for pair in shlex.split(message)) for message in messages]


def test_command_logs_the_outage_the_action_and_the_recovery(tmp_path, closed_port) -> None:
    state = tmp_path / "state.json"
    [first] = run_command(args(tmp_path, closed_port, "--dry-run"))
    assert (first["event"], first["action"], first["failures"]) == ("link_down", "wait", "1")
    [second] = run_command(args(tmp_path, closed_port, "--dry-run"))
    assert (second["event"], second["action"], second["failures"]) == ("link_down", "bounce", "2")
    assert json.loads(state.read_text())["bounces"] == 1
    with socket.create_server(("127.0.0.1", closed_port)):
        [back] = run_command(args(tmp_path, closed_port, "--dry-run"))
    assert (back["event"], back["bounces"]) == ("link_back", "1")
    assert json.loads(state.read_text()) == {"failures": 0, "bounces": 0, "down_since": None}
    [again] = run_command(args(tmp_path, closed_port, "--dry-run"))
    assert (again["action"], again["bounces"]) == ("wait", "0")


def test_actions_are_taken_and_their_failure_is_logged(tmp_path, closed_port, caplog) -> None:
    taken: list[str] = []

    def failing_reboot() -> None:
        raise subprocess.CalledProcessError(1, ["systemctl", "reboot"])

    parsed = linkwatch.parse_args(args(tmp_path, closed_port, "--reboot-after", "1"))
    results = [linkwatch.run_once(parsed, taken.append, failing_reboot) for _ in range(4)]
    assert results == ["wait", "bounce", "wait", "reboot"]
    assert taken == ["wlan-test"]
    assert "event=action_failed action=reboot" in caplog.text


def test_unreadable_state_starts_afresh_and_says_so(tmp_path, listening, caplog) -> None:
    (tmp_path / "state.json").write_text("{torn")
    parsed = linkwatch.parse_args(args(tmp_path, listening))
    assert linkwatch.run_once(parsed) == "ok"
    assert "event=state_unreadable" in caplog.text


@pytest.mark.parametrize("bad", [["--failures", "0"], ["--reboot-after", "-1"], ["--port", "0"]])
def test_bad_arguments_are_refused(tmp_path, bad) -> None:
    with pytest.raises(SystemExit) as refused:
        linkwatch.parse_args(["--host", "broker", "--state", str(tmp_path / "s"), *bad])
    assert refused.value.code == 2
