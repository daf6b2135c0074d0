"""Tables for the terminal and sections of docs/reliability.md (each run rewrites only its own)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reliability.service import PROJECT_ROOT

RELIABILITY_DOC = PROJECT_ROOT / "docs" / "reliability.md"
TITLE = "# Reliability\n"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (also readable in a terminal)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(heading: str, body: str, path: Path = RELIABILITY_DOC) -> None:
    """Replace the ``## heading`` section of ``path`` (up to the next ``## ``) with ``body``, or append it.

    Every other section, such as ``## Fuzzing``, is left as it is.
    """
    text = path.read_text() if path.exists() else TITLE
    lines = text.splitlines(keepends=True)
    marker = f"## {heading}"
    start = next((i for i, line in enumerate(lines) if line.rstrip() == marker), None)
    section = [f"{marker}\n", "\n", body.rstrip() + "\n", "\n"]
    if start is None:
        if lines and lines[-1].strip():
            lines.append("\n")
        lines += section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines).rstrip("\n") + "\n")
