"""Helpers of the Ansible tests: a private copy of ansible/, a vault of the test's own, playbook runs.

- ``Project``: ansible/ copied to a temporary folder without the lab's own (git-ignored)
  inventory and vault, so that a developer's real secrets are never read; the test writes its
  inventory there and a vault encrypted with a password made for the run, as the README says.
- ``Project.playbook()``: ``ansible-playbook`` from the project's virtual environment; the result
  has the output and the PLAY RECAP per host.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
MAKE_CERTS = REPO / "compose" / "mosquitto" / "make-certs.sh"
PLAYBOOKS = ("edge.yml", "server.yml", "site.yml")
# What ansible/.gitignore keeps out of the repository: never copied into a test's project.
PRIVATE = (
    "inventory.yml",
    "vault.yml",
    "host_vars",
    "collections",
    ".ansible",
    "*.vault-pass",
    ".vault-pass*",
)
_RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)",
    re.MULTILINE,
)


def tool(name: str) -> str:
    """A command of the project's virtual environment (ansible-playbook, ansible-lint, yamllint)."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the development environment installs it (requirements/dev.txt)")
    return str(path)


def ansible_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PY_COLORS="0",
    )
    for variable in ("ANSIBLE_CONFIG", "ANSIBLE_INVENTORY", "ANSIBLE_VAULT_PASSWORD_FILE"):
        env.pop(variable, None)
    return env


@dataclass
class Run:
    argv: list[str]
    returncode: int
    output: str
    seconds: float
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    def check(self) -> Run:
        assert self.returncode == 0, (
            f"{' '.join(self.argv)} failed ({self.returncode}):\n{self.output[-12000:]}"
        )
        return self

    def changed_tasks(self) -> list[str]:
        """The names of the tasks that reported a change (for a readable idempotence failure)."""
        changed, task = [], ""
        for line in self.output.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                task = line.split("[", 1)[1].rsplit("]", 1)[0]
            elif line.startswith("changed:"):
                changed.append(f"{task}: {line}")
        return changed


@dataclass
class Project:
    """A copy of ansible/ of the test's own."""

    path: Path
    vault_password_file: Path
    env: dict[str, str]

    @classmethod
    def create(cls, folder: Path) -> Project:
        path = folder / "ansible"
        shutil.copytree(ANSIBLE_DIR, path, ignore=shutil.ignore_patterns(*PRIVATE))
        password_file = folder / "test.vault-pass"
        password_file.write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
        password_file.chmod(0o600)
        home = folder / "ansible-home"
        (home / "tmp").mkdir(parents=True)
        return cls(path, password_file, ansible_env(home))

    def write_inventory(self, inventory: dict[str, Any]) -> Path:
        path = self.path / "inventory.yml"
        path.write_text(yaml.safe_dump(inventory, sort_keys=False), encoding="utf-8")
        return path

    def write_vault(self, secrets_: dict[str, Any]) -> Path:
        """group_vars/all/vault.yml, encrypted with ansible-vault as the README says."""
        path = self.path / "group_vars" / "all" / "vault.yml"
        path.write_text(yaml.safe_dump(secrets_, sort_keys=False), encoding="utf-8")
        self.run(
            tool("ansible-vault"),
            "encrypt",
            "--vault-password-file",
            str(self.vault_password_file),
            str(path),
        )
        assert path.read_text(encoding="utf-8").startswith("$ANSIBLE_VAULT;"), "the vault is not encrypted"
        return path

    def run(self, *argv: str, timeout: float = 900) -> Run:
        start = time.monotonic()
        result = subprocess.run(
            list(argv),
            cwd=self.path,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        seconds = time.monotonic() - start
        recap = {
            m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
            for m in _RECAP.finditer(result.stdout)
        }
        return Run(list(argv), result.returncode, result.stdout, seconds, recap)

    def playbook(self, name: str, *args: str, timeout: float = 900) -> Run:
        return self.run(
            tool("ansible-playbook"),
            name,
            "--vault-password-file",
            str(self.vault_password_file),
            *args,
            timeout=timeout,
        )

    def converge_twice(self, name: str, label: str) -> tuple[Run, Run, Run]:
        """A check-mode run on the fresh target, then two real runs; each must succeed."""
        check, first, second = (
            self._timed(name, label, what, *args)
            for what, args in (
                ("check mode on the fresh root", ["--check"]),
                ("first run", []),
                ("second run", []),
            )
        )
        return check, first, second

    def _timed(self, name: str, label: str, what: str, *args: str) -> Run:
        run = self.playbook(name, *args)
        print(f"\n{label}, {what}: {run.seconds:.1f} s")
        return run.check()


def snapshot_sources(dest: Path) -> Path:
    """schemas/, edge/ and the constraints as they are now: edits during a run cannot change them."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("schemas", "edge"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    (dest / "requirements").mkdir(parents=True)
    shutil.copy2(REPO / "requirements" / "constraints.txt", dest / "requirements" / "constraints.txt")
    return dest
