"""The committed source tree, exported for a build (what a fresh clone would build, never the working tree)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def export_tree(treeish: str, destination: Path) -> str:
    """Make ``destination`` hold exactly the files of ``treeish``; returns its commit id.

    Files whose bytes did not change are left untouched (mode and time included), so a
    container build's layer cache still matches them on a rerun.
    """
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{treeish}^{{commit}}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive = subprocess.run(["git", "archive", commit], cwd=PROJECT_ROOT, capture_output=True, check=True)
    destination.mkdir(parents=True, exist_ok=True)
    wanted: set[Path] = set()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            target = destination / member.name
            wanted.add(target)
            extracted = tar.extractfile(member)
            content = extracted.read() if extracted else b""
            if target.is_file() and target.read_bytes() == content:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(0o755 if member.mode & 0o111 else 0o644)
    for path in sorted(destination.rglob("*"), reverse=True):  # files before their folders
        if path.is_file() and path not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return commit
