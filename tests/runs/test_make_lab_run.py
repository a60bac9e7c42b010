"""``make lab ARGS="--run <run file>"``: the whole simulated lab with a run on it, its view showing
the run; Ctrl-C (here ``--duration``) stops the run safely and leaves nothing behind. A run file
that cannot run is refused before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rig import LAB

pytestmark = pytest.mark.slow


def lab(var: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "soclab.dev.lab", "--var", str(var), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_make_lab_starts_the_example_run_and_its_view_follows_it(tmp_path: Path) -> None:
    done = lab(tmp_path / "var", "--run", str(LAB / "two-cycles.toml"), "--duration", "15")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "started (Two cycles on the simulated lab" in out, out[-3000:]
    assert "cycle 1 step 1: Discharge at" in out, out[-3000:]
    assert "alerts: none" in out
    assert out.rstrip().endswith(f"nothing left running. Data and logs are in {tmp_path / 'var'}")
    controller = (tmp_path / "var" / "logs" / "run.log").read_text()
    assert "event=run_stop" in controller, controller[-2000:]
    assert "the run controller was stopped" in controller
    assert "eload safe; mppt safe" in controller


def test_a_run_file_that_cannot_run_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    steps = 'steps = ["Charge at 20 W for 1 hour"]'
    bad.write_text(f"[limits]\nmin_v = 11.5\nmax_v = 14.7\nmax_a = 6.0\n[[cycle]]\n{steps}\n")
    done = lab(tmp_path / "var", "--run", str(bad), timeout=30)
    assert done.returncode == 2
    assert "the run file cannot be run (nothing was started)" in done.stderr
    assert "charges at a current (A, C-rate), not at a power" in done.stderr, done.stderr
    assert not (tmp_path / "var").exists()
