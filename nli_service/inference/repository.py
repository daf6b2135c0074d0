"""A model repository: ``REPOSITORY/NAME/VERSION/`` folders, versions being integers (TF Serving's layout).

Each version folder is a ``save_pretrained`` folder. Folders whose name is not an integer are
ignored (copy a new version in as ``tmp-3`` and rename it to ``3`` once whole). Nothing here
loads a model; :func:`version_source` hands the loader a :class:`ModelSource` for one version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nli_service.inference.loader import ModelLoadError, ModelSource, local_folder

REPOSITORY_ORIGIN = "repository"


@dataclass(frozen=True)
class ModelVersion:
    """One version folder of a model in the repository."""

    name: str
    version: int
    path: Path

    def stamp(self) -> int:
        """The newest modification time (ns) of the folder and its files: changes when the folder does."""
        try:
            entries = [self.path, *self.path.iterdir()]
            return max(entry.stat().st_mtime_ns for entry in entries)
        except OSError:
            return 0


def model_name(repository: str, requested: str | None) -> str:
    """The model served from ``repository``: ``requested`` (NLI_MODEL), or its only model folder."""
    root = Path(repository)
    if not root.is_dir():
        raise ModelLoadError(f"NLI_MODEL_REPOSITORY={repository!r} is not a directory")
    if requested is not None:
        if Path(requested).name != requested or not (root / requested).is_dir():
            raise ModelLoadError(f"NLI_MODEL={requested!r} is no model folder in NLI_MODEL_REPOSITORY={repository!r}")
        return requested
    names = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if len(names) != 1:
        raise ModelLoadError(
            f"NLI_MODEL_REPOSITORY={repository!r} holds {len(names)} model folders ({', '.join(names) or 'none'}); "
            "set NLI_MODEL to the one to serve"
        )
    return names[0]


def versions(repository: str, name: str) -> list[ModelVersion]:
    """Every version folder of ``name``, lowest first (non-integer folder names are ignored)."""
    folder = Path(repository) / name
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    found = [
        ModelVersion(name, int(entry.name), entry)
        for entry in entries
        if entry.name.isdigit() and entry.is_dir()  # isdigit: no sign, no spaces
    ]
    return sorted(found, key=lambda found_version: found_version.version)


def chosen_versions(repository: str, name: str, pinned: int | None) -> list[ModelVersion]:
    """The versions to try, best first: the pinned one alone, or every version from the highest down."""
    available = versions(repository, name)
    if pinned is not None:
        matching = [found for found in available if found.version == pinned]
        if not matching:
            raise ModelLoadError(
                f"NLI_MODEL_VERSION={pinned} is not in {str(Path(repository) / name)!r} "
                f"(versions there: {[found.version for found in available] or 'none'})"
            )
        return matching
    if not available:
        raise ModelLoadError(
            f"model folder {str(Path(repository) / name)!r} holds no version folder (integer names: 1, 2, ...)"
        )
    return available[::-1]


def version_source(model_version: ModelVersion) -> ModelSource:
    """Where the loader finds ``model_version``: named after the model, with its version."""
    folder = local_folder(str(model_version.path))
    return ModelSource(model_version.name, folder.path, REPOSITORY_ORIGIN, version=model_version.version)
