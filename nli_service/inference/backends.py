"""Backends run one padded batch: ``backend(inputs) -> float32 logits``.

- ``torch``: the transformers model; ``int8`` applies dynamic quantisation to its
  Linear layers.
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

    def __init__(self, model: Any, quantize: str = "none", dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.quantize = quantize
        self.quantization = "dynamic int8, per-tensor weight scales" if quantize == "int8" else "none"
        self.dtype = dtype or model.dtype
        ready = quantize == "none" and model.dtype == self.dtype
        self._runnable = model if ready else None

    def start(self, threads: int) -> None:
        if self._runnable is not None:
            return
        if self.model.dtype != self.dtype:
            self.model.to(self.dtype)
        if self.quantize == "int8":
            from torch.ao.quantization import quantize_dynamic

            self._runnable = quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
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
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nli-service" / "onnx"
    return Path(os.environ.get("NLI_ONNX_CACHE", default))


class OnnxBackend:
    """ONNX Runtime over an exported copy of the model (exported once, cached on disk)."""

    name = "onnx"
    dtype = torch.float32  # exported from float32 weights

    def __init__(
        self, model_path: str, input_names: list[str], quantize: str = "none", calibration_data: str | None = None
    ) -> None:
        self.quantize = quantize
        self.input_names = input_names
        calibration = Path(calibration_data) if calibration_data else None
        self.calibration = calibration if quantize == "int8" and calibration and calibration.is_file() else None
        variant = quantize
        self.quantization = "dynamic int8, per-channel weight scales" if quantize == "int8" else "none"
        if self.calibration is not None:
            variant = f"{quantize}-{INT8_SCHEME}-{_files_fingerprint([self.calibration])}"
            self.quantization = f"smoothed dynamic int8, calibrated on {self.calibration.name} ({INT8_SCHEME})"
        model_files = _files_fingerprint(list(Path(model_path).iterdir()))
        key = f"{Path(model_path).name}-{model_files}-opset{ONNX_OPSET}-{variant}"
        self.path = onnx_cache_dir() / key / "model.onnx"
        self._ensure_exported(model_path)
        self._session: Any = None

    def _ensure_exported(self, model_path: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one exporter at a time; the others then find the file
            if self.path.is_file():
                return
            log.info("exporting the model to ONNX", extra={"path": str(self.path)})
            command = [sys.executable, "-m", "nli_service.inference.onnx_export", model_path, str(self.path)]
            command += ["--quantize", self.quantize, "--inputs", ",".join(self.input_names)]
            if self.calibration is not None:
                command += ["--calibration", str(self.calibration)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"ONNX export failed: {result.stderr.strip().splitlines()[-1:]}")

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
