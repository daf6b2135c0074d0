"""The layer rules (server -> api -> serving -> inference) hold, and the light modules stay light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).parents[1]
HEAVY = ("torch", "transformers", "flask", "gunicorn")


def test_the_import_contracts_in_pyproject_hold() -> None:
    """The same check as ``make lint``: layers, forbidden imports, no cycles."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "BROKEN" not in result.stdout and "Contracts: " in result.stdout


@pytest.mark.parametrize("module", ["nli_service.client", "nli_service.cli", "nli_service"])
def test_the_client_and_the_cli_load_none_of_the_heavy_libraries(module: str) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_engine_loads_neither_flask_nor_gunicorn() -> None:
    code = "import sys, nli_service.serving.runtime; print([m for m in ('flask', 'gunicorn') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
