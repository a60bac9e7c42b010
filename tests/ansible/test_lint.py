"""ansible/ is clean for yamllint and for ansible-lint's strictest shipped profile (production)."""

from __future__ import annotations

import subprocess

from ansiblekit import ANSIBLE_DIR, ansible_env, tool


def test_yamllint(tmp_path) -> None:
    result = subprocess.run(
        [tool("yamllint"), "--strict", "--format", "parsable", "."],
        cwd=ANSIBLE_DIR,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile(tmp_path) -> None:
    # --offline: the collections bundled with the `ansible` package, never Galaxy.
    result = subprocess.run(
        [tool("ansible-lint"), "--offline", "--profile", "production", "--strict", "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-8000:]
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr
