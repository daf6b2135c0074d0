"""Backends run one padded batch: ``backend(inputs) -> float32 logits``.

- ``torch``: the transformers model; ``int8`` applies dynamic quantisation to its
  Linear layers, smoothed and with outlier channels in float32 when calibrated on
  ``calibration_data`` (see ``torch_int8``; the calibration runs once, in a separate
  process, and is cached on disk like the ONNX export).
- ``onnx``: ONNX Runtime with full graph optimisation; ``int8`` uses ORT's dynamic
  quantisation after SmoothQuant-style smoothing calibrated on ``calibration_data``
  (see ``onnx_export``). The ONNX file is exported once, in a separate process, and
  cached on disk under a key of the model's files, the calibration file and the
  settings, so workers never re-export.

Anything that runs the model, casts or quantises happens in :meth:`start`, which
is called in each worker after the fork: the Gunicorn master only loads weights.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

import torch

log = logging.getLogger(__name__)

ONNX_OPSET = 17
INT8_SCHEME = "smoothed-a0.8-outliers8-v2"  # part of the cache key: change it when onnx_export's int8 recipe changes


class Backend(Protocol):
    name: str
    quantize: str
    quantization: str  # how, in words, for /model
    dtype: torch.dtype  # what the model computes in, once started

    def start(self, threads: int) -> None: ...

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor: ...


class TorchBackend:
    """The transformers model itself in ``dtype``, optionally dynamically quantised to int8 (CPU)."""

    name = "torch"

    def __init__(
        self,
        model: Any,
        quantize: str = "none",
        dtype: torch.dtype | None = None,
        model_path: str | None = None,
        calibration_data: str | None = None,
    ) -> None:
        self.model = model
        self.quantize = quantize
        self.quantization = "dynamic int8, per-tensor weight scales" if quantize == "int8" else "none"
        self.dtype = dtype or model.dtype
        ready = quantize == "none" and model.dtype == self.dtype
        self._runnable = model if ready else None
        self.calibration: Path | None = None
        calibration = _calibration_file(quantize, calibration_data)
        if calibration is not None and model_path is not None:
            key = f"{_model_key(model_path)}-torch-int8-{INT8_SCHEME}-{_files_fingerprint([calibration])}"
            self.calibration = onnx_cache_dir() / key / "calibration.pt"
            command = ["-m", "nli_service.inference.torch_int8", model_path, str(self.calibration)]
            _build_once(self.calibration, [*command, "--calibration", str(calibration)], "int8 calibration")
            self.quantization = f"smoothed dynamic int8, calibrated on {calibration.name} ({INT8_SCHEME})"

    def start(self, threads: int) -> None:
        if self._runnable is not None:
            return
        if self.model.dtype != self.dtype:
            self.model.to(self.dtype)
        if self.quantize == "int8":
            from nli_service.inference import torch_int8

            calibration = torch.load(self.calibration) if self.calibration is not None else None
            self._runnable = torch_int8.quantize(self.model, calibration)
        else:
            self._runnable = self.model

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._runnable is None:  # used before start(): cast / quantise now
            self.start(torch.get_num_threads())
        device = self.model.device
        with torch.inference_mode():
            return self._runnable(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu()


def _files_fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in sorted(files):
        if file.is_file() and not file.name.startswith("."):
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def onnx_cache_dir() -> Path:
    """Where ONNX exports and int8 calibrations are cached (``NLI_ONNX_CACHE``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nli-service" / "onnx"
    return Path(os.environ.get("NLI_ONNX_CACHE", default))


def _model_key(model_path: str) -> str:
    return f"{Path(model_path).name}-{_files_fingerprint(list(Path(model_path).iterdir()))}"


def _calibration_file(quantize: str, calibration_data: str | None) -> Path | None:
    """The calibration TSV int8 uses, if int8 is asked for and the file exists."""
    calibration = Path(calibration_data) if calibration_data else None
    return calibration if quantize == "int8" and calibration and calibration.is_file() else None


def _build_once(path: Path, arguments: list[str], what: str) -> None:
    """Create ``path`` by running ``python ARGUMENTS`` in a child process, unless it exists;
    one builder at a time, the others then find the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return
        log.info(f"building the {what}", extra={"path": str(path)})
        result = subprocess.run([sys.executable, *arguments], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{what} failed: {result.stderr.strip().splitlines()[-1:]}")


class OnnxBackend:
    """ONNX Runtime over an exported copy of the model (exported once, cached on disk)."""

    name = "onnx"
    dtype = torch.float32  # exported from float32 weights

    def __init__(
        self, model_path: str, input_names: list[str], quantize: str = "none", calibration_data: str | None = None
    ) -> None:
        self.quantize = quantize
        self.input_names = input_names
        self.calibration = _calibration_file(quantize, calibration_data)
        variant = quantize
        self.quantization = "dynamic int8, per-channel weight scales" if quantize == "int8" else "none"
        if self.calibration is not None:
            variant = f"{quantize}-{INT8_SCHEME}-{_files_fingerprint([self.calibration])}"
            self.quantization = f"smoothed dynamic int8, calibrated on {self.calibration.name} ({INT8_SCHEME})"
        self.path = onnx_cache_dir() / f"{_model_key(model_path)}-opset{ONNX_OPSET}-{variant}" / "model.onnx"
        command = ["-m", "nli_service.inference.onnx_export", model_path, str(self.path)]
        command += ["--quantize", quantize, "--inputs", ",".join(input_names)]
        if self.calibration is not None:
            command += ["--calibration", str(self.calibration)]
        _build_once(self.path, command, "ONNX export")
        self._session: Any = None

    def start(self, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._session is None:
            self.start(torch.get_num_threads())
        feed = {name: inputs[name].numpy() for name in self.input_names}
        return torch.from_numpy(self._session.run(None, feed)[0]).float()
