"""Debian bookworm targets for converging the roles: a debootstrapped root, used as a chroot.

``pristine_root()`` debootstraps a minimal bookworm (``--variant=minbase`` plus what a Raspberry
Pi OS Lite image already has and Ansible needs: python3, systemd, udev, ca-certificates) once,
into ``var/cache/ansible-targets/`` of the checkout (ignored by git), keyed by a hash of what
goes into it. ``Target.create()`` copies it to a folder of the test's own and makes it usable the
way this machine is: apt sees the same mirror and apt settings, pip the same index settings and
certificate authorities, DNS the same resolver; /proc is mounted (Ansible's facts and
``is_chroot`` read it). Package maintainer scripts may not start services (``policy-rc.d``), and
systemd does not run inside: that is how the roles see "not booted".

Run ``python tests/ansible/bookworm.py`` to build the cache by hand.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "var" / "cache" / "ansible-targets"
SUITE = "bookworm"
VARIANT = "minbase"
# What a Raspberry Pi OS Lite / Debian server install has, plus what Ansible needs of a host
# (python3; python3-apt for the apt module in check mode).
PACKAGES = ("python3", "python3-apt", "systemd", "systemd-sysv", "udev", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY = "http://deb.debian.org/debian-security"
POLICY_RC_D = "#!/bin/sh\n# Test target: package scripts must not start services.\nexit 101\n"


class TargetError(RuntimeError):
    """The target cannot be built here (not root, no debootstrap, no mirror)."""


def host_mirrors() -> tuple[str, str]:
    """The Debian archive and security URIs that this machine's apt uses (deb822 or one-line)."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.suffix in (".list", ".sources") or path.name == "sources.list":
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except OSError:
                continue
    uris = []
    for text in texts:
        uris += re.findall(r"^\s*URIs:\s*(\S+)", text, flags=re.MULTILINE)
        uris += re.findall(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, flags=re.MULTILINE)
    main = next((u for u in uris if re.search(r"/debian/?$", u)), DEFAULT_MIRROR)
    security = next((u for u in uris if re.search(r"/debian-security/?$", u)), DEFAULT_SECURITY)
    return main.rstrip("/"), security.rstrip("/")


def cache_key(mirror: str) -> str:
    recipe = "\n".join([SUITE, VARIANT, mirror, *sorted(PACKAGES), "recipe 1"])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def check_host() -> None:
    if os.geteuid() != 0:
        raise TargetError("building and entering a chroot needs root")
    if shutil.which("debootstrap") is None and not Path("/usr/sbin/debootstrap").exists():
        raise TargetError("debootstrap is missing: apt-get install debootstrap (make system does)")


def pristine_root(log=sys.stderr) -> Path:
    """The cached, untouched bookworm root; debootstrapped on first use."""
    check_host()
    mirror, _ = host_mirrors()
    root = CACHE / f"{SUITE}-{cache_key(mirror)}"
    if (root / ".complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    building = root.with_name(root.name + f".building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    cmd = [
        shutil.which("debootstrap") or "/usr/sbin/debootstrap",
        f"--variant={VARIANT}",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(building),
        mirror,
    ]
    print(f"debootstrap: {' '.join(cmd)}", file=log, flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise TargetError(
            f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    (building / ".complete").write_text(" ".join(cmd) + "\n", encoding="utf-8")
    shutil.rmtree(root, ignore_errors=True)
    building.rename(root)
    return root


@dataclass
class Target:
    """A copy of the pristine root, prepared as this machine is, with /proc mounted."""

    path: Path

    @classmethod
    def create(cls, path: Path, hostname: str) -> Target:
        pristine = pristine_root()
        if path.exists():
            raise TargetError(f"{path} exists")
        subprocess.run(["cp", "-a", "--reflink=auto", str(pristine), str(path)], check=True)
        (path / ".complete").unlink()
        target = cls(path)
        target._prepare(hostname)
        return target

    def _prepare(self, hostname: str) -> None:
        root = self.path
        mirror, security = host_mirrors()
        (root / "etc/apt/sources.list").write_text(
            f"deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\n"
            f"deb {security} {SUITE}-security main\n",
            encoding="utf-8",
        )
        # apt's settings (proxies, time checks of snapshot mirrors) as on this machine.
        for conf in sorted(Path("/etc/apt/apt.conf.d").glob("*")):
            if conf.is_file():
                shutil.copy2(conf, root / "etc/apt/apt.conf.d" / conf.name)
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text(POLICY_RC_D, encoding="utf-8")
        policy.chmod(0o755)
        (root / "etc/hostname").write_text(hostname + "\n", encoding="utf-8")
        (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n", encoding="utf-8")
        shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf", follow_symlinks=True)
        # The certificate authorities this machine trusts beyond Debian's (e.g. a proxy's).
        local_cas = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
        for ca in local_cas:
            dest = (
                root / "usr/local/share/ca-certificates" / ca.relative_to("/usr/local/share/ca-certificates")
            )
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ca, dest)
        # pip's index settings as on this machine.
        for conf in (Path("/etc/pip.conf"), Path("/etc/xdg/pip")):
            if conf.is_file():
                shutil.copy2(conf, root / conf.relative_to("/"))
            elif conf.is_dir():
                shutil.copytree(conf, root / conf.relative_to("/"), dirs_exist_ok=True)
        self.mount()
        if local_cas:
            self.run(["update-ca-certificates"])

    def mount(self) -> None:
        proc = self.path / "proc"
        if not os.path.ismount(proc):
            subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)

    def unmount(self) -> None:
        proc = self.path / "proc"
        if os.path.ismount(proc):
            subprocess.run(["umount", "--lazy", str(proc)], check=False)

    def destroy(self) -> None:
        self.unmount()
        if any(os.path.ismount(p) for p in (self.path / "proc", self.path / "sys", self.path / "dev")):
            raise TargetError(f"{self.path} still has mounts; not removing it")
        shutil.rmtree(self.path, ignore_errors=True)

    def run(self, argv: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
        """Run a command inside the target (a clean environment, like a login's)."""
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        return subprocess.run(
            ["chroot", str(self.path), *argv], env=env, capture_output=True, text=True, check=check, **kwargs
        )


if __name__ == "__main__":
    print(pristine_root())
