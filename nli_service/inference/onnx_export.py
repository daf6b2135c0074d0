"""Export a sequence-classification model to ONNX (run as a separate process).

``python -m nli_service.inference.onnx_export MODEL_DIR OUT.onnx [--quantize int8 [--calibration TSV]]``.
The service runs this in a child process so that tracing the model never happens
in the Gunicorn master; the result is written atomically.

The export uses torch's maintained exporter (``torch.onnx.export(..., dynamo=True)``: torch.export,
then onnxscript), with dynamic batch and sequence axes.

``int8`` is ORT dynamic quantisation (int8 per-channel weights, one uint8 scale per
activation tensor) of the MatMuls, after the recipe of :mod:`nli_service.inference.int8`:
SmoothQuant-style smoothing (a ``Mul`` by ``1 / s`` before each MatMul or group of MatMuls
sharing an input, weight rows multiplied by ``s``) and, in each FFN down-projection, the
outlier input channels zeroed on the int8 path and added back by a small float32 MatMul.
Both steps leave the float32 function unchanged. Without calibration data it falls back
to plain dynamic quantisation.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nli_service.inference import int8
from nli_service.inference.loader import model_length_limit

ONNX_OPSET = 18  # the dynamo exporter's own opset (lower ones go through a version converter)


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, tensors, strict=True))).logits


def _weighted_matmuls(model: Any) -> dict[str, list[Any]]:
    """MatMul nodes with a 2-D initializer weight, grouped by their activation input."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    groups: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(shapes.get(node.input[1], ())) == 2:
            groups.setdefault(node.input[0], []).append(node)
    return groups


def _activation_maxima(model: Any, names: list[str], batches: list[dict]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of each tensor in ``names`` over the calibration batches."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    for batch in batches:
        for name, value in zip(names, session.run(names, batch), strict=True):
            maxima[name] = int8.channel_maxima(value, maxima.get(name))
    return maxima


def smooth(
    model: Any, batches: list[dict], alpha: float = int8.SMOOTH_ALPHA, outliers: int = int8.OUTLIER_CHANNELS
) -> list[str]:
    """Smooth every weighted MatMul group of ``model`` in place and split the ``outliers``
    largest input channels of each FFN down-projection off to float32; the names of the
    MatMuls to keep float."""
    from onnx import helper, numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    groups = _weighted_matmuls(model)
    maxima = _activation_maxima(model, list(groups), batches)
    nodes = list(model.graph.node)
    keep_float: list[str] = []
    for tensor, matmuls in groups.items():
        weights = [numpy_helper.to_array(inits[node.input[1]]) for node in matmuls]
        scale = int8.smoothing_scale(maxima[tensor], weights, alpha)
        inverse = (1 / scale).astype(np.float32)
        split = int8.outlier_channels(maxima[tensor], outliers) if int8.is_down_projection(weights[0]) else None
        if split is not None and not len(split):
            split = None
        if split is not None:
            inverse[split] = 0.0  # the int8 path sees these channels as zeros
        for node, weight in zip(matmuls, weights, strict=True):
            scaled = (weight * scale[:, None]).astype(np.float32)
            if split is not None:
                scaled[split] = 0.0
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(scaled, node.input[1]))
            node.input[0] = f"{tensor}_smoothed"
        model.graph.initializer.append(numpy_helper.from_array(inverse, f"{tensor}_smooth_inverse"))
        divide = helper.make_node("Mul", [tensor, f"{tensor}_smooth_inverse"], [f"{tensor}_smoothed"])
        nodes.insert(min(nodes.index(node) for node in matmuls), divide)
        if split is not None:
            keep_float += _split_off(model, nodes, tensor, list(zip(matmuls, weights, strict=True)), split)
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    return keep_float


def _split_off(model: Any, nodes: list, tensor: str, matmuls: list[tuple[Any, np.ndarray]], channels: np.ndarray):
    """Add ``tensor[..., channels]`` times the original weight rows, in float32, to each MatMul's output;
    the names of those float MatMuls."""
    from onnx import helper, numpy_helper

    picked = f"{tensor}_outliers"
    model.graph.initializer.append(numpy_helper.from_array(channels.astype(np.int64), f"{picked}_index"))
    gather = helper.make_node("Gather", [tensor, f"{picked}_index"], [picked], axis=-1)
    nodes.insert(min(nodes.index(node) for node, _ in matmuls), gather)
    names = []
    for node, weight in matmuls:
        output, rows = node.output[0], f"{node.input[1]}_outlier_rows"
        node.output[0] = f"{output}_int8_part"
        model.graph.initializer.append(numpy_helper.from_array(weight[channels].astype(np.float32), rows))
        float_part = helper.make_node("MatMul", [picked, rows], [f"{output}_float_part"], name=f"{node.name}_outliers")
        total = helper.make_node("Add", [f"{output}_int8_part", f"{output}_float_part"], [output])
        at = nodes.index(node) + 1
        nodes[at:at] = [float_part, total]
        names.append(float_part.name)
    return names


def quantize_int8(plain: Path, output: Path, batches: list[dict]) -> None:
    """Smoothed dynamic int8 quantisation of ``plain``; plain dynamic quantisation without ``batches``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not batches:
        print("no calibration data: plain dynamic int8 quantisation", file=sys.stderr)
        quantize_dynamic(str(plain), str(output), weight_type=QuantType.QInt8, per_channel=True)
        return
    model = onnx.load(str(plain))
    keep_float = smooth(model, batches)
    smoothed = plain.with_suffix(".smoothed.onnx")
    onnx.save(model, str(smoothed))
    quantize_dynamic(
        str(smoothed),
        str(output),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=keep_float,
    )


def export(
    model_dir: str, output: Path, input_names: list[str], quantize: str, opset: int, calibration: Path | None = None
) -> None:
    torch.set_num_threads(1)
    # Eager attention: traced by torch.export, SDPA becomes a longer graph (slices, concats, NaN
    # guards) that ONNX Runtime runs slower; the eager form is plain MatMul / Softmax.
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sample = tokenizer(
        ["a premise to trace", "a longer premise to trace the model"], ["a", "b c"], padding=True, return_tensors="pt"
    )
    dynamic = torch.export.Dim.DYNAMIC
    # One spec per positional tensor of _LogitsOnly.forward(*tensors): batch and sequence vary.
    # (Dim.DYNAMIC, not one named Dim per axis: a name shared by several inputs makes the exporter
    # warn that it drops the name.)
    shapes = (tuple({0: dynamic, 1: dynamic} for _ in input_names),)
    with tempfile.TemporaryDirectory(dir=output.parent) as work:
        plain = Path(work) / "model.onnx"
        with warnings.catch_warnings():
            # torch 2.13's own torch.export code (torch.utils._pytree) still checks isinstance(..., LeafSpec),
            # which that same release deprecates: nothing this module does or could change. Only that
            # message is hidden; every other warning of the export reaches stderr.
            warnings.filterwarnings(
                "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
            )
            torch.onnx.export(
                _LogitsOnly(model, input_names).eval(),
                tuple(sample[name] for name in input_names),
                str(plain),
                input_names=input_names,
                output_names=["logits"],
                dynamic_shapes=shapes,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        final = plain
        if quantize == "int8":
            final = Path(work) / "model.int8.onnx"
            limit = model_length_limit(tokenizer, model.config)
            pairs = int8.calibration_pairs(calibration)
            quantize_int8(plain, final, int8.calibration_batches(tokenizer, pairs, input_names, limit))
        os.replace(final, output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("output", type=Path)
    parser.add_argument("--inputs", default="input_ids,attention_mask", help="model input names, comma-separated")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET)
    parser.add_argument("--calibration", type=Path, help="premise/hypothesis TSV calibrating int8 (else plain int8)")
    args = parser.parse_args()
    export(args.model_dir, args.output, args.inputs.split(","), args.quantize, args.opset, args.calibration)


if __name__ == "__main__":
    main()
