"""`make lab`'s program: its settings file, and a whole run stopped with Ctrl-C (SIGINT); its view
(``soclab watch``'s monitor) shows every instrument's stored points and no alert."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soclab.dev.lab.cli import LabSettings

EXAMPLE = Path(__file__).parents[1] / "dev" / "soclab" / "dev" / "lab" / "lab.example.toml"


def test_the_example_settings_load(tmp_path):
    settings = LabSettings.load(EXAMPLE)
    assert settings.instruments["mppt"] == {"port": "/dev/soclab-mppt"}
    assert settings.simulated() == ["eload", "labjack"]
    bad = tmp_path / "lab.toml"
    bad.write_text("[instruments.toaster]\n")
    with pytest.raises(ValueError, match="unknown instrument 'toaster'"):
        LabSettings.load(bad)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes whose command line or environment mentions ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline or text.encode() in environ:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.mark.slow
def test_the_lab_runs_shows_stored_data_and_ctrl_c_leaves_nothing_behind(tmp_path):
    var = tmp_path / "var"
    lab = subprocess.Popen(
        [sys.executable, "-m", "soclab.dev.lab", "--var", str(var)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    screen: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = lab.stdout.readline()
            assert line or lab.poll() is None, "the lab ended early:\n" + "".join(screen[-40:])
            screen.append(line)
            if line.startswith("stored in InfluxDB:") and all(
                f"{m}=" in line for m in ("mppt", "eload", "labjack")
            ):
                break
        else:
            pytest.fail("no points of all three instruments stored within 90 s:\n" + "".join(screen[-40:]))
        assert processes_mentioning(str(var)), "the lab's processes should be running"
        lab.send_signal(signal.SIGINT)
        rest, _ = lab.communicate(timeout=60)
    finally:
        if lab.poll() is None:
            lab.kill()
    assert lab.returncode == 0, rest
    assert "nothing left running" in rest
    shown = "".join(screen)
    assert "alerts: none" in shown, shown[-3000:]  # the view is soclab watch's: no alert at any time
    assert "alerts: " not in shown.replace("alerts: none", ""), shown[-3000:]
    deadline = time.monotonic() + 10
    while processes_mentioning(str(var)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(str(var)) == []
