"""Which version of the repository's model this process serves, and which versions were refused.

With ``NLI_MODEL_REPOSITORY`` the Gunicorn master chooses the version (``server/model_rollout.py``)
and each worker serves the one chosen when it was forked. A version that fails to load or is not
an NLI model is refused: logged, counted (``nli_model_versions_refused``) and reported by ``/model``.
The master shares its refusals with the workers through a small JSON file (workers forked before a
refusal cannot see the master's memory).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nli_service import metrics
from nli_service.config import Settings
from nli_service.inference.repository import ModelVersion, model_name, versions

log = logging.getLogger(__name__)

MAX_REFUSALS_KEPT = 20
_chosen: dict[tuple[str, str], ModelVersion] = {}  # (repository, name) -> the version new workers serve
_refused: list[dict[str, Any]] = []
_shared_file: Path | None = None


def served_name(settings: Settings) -> str:
    """The model's folder in the repository: NLI_MODEL when set, else the repository's only model."""
    assert settings.model_repository is not None
    return model_name(settings.model_repository, None if settings.model_is_default else settings.model)


def chosen(settings: Settings) -> ModelVersion | None:
    """The version this process serves (or, in the master, the one it forks workers with)."""
    assert settings.model_repository is not None
    version = _chosen.get((settings.model_repository, served_name(settings)))
    if version is not None and settings.model_version not in (None, version.version):
        return None  # another app of this process pinned another version
    return version


def choose(settings: Settings, version: ModelVersion | None) -> None:
    """Serve ``version`` from now on (None: choose again at the next load)."""
    assert settings.model_repository is not None
    key = (settings.model_repository, served_name(settings))
    if version is None:
        _chosen.pop(key, None)
    else:
        _chosen[key] = version


def refuse(version: ModelVersion, reason: str) -> None:
    """``version`` will not be served: log it, count it, and keep it for ``/model``."""
    log.error(
        "model version refused", extra={"model": version.name, "model_version": version.version, "reason": reason}
    )
    metrics.MODEL_VERSIONS_REFUSED.labels(model=version.name, version=str(version.version)).inc()
    _refused.append(
        {"version": version.version, "path": str(version.path), "reason": reason, "at": datetime.now(UTC).isoformat()}
    )
    del _refused[:-MAX_REFUSALS_KEPT]
    if _shared_file is not None:
        temporary = _shared_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(_refused))
        temporary.replace(_shared_file)  # a reader sees the old list or the new one, never half


def share_refusals() -> None:
    """In the Gunicorn master, before forking: from now on refusals reach every worker (a file, removed at exit)."""
    global _shared_file
    if _shared_file is not None:
        return
    handle, name = tempfile.mkstemp(prefix="nli-model-refusals-", suffix=".json")
    os.close(handle)
    _shared_file = Path(name)
    _shared_file.write_text(json.dumps(_refused))
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and _shared_file is not None and _shared_file.unlink(missing_ok=True))


def refusals() -> list[dict[str, Any]]:
    """The versions refused so far, oldest first (the master's list, under Gunicorn)."""
    if _shared_file is not None:
        with contextlib.suppress(OSError, ValueError):
            return json.loads(_shared_file.read_text())
    return list(_refused)


def repository_status(settings: Settings) -> dict[str, Any] | None:
    """What ``/model`` says of the repository: where, which versions it holds, which were refused."""
    if settings.model_repository is None:
        return None
    name = served_name(settings)
    return {
        "path": settings.model_repository,
        "name": name,
        "versions": [found.version for found in versions(settings.model_repository, name)],
        "pinned_version": settings.model_version,
        "poll_seconds": settings.model_poll_seconds,
        "refused": refusals(),
    }
