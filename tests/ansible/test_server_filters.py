"""The soclab_server role's filters (filter_plugins/soclab_server.py), on their own; the real
broker reads what soclab_mosquitto_passwd writes in test_server_role.py."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest
from ansiblekit import ANSIBLE_DIR

spec = importlib.util.spec_from_file_location(
    "soclab_server_filters", ANSIBLE_DIR / "roles/soclab_server/filter_plugins/soclab_server.py"
)
assert spec is not None
assert spec.loader is not None
filters = importlib.util.module_from_spec(spec)
spec.loader.exec_module(filters)


def test_passwd_lines_are_mosquitto_passwd_hashes() -> None:
    text = filters.soclab_mosquitto_passwd({"lab1/pi-01/mppt": "secret-1", "soclab-bridge": "secret-2"})
    lines = text.splitlines()
    assert [line.split(":")[0] for line in lines] == ["lab1/pi-01/mppt", "soclab-bridge"]
    for line, password in zip(lines, ("secret-1", "secret-2"), strict=True):
        user_hash = line.split(":", 1)[1]
        assert user_hash.startswith("$7$101$")
        assert filters._verifies(user_hash, password)
        assert not filters._verifies(user_hash, password + "x")


def test_mosquitto_passwd_reads_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    """A line made by Debian's mosquitto_passwd is kept as it is: the formats are the same."""
    tool = Path("/usr/bin/mosquitto_passwd")
    if not tool.exists():
        pytest.skip("mosquitto_passwd is not installed")
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    subprocess.run([str(tool), "-b", str(passwd), "lab1/pi-01/mppt", "secret-1"], check=True, timeout=30)
    made = passwd.read_text()
    assert filters.soclab_mosquitto_passwd({"lab1/pi-01/mppt": "secret-1"}, made) == made


def test_passwd_changes_only_for_new_or_changed_accounts() -> None:
    first = filters.soclab_mosquitto_passwd({"a": "pw-a", "b": "pw-b"})
    assert filters.soclab_mosquitto_passwd({"a": "pw-a", "b": "pw-b"}, first) == first
    second = filters.soclab_mosquitto_passwd({"a": "pw-a", "b": "pw-b2", "c": "pw-c"}, first)
    a1, b1 = first.splitlines()
    a2, b2, c2 = second.splitlines()
    assert a2 == a1
    assert b2 != b1
    assert filters._verifies(b2.split(":", 1)[1], "pw-b2")
    assert c2.startswith("c:$7$")
    assert filters.soclab_mosquitto_passwd({"a": "pw-a"}, second) == a1 + "\n"


def test_passwd_refuses_empty_passwords_and_colons() -> None:
    with pytest.raises(ValueError, match="password"):
        filters.soclab_mosquitto_passwd({"a": ""})
    with pytest.raises(ValueError, match="':'"):
        filters.soclab_mosquitto_passwd({"a:b": "pw"})


def test_changed_services() -> None:
    restart = {"mosquitto": ["compose/mosquitto/config/"], "grafana": ["cloud/soclab/cloud/grafana/"]}
    assert filters.soclab_changed_services(["compose/mosquitto/config/acl"], restart) == ["mosquitto"]
    assert filters.soclab_changed_services(["compose/compose.yaml", "schemas/x.json"], restart) == []


def test_tree_and_diff(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for path, text in {
        "compose/compose.yaml": "a",
        "compose/.env": "private",
        "compose/pki/ca.crt": "private",
        "compose/run.sh": "#!/bin/sh",
        "cloud/x/__pycache__/y.pyc": "cache",
        "cloud/x/y.py": "code",
    }.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(text)
    (src / "compose/run.sh").chmod(0o755)
    exclude = [r"(^|/)__pycache__(/|$)", r"^compose/(\.env|secrets/|pki/)"]
    tree = filters.soclab_deploy_tree(str(src), ["compose", "cloud"], exclude)
    assert [(e["path"], e["mode"]) for e in tree] == [
        ("cloud/x/y.py", "0644"),
        ("compose/compose.yaml", "0644"),
        ("compose/run.sh", "0755"),
    ]
    sha1 = {e["path"]: e["sha1"] for e in tree}
    found = [
        {"path": "/opt/s/compose/compose.yaml", "checksum": sha1["compose/compose.yaml"], "mode": "0644"},
        {"path": "/opt/s/compose/run.sh", "checksum": sha1["compose/run.sh"], "mode": "0644"},
        {"path": "/opt/s/compose/old.yaml", "checksum": "0", "mode": "0644"},
        {"path": "/opt/s/compose/.env", "checksum": "0", "mode": "0600"},
    ]
    diff = filters.soclab_tree_diff(tree, found, "/opt/s", exclude)
    assert diff == {"different": ["cloud/x/y.py", "compose/run.sh"], "stale": ["compose/old.yaml"]}
