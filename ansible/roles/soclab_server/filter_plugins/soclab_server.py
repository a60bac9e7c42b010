"""Filters of the soclab_server role.

``soclab_mosquitto_passwd``: Mosquitto 2's password file (what ``mosquitto_passwd`` writes:
``user:$7$<rounds>$<salt>$<PBKDF2-SHA512 hash>``) for a mapping user -> password. A user whose
line in the current file still verifies with the same password keeps it, so the file changes only
when an account is added, removed or given a new password; new lines get a fresh random salt.

``soclab_changed_services``: the compose services whose files are among the changed paths.

``soclab_deploy_tree`` and ``soclab_tree_diff``: the files of the checkout to deploy, and which
of them differ from what is on the host (so only those are unpacked, and handlers know them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import stat

SALT_BYTES = 12
HASH_BYTES = 64


def _hash(password: str, salt: bytes, rounds: int) -> str:
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, rounds, HASH_BYTES)
    return f"$7${rounds}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _verifies(line_hash: str, password: str) -> bool:
    parts = line_hash.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        rounds, salt = int(parts[2]), base64.b64decode(parts[3], validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(_hash(password, salt, rounds), line_hash)


def soclab_mosquitto_passwd(accounts: dict[str, str], current: str = "", rounds: int = 101) -> str:
    """The file's text for ``accounts`` (user -> password), sorted by user."""
    existing = {}
    for line in (current or "").splitlines():
        user, sep, line_hash = line.partition(":")
        if sep:
            existing[user] = line_hash
    lines = []
    for user in sorted(accounts):
        password = str(accounts[user])
        if ":" in user or not user or not password:
            raise ValueError(f"mosquitto account {user!r}: a user name without ':' and a password are needed")
        old = existing.get(user, "")
        if old and old.split("$")[2:3] == [str(rounds)] and _verifies(old, password):
            lines.append(f"{user}:{old}")
        else:
            lines.append(f"{user}:{_hash(password, os.urandom(SALT_BYTES), rounds)}")
    return "".join(line + "\n" for line in lines)


def soclab_changed_services(paths: list[str], restart_on_change: dict[str, list[str]]) -> list[str]:
    """The services (sorted) any of whose path prefixes starts one of ``paths``."""
    return sorted(
        service
        for service, prefixes in restart_on_change.items()
        if any(str(path).startswith(tuple(prefixes)) for path in paths)
    )


def _excluder(exclude: list[str] | None):
    pattern = re.compile("|".join(f"(?:{e})" for e in exclude)) if exclude else None
    return (lambda path: bool(pattern.search(path))) if pattern else (lambda path: False)


def _mode(st_mode: int) -> str:
    return "0755" if st_mode & stat.S_IXUSR else "0644"


def soclab_deploy_tree(
    source_dir: str, folders: list[str], exclude: list[str] | None = None
) -> list[dict[str, str]]:
    """The files under ``folders`` of the controller's checkout (filters run on the controller),
    sorted: ``[{"path": "compose/compose.yaml", "sha1": ..., "mode": "0644"}, ...]`` with paths
    relative to ``source_dir`` and modes as the archive gives them (0755 or 0644). A path that
    one of the ``exclude`` regular expressions finds is left out (folders with a trailing /)."""
    excluded = _excluder(exclude)
    entries = []
    for folder in folders:
        top = os.path.join(source_dir, folder)
        if not os.path.isdir(top):
            raise ValueError(f"{top} is not a folder of the checkout")
        for here, dirs, files in os.walk(top):
            rel_here = os.path.relpath(here, source_dir)
            dirs[:] = sorted(d for d in dirs if not excluded(os.path.join(rel_here, d) + "/"))
            for name in files:
                rel = os.path.join(rel_here, name)
                if excluded(rel):
                    continue
                src = os.path.join(here, name)
                with open(src, "rb") as f:
                    sha1 = hashlib.sha1(f.read()).hexdigest()  # what Ansible's find gives
                entries.append({"path": rel, "sha1": sha1, "mode": _mode(os.stat(src).st_mode)})
    return sorted(entries, key=lambda e: e["path"])


def soclab_tree_diff(
    tree: list[dict[str, str]], found: list[dict], dest_dir: str, exclude: list[str] | None = None
) -> dict[str, list[str]]:
    """Compare the checkout's ``tree`` with the files ``ansible.builtin.find`` (get_checksum)
    found under ``dest_dir`` on the host: ``different`` (missing or different content or mode)
    and ``stale`` (on the host only; the excluded paths, which the role writes, never are)."""
    excluded = _excluder(exclude)
    prefix = dest_dir.rstrip("/") + "/"
    there = {}
    for f in found:
        rel = f["path"][len(prefix) :] if f["path"].startswith(prefix) else f["path"]
        if not excluded(rel):
            there[rel] = (f.get("checksum", ""), _mode(int(f.get("mode", "0"), 8)))
    here = {e["path"]: (e["sha1"], e["mode"]) for e in tree}
    return {
        "different": sorted(p for p, v in here.items() if there.get(p) != v),
        "stale": sorted(set(there) - set(here)),
    }


class FilterModule:
    def filters(self):
        return {
            "soclab_mosquitto_passwd": soclab_mosquitto_passwd,
            "soclab_changed_services": soclab_changed_services,
            "soclab_deploy_tree": soclab_deploy_tree,
            "soclab_tree_diff": soclab_tree_diff,
        }
