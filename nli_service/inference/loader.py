"""Find a model (local folder, Hugging Face cache, then the hub) and load it.

Offline first: a local folder or a cached hub id never touches the network, and
an uncached id is tried against the hub once, with a short timeout, instead of
the hub client's minute of retries. Every failure is a :class:`ModelLoadError`
whose message says what was tried and how to fix it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as transformers_logging

log = logging.getLogger(__name__)

# Weights and tokenizer files are all the service needs from a hub repository.
_IGNORED_HUB_FILES = ["*.onnx", "onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "*.tflite", "*.mlmodel"]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HARD_MAX_LENGTH = 512
# Models whose position ids start after the padding index (RoBERTa family).
_POSITION_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod", "ibert")


class ModelLoadError(RuntimeError):
    """The model cannot be found or loaded; the message says how to fix it."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model was found: ``origin`` is ``local``, ``cache``, ``hub``, ``bundled`` or ``repository``.

    ``fallback_from`` names the default model that could not be had, when the bundled
    model stands in for it.
    """

    name: str
    path: str
    origin: str
    fallback_from: str | None = None
    version: int | None = None  # the version folder's number, for a model from a repository


BUNDLED_NAME = "bundled"


def bundled_model_dir() -> Path:
    """The compact NLI model shipped inside the package, wheel included (``NLI_BUNDLED_MODEL_DIR`` overrides)."""
    default = Path(__file__).resolve().parents[1] / "models" / "nli-minilm-l6"
    return Path(os.environ.get("NLI_BUNDLED_MODEL_DIR", default))


def _bundled(fallback_from: str | None = None) -> ModelSource:
    folder = bundled_model_dir()
    source = local_folder(str(folder))
    return ModelSource(f"bundled/{folder.name}", source.path, "bundled", fallback_from)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def local_folder(name: str) -> ModelSource:
    path = Path(name).expanduser().resolve()
    if not path.is_dir():
        raise ModelLoadError(
            f"model folder {name!r} does not exist or is not a directory; "
            "set NLI_MODEL to a folder made by save_pretrained() or to a hub id"
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model folder {str(path)!r} has no config.json; it is not a Hugging Face model folder")
    return ModelSource(name=name, path=str(path), origin="local")


def _cached_snapshot(name: str) -> str | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(name, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None
    return path if (Path(path) / "config.json").is_file() else None


def _download(name: str, timeout: float) -> str:
    from huggingface_hub import model_info, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    fix = (
        "set NLI_MODEL to a local model folder, or download the model where the hub is reachable "
        f"(`hf download {name}`) and copy the cache ({_hub_cache_dir()}) here"
    )
    try:
        model_info(name, timeout=timeout)  # one quick probe: fails in seconds when offline
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise ModelLoadError(
            f"model {name!r} is not on the Hugging Face hub or is not accessible "
            f"({type(error).__name__}); check NLI_MODEL"
        ) from None
    except Exception as error:  # noqa: BLE001 - any network failure means "unreachable"
        raise ModelLoadError(
            f"model {name!r} is not a local folder, not in the Hugging Face cache, and the hub is unreachable "
            f"({type(error).__name__}); {fix}"
        ) from None
    try:
        return snapshot_download(name, etag_timeout=timeout, ignore_patterns=_IGNORED_HUB_FILES)
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(f"downloading model {name!r} failed ({type(error).__name__}: {error}); {fix}") from None


def resolve_model(name: str, *, offline: bool, hub_timeout: float, fallback: bool = False) -> ModelSource:
    """Find ``name``: ``bundled``, a local folder, the hub cache, or (unless offline) the hub.

    With ``fallback`` (NLI_MODEL left unset), a model that cannot be had is replaced by the
    bundled one, with a warning; an explicitly chosen model never falls back.
    """
    if name == BUNDLED_NAME:
        return _bundled()
    try:
        return _find(name, offline=offline, hub_timeout=hub_timeout)
    except ModelLoadError as error:
        if not fallback or not (bundled_model_dir() / "config.json").is_file():
            raise
        log.warning("default model unavailable; serving the bundled model", extra={"reason": str(error)})
        return _bundled(fallback_from=name)


def _find(name: str, *, offline: bool, hub_timeout: float) -> ModelSource:
    if Path(name).expanduser().exists() or _looks_like_path(name):
        return local_folder(name)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelLoadError(f"NLI_MODEL={name!r} is neither an existing folder nor a valid hub id") from None
    cached = _cached_snapshot(name)
    if cached:
        return ModelSource(name=name, path=cached, origin="cache")
    if offline:
        raise ModelLoadError(
            f"model {name!r} is not a local folder and not in the Hugging Face cache ({_hub_cache_dir()}), "
            "and offline mode is on (NLI_OFFLINE / HF_HUB_OFFLINE); set NLI_MODEL to a local model folder "
            "or copy a cache that holds it"
        )
    log.info("model not cached; trying the hub", extra={"model": name})
    return ModelSource(name=name, path=_download(name, hub_timeout), origin="hub")


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"NLI_DEVICE={device} but CUDA is not available here; use NLI_DEVICE=cpu or auto")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is float32 on CPU and float16 on a GPU (never the checkpoint's own dtype)."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


def load_tokenizer_and_model(source: ModelSource, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load the fast tokenizer and the classification model from a local path.

    On the CPU the weights stay in the checkpoint's own dtype: this may run in the
    Gunicorn master, which must not run torch kernels (a cast is one) before it
    forks. The backend casts to ``dtype`` in each worker (``TorchBackend.start``).
    A GPU is never preloaded, so there the model is loaded in ``dtype`` directly.
    """
    transformers_logging.disable_progress_bar()  # no progress bars in service logs
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, use_fast=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            source.path, dtype="auto" if device.type == "cpu" else dtype
        )
        model.to(device)
    except Exception as error:  # noqa: BLE001 - every failure becomes one clear line
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"cannot load model from {source.path!r}: {detail}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"model {source.name!r} has no fast tokenizer (tokenizer.json); the service needs one")
    model.eval()
    return tokenizer, model


def model_length_limit(tokenizer: Any, config: Any) -> int:
    """The longest pair (in tokens) the model accepts, at most 512."""
    limits = [HARD_MAX_LENGTH]
    if 0 < getattr(tokenizer, "model_max_length", 0) < 100_000:
        limits.append(int(tokenizer.model_max_length))
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        offset = (config.pad_token_id or 0) + 1 if config.model_type in _POSITION_OFFSET_MODELS else 0
        limits.append(positions - offset)
    return min(limits)
