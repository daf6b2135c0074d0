"""The int8 recipe, in one place: calibration data, SmoothQuant smoothing scales, outlier channels.

Numpy only (no torch, no ONNX): ``onnx_export`` applies it to the exported graph.

- Calibration: the first ``CALIBRATION_PAIRS`` labelled pairs of a premise/hypothesis TSV
  (``NLI_CALIBRATION_DATA``: SNLI validation, never test), tokenised and run in
  length-sorted batches of ``CALIBRATION_BATCH``.
- Smoothing (Xiao et al. 2023): per input channel ``s = max|x|^alpha / max|w|^(1 - alpha)``;
  weight rows are multiplied by ``s`` and the activation divided by it, which leaves the
  float32 function unchanged and moves activation outliers into the (per-channel
  quantised) weights. Linears reading the same activation share one ``s``.
- Outliers (LLM.int8()-style, Dettmers et al. 2022): in each FFN down-projection the
  ``OUTLIER_CHANNELS`` input channels with the largest calibration activations are taken
  off the int8 path and computed in float32.

Weights here are laid out ``(input channels, output channels)``, as an ONNX ``MatMul``
reads them (``x @ W``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_PAIRS = 512
CALIBRATION_BATCH = 32
SMOOTH_ALPHA = 0.8
OUTLIER_CHANNELS = 8
"""Input channels of each FFN down-projection computed in float32 beside its int8 MatMul."""
SCHEME = f"smoothed-a{SMOOTH_ALPHA}-outliers{OUTLIER_CHANNELS}-v3"
"""Names this recipe in cache keys and in /model: change it whenever the recipe changes."""


def calibration_pairs(path: Path | None, limit: int = CALIBRATION_PAIRS) -> list[tuple[str, str]]:
    """The first ``limit`` labelled pairs of the TSV at ``path``, or none if there is no such file."""
    if path is None or not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file, delimiter="\t")
        rows = [(r["premise"], r["hypothesis"]) for r in reader if r.get("label") in ("0", "1", "2")]
    return rows[:limit]


def calibration_batches(
    tokenizer: Any, pairs: list[tuple[str, str]], input_names: list[str], max_length: int
) -> list[dict[str, np.ndarray]]:
    """``pairs`` in length-sorted batches of ``CALIBRATION_BATCH``, each padded to its longest pair (int64)."""
    if not pairs:
        return []
    premises, hypotheses = [p for p, _ in pairs], [h for _, h in pairs]
    encoded = tokenizer(premises, hypotheses, truncation="longest_first", max_length=max_length, padding=False)
    order = sorted(range(len(pairs)), key=lambda i: len(encoded["input_ids"][i]), reverse=True)
    batches = []
    for start in range(0, len(order), CALIBRATION_BATCH):
        chunk = order[start : start + CALIBRATION_BATCH]
        padded = tokenizer.pad({name: [encoded[name][i] for i in chunk] for name in input_names}, return_tensors="np")
        batches.append({name: padded[name].astype(np.int64) for name in input_names})
    return batches


def channel_maxima(values: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """Per-channel (last axis) max |x| of ``values``, combined with ``previous`` maxima."""
    current = np.abs(values).reshape(-1, values.shape[-1]).max(axis=0)
    return current if previous is None else np.maximum(previous, current)


def smoothing_scale(x_max: np.ndarray, weights: Sequence[np.ndarray], alpha: float = SMOOTH_ALPHA) -> np.ndarray:
    """The smoothing scale ``s`` per input channel shared by ``weights`` (each ``(in, out)``) reading one
    activation whose calibration maxima are ``x_max``; clipped to [1e-3, 1e3]."""
    w_max = np.maximum(np.max([np.abs(w).max(axis=1) for w in weights], axis=0), 1e-5)
    scale = np.maximum(x_max, 1e-5) ** alpha / w_max ** (1 - alpha)
    return np.clip(scale, 1e-3, 1e3).astype(np.float32)


def is_down_projection(weight: np.ndarray) -> bool:
    """An FFN down-projection (intermediate -> hidden) has more input than output channels."""
    return weight.shape[0] > weight.shape[1]


def outlier_channels(x_max: np.ndarray, count: int = OUTLIER_CHANNELS) -> np.ndarray:
    """The ``count`` input channels with the largest calibration activations, in ascending order."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.argsort(x_max)[-count:]).astype(np.int64)
