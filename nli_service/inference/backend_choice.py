"""Which backend runs the model: the one rule, torch-free so that ``config`` can apply it at start-up."""

from __future__ import annotations


def choose_backend(backend: str, quantize: str) -> str:
    """The backend to run: ``auto`` is torch, or onnx for int8; torch with int8 is refused (ValueError)."""
    if backend == "auto":
        return "onnx" if quantize == "int8" else "torch"
    if backend == "torch" and quantize == "int8":
        raise ValueError(
            "NLI_BACKEND=torch with NLI_QUANTIZE=int8 is not supported (int8 runs on ONNX Runtime):"
            " use NLI_BACKEND=onnx or leave NLI_BACKEND unset"
        )
    return backend
