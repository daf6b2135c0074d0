"""Smoothed dynamic int8 for the torch backend: the recipe of ``onnx_export``'s ONNX int8.

``python -m nli_service.inference.torch_int8 MODEL_DIR OUT.pt --calibration TSV`` runs
the calibration in a child process (never in the Gunicorn master) and saves, for every
Linear of the encoder, the per-channel max |input| over the calibration pairs and which
Linears read the same input. Each worker then builds its int8 model with :func:`quantize`:

- int8 weights with one scale per output channel; activations quantised per tensor, with
  all 8 bits where the CPU has VNNI (7 elsewhere: without VNNI fbgemm sums pairs in
  16 bits, which 8-bit activations could saturate);
- SmoothQuant-style smoothing, one scale and one ``Mul`` per group of Linears sharing an
  input (Q/K/V);
- the ``OUTLIER_CHANNELS`` largest input channels of each down-projection in float32.

The classification head stays float32. Without calibration, :func:`quantize` is plain
dynamic quantisation of every Linear.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from nli_service.inference.onnx_export import OUTLIER_CHANNELS, SMOOTH_ALPHA

Calibration = dict[str, Any]  # {"maxima": {linear name: max |x| per channel}, "groups": [[names]]}


@functools.cache
def cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


class _SharedSmoothing:
    """``x / s`` for the Linears of one group: computed once per input, dropped after its last use."""

    def __init__(self, inverse: torch.Tensor, readers: int) -> None:
        self.inverse, self.readers = inverse, readers
        self._input: torch.Tensor | None = None
        self._result: torch.Tensor | None = None
        self._uses_left = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x is not self._input or self._uses_left == 0:
            self._input, self._result, self._uses_left = x, x * self.inverse, self.readers
        result = self._result
        self._uses_left -= 1
        if self._uses_left == 0:
            self._input = self._result = None
        return result


class SmoothedLinear(torch.nn.Module):
    """A Linear computing ``int8(x / s) @ (W * s) + x[outliers] @ W[outliers]`` (exact in float32)."""

    def __init__(
        self,
        linear: torch.nn.Linear,
        scale: torch.Tensor,
        smoothing: _SharedSmoothing,
        outliers: torch.Tensor | None,
        int8: bool = True,
    ) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scaled = weight * scale[None, :]
        self.outliers = outliers
        if outliers is not None:
            self.outlier_weight = weight[:, outliers].t().contiguous()
            scaled[:, outliers] = 0.0
        self.smoothing = smoothing
        self.full_range = cpu_has_vnni()
        float_linear = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        float_linear.weight.data = scaled
        if linear.bias is not None:
            float_linear.bias.data = linear.bias.detach().float()
        self.linear: torch.nn.Linear | None = None  # float32 path (tests); int8 keeps only the packed weights
        self.packed = None
        if int8:
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            holder = torch.nn.Sequential(float_linear)
            quantized = quantize_dynamic(holder, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
            self.packed = quantized[0]._packed_params._packed_params
        else:
            self.linear = float_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        smoothed = self.smoothing(x)
        if self.linear is not None:
            y = self.linear(smoothed)
        else:
            y = torch.ops.quantized.linear_dynamic(smoothed, self.packed, reduce_range=not self.full_range)
        if self.outliers is not None:
            y = y + torch.index_select(x, -1, self.outliers) @ self.outlier_weight
        return y


def _encoder_linears(model: Any) -> dict[str, torch.nn.Linear]:
    """The Linears of the base model (the classification head stays float)."""
    base = model.base_model
    prefix = model.base_model_prefix
    return {f"{prefix}.{name}": m for name, m in base.named_modules() if isinstance(m, torch.nn.Linear)}


def calibrate(model: Any, batches: list[dict]) -> Calibration:
    """Per-channel max |input| of every encoder Linear over ``batches``, and which share an input."""
    linears = _encoder_linears(model)
    maxima: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}  # first batch: the input tensor itself, kept alive so ids stay unique

    def hook(name: str, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0]
        channel_max = x.abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
        maxima[name] = torch.maximum(maxima[name], channel_max) if name in maxima else channel_max
        inputs.setdefault(name, x)  # the object itself: Linears reading the same tensor share an input

    handles = [m.register_forward_hook(functools.partial(hook, name)) for name, m in linears.items()]
    try:
        with torch.inference_mode():
            for batch in batches:
                model(**{name: torch.from_numpy(values) for name, values in batch.items()})
    finally:
        for handle in handles:
            handle.remove()
    groups: dict[int, list[str]] = {}
    for name, x in inputs.items():
        groups.setdefault(id(x), []).append(name)
    return {"maxima": maxima, "groups": list(groups.values())}


def quantize(model: Any, calibration: Calibration | None, int8: bool = True) -> Any:
    """An int8 copy of ``model``: smoothed with ``calibration``, else plain dynamic quantisation.

    ``int8=False`` applies only the (exact) float32 transformation, for tests."""
    if calibration is None:
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    import copy

    smoothed = copy.deepcopy(model).float().eval()
    for group in calibration["groups"]:
        linears = [smoothed.get_submodule(name) for name in group]
        x_max = calibration["maxima"][group[0]].clamp(min=1e-5)
        w_max = torch.stack([m.weight.detach().float().abs().amax(dim=0) for m in linears]).amax(dim=0)
        scale = (x_max**SMOOTH_ALPHA / w_max.clamp(min=1e-5) ** (1 - SMOOTH_ALPHA)).clamp(1e-3, 1e3)
        down_projection = linears[0].in_features > linears[0].out_features
        outliers = torch.sort(torch.argsort(x_max)[-OUTLIER_CHANNELS:]).values if down_projection else None
        inverse = 1 / scale
        if outliers is not None:
            inverse[outliers] = 0.0  # the int8 path sees these channels as zeros
        smoothing = _SharedSmoothing(inverse, len(group))
        for name, linear in zip(group, linears, strict=True):
            parent, _, attribute = name.rpartition(".")
            replacement = SmoothedLinear(linear, scale, smoothing, outliers, int8)
            setattr(smoothed.get_submodule(parent), attribute, replacement)
    return smoothed


def main() -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nli_service.inference.loader import model_length_limit
    from nli_service.inference.onnx_export import calibration_batches, calibration_pairs

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("output", type=Path)
    parser.add_argument("--calibration", type=Path, required=True, help="premise/hypothesis TSV")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = AutoModelForSequenceClassification.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    limit = model_length_limit(tokenizer, model.config)
    pairs = calibration_pairs(args.calibration)
    batches = calibration_batches(tokenizer, pairs, list(tokenizer.model_input_names), limit)
    result = calibrate(model, batches)
    with tempfile.NamedTemporaryFile(dir=args.output.parent, delete=False) as file:
        torch.save(result, file)
    os.replace(file.name, args.output)


if __name__ == "__main__":
    main()
