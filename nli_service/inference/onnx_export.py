"""Export a sequence-classification model to ONNX (run as a separate process).

``python -m nli_service.inference.onnx_export MODEL_DIR OUT.onnx [--quantize int8]``.
The service runs this in a child process so that tracing the model never happens
in the Gunicorn master; the result is written atomically.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, tensors, strict=True))).logits


def export(model_dir: str, output: Path, input_names: list[str], quantize: str, opset: int) -> None:
    torch.set_num_threads(1)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sample = tokenizer(
        ["a premise to trace", "a longer premise to trace the model"], ["a", "b c"], padding=True, return_tensors="pt"
    )
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    with tempfile.TemporaryDirectory(dir=output.parent) as work, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = Path(work) / "model.onnx"
        torch.onnx.export(
            _LogitsOnly(model, input_names),
            tuple(sample[name] for name in input_names),
            str(plain),
            input_names=input_names,
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
        final = plain
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            final = Path(work) / "model.int8.onnx"
            quantize_dynamic(str(plain), str(final), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(final, output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("output", type=Path)
    parser.add_argument("--inputs", default="input_ids,attention_mask", help="model input names, comma-separated")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()
    export(args.model_dir, args.output, args.inputs.split(","), args.quantize, args.opset)


if __name__ == "__main__":
    main()
