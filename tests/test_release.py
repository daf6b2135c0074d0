"""release/source.py: the image and wheel checks build the committed tree, and a rerun keeps the layer cache."""

from __future__ import annotations

import os
import subprocess

from release.source import PROJECT_ROOT, export_tree


def committed(path: str) -> bytes:
    return subprocess.run(["git", "show", f"HEAD:{path}"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout


def test_export_holds_exactly_the_committed_files_and_leaves_unchanged_ones_untouched(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert export_tree("HEAD", tmp_path) == head.stdout.strip()
    assert (tmp_path / "Dockerfile").read_bytes() == committed("Dockerfile")
    assert (tmp_path / "nli_service" / "models" / "nli-minilm-l6" / "config.json").is_file()
    assert not (tmp_path / ".venv").exists()

    unchanged, edited = tmp_path / "pyproject.toml", tmp_path / "requirements.txt"
    os.utime(unchanged, (1_000_000_000, 1_000_000_000))
    edited.write_text("edited\n")
    (tmp_path / "stray" / "left-over.txt").parent.mkdir()
    (tmp_path / "stray" / "left-over.txt").write_text("not committed\n")

    export_tree("HEAD", tmp_path)
    assert unchanged.stat().st_mtime == 1_000_000_000  # same bytes: not rewritten, so a build cache still matches
    assert edited.read_bytes() == committed("requirements.txt")
    assert not (tmp_path / "stray").exists()
