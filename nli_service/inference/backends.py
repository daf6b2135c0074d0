"""Backends run one padded batch: ``backend(inputs) -> float32 logits``.

The torch backend computes it without the padding where it can (``padding_free``).

- ``torch``: the transformers model itself, in float32 / float16 / bfloat16. It has no int8
  mode: torch 2.13's only CPU dynamic-int8 API (``torch.ao.quantization.quantize_dynamic``)
  is deprecated, so int8 is ONNX int8 (``NLI_QUANTIZE=int8`` picks the onnx backend).
- ``onnx``: ONNX Runtime with full graph optimisation; ``int8`` uses ORT's dynamic
  quantisation after the smoothing and outlier recipe of :mod:`nli_service.inference.int8`,
  calibrated on ``calibration_data`` (see ``onnx_export``). The ONNX file is exported once,
  in a separate process (killed after ``BUILD_TIMEOUT`` seconds), and cached on disk under a
  key of the sha256 of the model's files, of the calibration file and of the settings, so
  workers never re-export. A cached file ONNX Runtime cannot open is rebuilt once.

Anything that runs the model, casts or quantises happens in :meth:`start`, which
is called in each worker after the fork: the Gunicorn master only loads weights.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from nli_service.inference import int8
from nli_service.inference.padding_free import PAD_PRICE, PaddingFree

log = logging.getLogger(__name__)

ONNX_OPSET = 18
EXPORTER = "dynamo-eager"  # part of the cache key, with the opset: torch.onnx.export(..., dynamo=True)
BUILD_TIMEOUT = 600.0
"""Seconds an export child process may take before it is killed and loading fails."""
_RACY_SECONDS = 2.0  # a file changed this recently may change again within one timestamp tick: never memoised


class Backend(Protocol):
    name: str
    quantize: str
    quantization: str  # how, in words, for /model
    dtype: torch.dtype  # what the model computes in, once started
    variant: str  # what its answers depend on besides the model's files (cached results are keyed by it)
    padding_free: bool  # passes run on real tokens only (known after start())
    pad_price: float  # what a padded token costs, in real tokens

    def start(self, threads: int) -> None: ...

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor: ...


class TorchBackend:
    """The transformers model itself, computing in ``dtype``; padding-free where the model
    allows it (:mod:`nli_service.inference.padding_free`)."""

    name = "torch"
    quantize = "none"
    quantization = "none"

    def __init__(self, model: Any, dtype: torch.dtype | None = None, padding_free: bool = True) -> None:
        self.model = model
        self.dtype = dtype or model.dtype
        self.variant = f"torch-{str(self.dtype).removeprefix('torch.')}"
        self._pack = padding_free  # asked for; whether the model allows it is known after start()
        self._packed: PaddingFree | None = None
        self._started = False

    @property
    def padding_free(self) -> bool:
        """Whether passes run packed: as asked until start() has checked the model."""
        return self._packed is not None if self._started else self._pack

    @property
    def pad_price(self) -> float:
        """What a padded token costs, in real tokens (``plan_chunks`` weighs passes with it)."""
        return PAD_PRICE if self._packed is not None else 1.0

    def start(self, threads: int) -> None:
        if self._started:
            return
        if self.model.dtype != self.dtype:
            self.model.to(self.dtype)
        if self._pack:
            self._packed = PaddingFree.attach(self.model)
        self._started = True

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self._started:  # used before start(): cast (and check packing) now
            self.start(torch.get_num_threads())
        device = self.model.device
        with torch.inference_mode():
            mask = inputs.get("attention_mask")
            if self._packed is not None and mask is not None and not bool(mask.all()):  # no padding: as it is
                return self._packed(inputs).float().cpu()
            return self.model(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu()


def onnx_cache_dir() -> Path:
    """Where ONNX exports (with their int8 calibration) are cached (``NLI_ONNX_CACHE``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nli-service" / "onnx"
    return Path(os.environ.get("NLI_ONNX_CACHE", default))


def file_digest(path: Path) -> str:
    """sha256 of the contents of ``path``.

    Remembered on disk (in the cache folder) under the file's device, inode, size, mtime and
    ctime: rewriting a file changes its ctime even when its size and mtime are put back, so a
    changed file is always hashed again. A file changed in the last ``_RACY_SECONDS`` is hashed
    every time (a second change within one timestamp tick could leave every stamp equal)."""
    stat = path.stat()
    stamp = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    memo = onnx_cache_dir() / "digests" / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]}.json"
    try:
        remembered = json.loads(memo.read_text())
        if remembered["stamp"] == stamp:
            return remembered["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    if time.time() - stat.st_ctime_ns / 1e9 > _RACY_SECONDS:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            partial = memo.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps({"stamp": stamp, "sha256": digest.hexdigest()}))
            os.replace(partial, memo)
        except OSError:
            pass  # only a memo: the next start hashes again
    return digest.hexdigest()


def _files_fingerprint(files: list[Path]) -> str:
    """A digest of the names and contents of ``files`` (dot files and folders left out)."""
    digest = hashlib.sha256()
    for file in sorted(files):
        if file.is_file() and not file.name.startswith("."):
            digest.update(f"{file.name}:{file_digest(file)}\n".encode())
    return digest.hexdigest()[:16]


def model_fingerprint(model_path: str) -> str:
    """The model's version: a digest of its folder's files (names and contents)."""
    return _files_fingerprint(list(Path(model_path).iterdir()))


def _model_key(model_path: str) -> str:
    return f"{Path(model_path).name}-{model_fingerprint(model_path)}"


def _calibration_file(quantize: str, calibration_data: str | None) -> Path | None:
    """The calibration TSV int8 uses, if int8 is asked for and the file exists."""
    calibration = Path(calibration_data) if calibration_data else None
    return calibration if quantize == "int8" and calibration and calibration.is_file() else None


def _build_once(
    path: Path, arguments: list[str], what: str, timeout: float | None = None, discard: tuple | None = None
) -> None:
    """Create ``path`` by running ``python ARGUMENTS`` in a child process, unless it exists;
    one builder at a time, the others then find the file. ``discard``: the ``_identity`` of a
    copy of ``path`` found unusable, deleted first if it is still there. The child is killed
    after ``timeout`` seconds (default ``BUILD_TIMEOUT``) and a RuntimeError says so."""
    timeout = BUILD_TIMEOUT if timeout is None else timeout
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if discard is not None and _identity(path) == discard:
            path.unlink()
        if path.is_file():
            return
        log.info(f"building the {what}", extra={"path": str(path)})
        try:
            result = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"{what} did not finish within {timeout:g} s and was stopped (building {path})"
            ) from None
        if result.returncode != 0:
            raise RuntimeError(f"{what} failed: {result.stderr.strip().splitlines()[-1:]}")


def _identity(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class OnnxBackend:
    """ONNX Runtime over an exported copy of the model (exported once, cached on disk)."""

    name = "onnx"
    dtype = torch.float32  # exported from float32 weights
    padding_free = False  # the exported graph takes padded batches
    pad_price = 1.0

    def __init__(
        self, model_path: str, input_names: list[str], quantize: str = "none", calibration_data: str | None = None
    ) -> None:
        self.quantize = quantize
        self.input_names = input_names
        self.calibration = _calibration_file(quantize, calibration_data)
        variant = quantize
        self.quantization = "dynamic int8, per-channel weight scales" if quantize == "int8" else "none"
        if self.calibration is not None:
            variant = f"{quantize}-{int8.SCHEME}-{_files_fingerprint([self.calibration])}"
            self.quantization = f"smoothed dynamic int8, calibrated on {self.calibration.name} ({int8.SCHEME})"
        self.variant = f"onnx-opset{ONNX_OPSET}-{EXPORTER}-{variant}"
        key = f"{_model_key(model_path)}-{self.variant.removeprefix('onnx-')}"
        self.path = onnx_cache_dir() / key / "model.onnx"
        command = ["-m", "nli_service.inference.onnx_export", model_path, str(self.path)]
        command += ["--quantize", quantize, "--inputs", ",".join(input_names), "--opset", str(ONNX_OPSET)]
        if self.calibration is not None:
            command += ["--calibration", str(self.calibration)]
        self._command = command
        self._session: Any = None
        self._open_or_rebuild(threads=1, optimise=False)  # a broken cache fails here, in the master, not in workers

    def _open_or_rebuild(self, threads: int, optimise: bool) -> Any:
        """The session over the cached file, exporting it first if it is missing, and again once if it
        cannot be opened (a corrupt file, or one deleted meanwhile: a worker started later rebuilds it)."""
        _build_once(self.path, self._command, "ONNX export")
        found = _identity(self.path)
        try:
            return self._open(threads, optimise)
        except Exception as error:  # noqa: BLE001 -- ORT's own exception types (InvalidProtobuf, Fail, ...)
            log.warning(
                "the cached ONNX model cannot be opened: rebuilding it",
                extra={"path": str(self.path), "error": str(error).splitlines()[0] if str(error) else repr(error)},
            )
            _build_once(self.path, self._command, "ONNX export", discard=found)
            try:
                return self._open(threads, optimise)
            except Exception as again:  # noqa: BLE001
                raise RuntimeError(f"the ONNX model {self.path} cannot be opened, even rebuilt: {again}") from None

    def _open(self, threads: int, optimise: bool = True) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        level = ort.GraphOptimizationLevel
        options.graph_optimization_level = level.ORT_ENABLE_ALL if optimise else level.ORT_DISABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def start(self, threads: int) -> None:
        self._session = self._open_or_rebuild(threads, optimise=True)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._session is None:
            self.start(torch.get_num_threads())
        feed = {name: inputs[name].numpy() for name in self.input_names}
        return torch.from_numpy(self._session.run(None, feed)[0]).float()
