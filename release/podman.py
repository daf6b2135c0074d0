"""Podman as this machine runs it, and the stand-in base image for when no registry is reachable.

Here crun fails on the hybrid cgroups and raising the default rlimits is refused, so every
build and run goes through runc with fixed rlimits and the host's network.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

RUNTIME = ["--runtime", "runc"]
SANDBOX = ["--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
STAND_IN_BASE = "localhost/nli-service-base:bookworm-python3"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS`` with this machine's runtime; its output as text."""
    return subprocess.run(["podman", *RUNTIME, *args], capture_output=True, text=True, timeout=timeout, check=check)


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def stand_in_base(cache: Path) -> str:
    """A Debian bookworm image with Debian's python3 (3.11, as the official slim image), made with debootstrap.

    The root filesystem is kept as a tarball in ``cache``, so a rerun only imports it (seconds).
    """
    if image_exists(STAND_IN_BASE):
        return STAND_IN_BASE
    tarball = cache / "bookworm-python3.tar"
    if not tarball.is_file():
        rootfs = cache / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(rootfs)],
            check=True,
            timeout=1200,
            stdout=subprocess.DEVNULL,
        )
        for downloaded in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / downloaded).glob("*"):
                if path.is_file():
                    path.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=600)
        partial.rename(tarball)
        shutil.rmtree(rootfs)
    podman("import", str(tarball), STAND_IN_BASE, timeout=600)
    return STAND_IN_BASE
