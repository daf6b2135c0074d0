"""The NLI engine: pairs in, probabilities out, in batches that do not change results.

Stages, in order: encode (one tokenizer call for all pairs) -> plan chunks
(sorted by length, capped by pairs and padded tokens) -> forward (one padded
tensor per chunk, under ``torch.inference_mode``) -> unbatch (back to input
order). Padding is masked, so a pair gets the same probabilities alone or in any
batch. Nothing here knows about HTTP.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Protocol

import torch

from nli_service.inference.backend_choice import choose_backend
from nli_service.inference.backends import Backend, OnnxBackend, TorchBackend, model_fingerprint
from nli_service.inference.labels import LabelError, LabelMap
from nli_service.inference.loader import (
    ModelLoadError,
    ModelSource,
    load_tokenizer_and_model,
    model_length_limit,
    resolve_device,
    resolve_dtype,
    resolve_model,
)
from nli_service.inference.memory import HeapTrimmer
from nli_service.inference.repository import ModelVersion, version_source
from nli_service.inference.spans import forward_attributes, tokenise_attributes, traced
from nli_service.inference.types import Pair, Prediction

log = logging.getLogger(__name__)


class Checkable(Protocol):
    """What the engine asks between forward passes whether to go on: ``check()`` raises to stop.

    The serving layer's deadline raises a ``BaseException``, so that no ``except Exception``
    here (the tokenizer fallbacks) can swallow it."""

    def check(self) -> None: ...


ForwardObserver = Callable[[int, int, float], None]
"""Called after every forward pass with (pairs, padded tokens, seconds)."""


@dataclass(frozen=True)
class Encoded:
    """Token ids of every pair, unpadded, in input order, and which pairs were cut to fit ``max_length``."""

    features: dict[str, list[list[int]]]
    truncated: list[bool] = field(default_factory=list)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.features["input_ids"]]

    @classmethod
    def concatenate(cls, parts: Sequence[Encoded]) -> Encoded:
        """One :class:`Encoded` holding every part's pairs, in order."""
        names = parts[0].features.keys()
        return cls(
            features={name: [row for part in parts for row in part.features[name]] for name in names},
            truncated=[flag for part in parts for flag in part.truncated],
        )


@dataclass(frozen=True)
class Scores:
    """The raw result of pairs: float32 logits (rows in input order) and whether each pair was truncated."""

    logits: torch.Tensor
    truncated: list[bool]


class ScoresModel(Protocol):
    """The engine, or anything in front of it that answers its ``scores`` call."""

    @property
    def labels(self) -> LabelMap: ...

    def scores(self, pairs: Sequence[Pair], deadline: Checkable | None = None) -> Scores: ...


def predictions_of(labels: LabelMap, scores: Scores) -> list[Prediction]:
    """Softmax each row of ``scores`` and name its labels; each :class:`Prediction` keeps its truncated flag."""
    rows = torch.softmax(scores.logits, dim=-1).tolist()
    predictions = []
    for probabilities, truncated in zip(rows, scores.truncated, strict=True):
        named = dict(zip(labels.names, probabilities, strict=False))
        predictions.append(Prediction(label=max(named, key=named.__getitem__), scores=named, truncated=truncated))
    return predictions


FORWARD_OVERHEAD_TOKENS = 32
"""What one more forward pass costs, in padded tokens (docs/performance.md has the measurement;
kept on the side of fewer, larger passes)."""


def plan_chunks(
    lengths: Sequence[int], max_pairs: int, max_tokens: int, sort: bool = True, pad_price: float = 1.0
) -> list[list[int]]:
    """Group pair indices into forward passes of at most ``max_pairs`` pairs and at most
    ``max_tokens`` padded tokens (a single pair always fits).

    Sorted by length (longest first), the pairs are cut into runs of similar length so as
    to minimise their cost: real tokens, plus padding at ``pad_price`` real tokens each (1 for
    a padded pass, less for a padding-free one), plus :data:`FORWARD_OVERHEAD_TOKENS` per
    pass. A few long pairs among short ones get their own pass instead of padding the short
    ones to their length. ``sort=False`` fills passes in input order (the naive baseline of
    ``make bench``).
    """
    if not sort:
        return _chunks_in_input_order(lengths, max_pairs, max_tokens)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    count = len(order)
    real = [0] * (count + 1)  # real[k]: the tokens of order[:k]
    for position, index in enumerate(order):
        real[position + 1] = real[position] + lengths[index]
    cost = [0.0] * (count + 1)  # cost[k]: the cheapest plan for order[k:]
    size = [0] * (count + 1)  # size[k]: how many pairs its first pass takes
    for start in range(count - 1, -1, -1):
        width = lengths[order[start]]  # the longest pair of any pass starting here
        most = min(max_pairs, count - start, max(1, max_tokens // max(width, 1)))
        for taken in range(most, 0, -1):  # larger passes first: a tie keeps the larger one
            tokens = real[start + taken] - real[start]
            padding = taken * width - tokens
            total = tokens + pad_price * padding + FORWARD_OVERHEAD_TOKENS + cost[start + taken]
            if size[start] == 0 or total < cost[start]:
                cost[start], size[start] = total, taken
    chunks, start = [], 0
    while start < count:
        chunks.append(order[start : start + size[start]])
        start += size[start]
    return chunks


def _chunks_in_input_order(lengths: Sequence[int], max_pairs: int, max_tokens: int) -> list[list[int]]:
    chunks: list[list[int]] = []
    widths: list[int] = []
    for index in range(len(lengths)):
        if chunks:
            width = max(widths[-1], lengths[index])
            if len(chunks[-1]) < max_pairs and (len(chunks[-1]) + 1) * width <= max_tokens:
                chunks[-1].append(index)
                widths[-1] = width
                continue
        chunks.append([index])
        widths.append(lengths[index])
    return chunks


class NLIEngine:
    """A loaded NLI model with its tokenizer; call :meth:`predict`."""

    def __init__(
        self,
        tokenizer: Any,
        model: Any,
        *,
        source: ModelSource,
        backend: Backend | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        max_batch_tokens: int = 8192,
        sort_by_length: bool = True,
        load_seconds: float = 0.0,
    ) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.backend = backend or TorchBackend(model)
        self.heap = HeapTrimmer()
        self.source = source
        self.labels = LabelMap.from_id2label(model.config.id2label)
        limit = model_length_limit(tokenizer, model.config)
        if max_length is not None and max_length > limit:
            raise ModelLoadError(f"NLI_MAX_LENGTH={max_length} exceeds the model's limit of {limit} tokens")
        self.max_length = max_length or limit
        self.batch_size = batch_size
        self.max_batch_tokens = max(max_batch_tokens, self.max_length)
        self.sort_by_length = sort_by_length
        self.load_seconds = load_seconds
        self.loaded_at = datetime.now(UTC)
        self.observer: ForwardObserver | None = None

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        backend: str = "auto",
        quantize: str = "none",
        offline: bool = False,
        hub_timeout: float = 5.0,
        fallback: bool = False,
        calibration_data: str | None = None,
        padding_free: bool = True,
        model_version: ModelVersion | None = None,
        **options: Any,
    ) -> NLIEngine:
        """Find and load ``model`` (hub id, folder or ``bundled``), or ``model_version`` from a
        repository when given; raises :class:`ModelLoadError`."""
        started = time.perf_counter()
        try:
            backend = choose_backend(backend, quantize)  # auto: torch, or onnx for int8
        except ValueError as error:
            raise ModelLoadError(str(error)) from None
        if model_version is not None:
            source = version_source(model_version)
        else:
            source = resolve_model(model, offline=offline, hub_timeout=hub_timeout, fallback=fallback)
        torch_device = resolve_device(device)
        if torch_device.type != "cpu" and (backend != "torch" or quantize != "none"):
            raise ModelLoadError(f"NLI_BACKEND={backend} with NLI_QUANTIZE={quantize} runs on the CPU only")
        torch_dtype = resolve_dtype(dtype, torch_device)
        tokenizer, network = load_tokenizer_and_model(source, torch_device, torch_dtype)
        inputs = list(tokenizer.model_input_names)
        try:
            if backend == "onnx":
                runner: Backend = OnnxBackend(source.path, inputs, quantize, calibration_data)
            else:
                runner = TorchBackend(network, torch_dtype, padding_free)
        except RuntimeError as error:
            raise ModelLoadError(str(error)) from None
        try:
            return cls(
                tokenizer, network, source=source, backend=runner, load_seconds=time.perf_counter() - started, **options
            )
        except LabelError as error:
            raise ModelLoadError(f"model {model!r} cannot serve NLI: {error}") from None

    # -- properties reported by /model ------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.source.name

    @property
    def device(self) -> str:
        return str(next(self.model.parameters()).device)

    @property
    def dtype(self) -> str:
        return str(self.backend.dtype).removeprefix("torch.")

    @property
    def parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.model.parameters())

    @cached_property
    def version(self) -> str:
        """The model's files and how they run (backend, export, dtype): equal versions give equal answers."""
        return f"{model_fingerprint(self.source.path)}-{self.backend.variant}"

    # -- the pipeline ------------------------------------------------------------------

    def predict(self, pairs: Sequence[Pair], deadline: Checkable | None = None) -> list[Prediction]:
        """Classify ``pairs``; the result is in input order, one :class:`Prediction` each."""
        return self.to_predictions(self.scores(pairs, deadline))

    def logits(self, pairs: Sequence[Pair], deadline: Checkable | None = None) -> torch.Tensor:
        """Raw float32 logits, shape (len(pairs), labels), columns in ``self.labels.names`` order."""
        return self.scores(pairs, deadline).logits

    def scores(self, pairs: Sequence[Pair], deadline: Checkable | None = None) -> Scores:
        """The logits of ``pairs`` and which of them were truncated."""
        encoded = self.encode(pairs)
        return Scores(self.run(encoded, deadline), list(encoded.truncated))

    def run(self, encoded: Encoded, deadline: Checkable | None = None) -> torch.Tensor:
        """Forward every encoded pair in length-sorted chunks; logits back in input order."""
        output = torch.empty((len(encoded.lengths), len(self.labels.names)), dtype=torch.float32)
        chunks = plan_chunks(
            encoded.lengths, self.batch_size, self.max_batch_tokens, self.sort_by_length, self.backend.pad_price
        )
        try:
            for chunk in chunks:
                if deadline is not None:
                    deadline.check()
                output[chunk] = self.forward(encoded, chunk)
        finally:
            largest = max((len(chunk) * max(encoded.lengths[i] for i in chunk) for chunk in chunks), default=0)
            self.heap.after_pass(largest)
        return output

    def to_predictions(self, scores: Scores) -> list[Prediction]:
        """Softmax each row and name its labels."""
        return predictions_of(self.labels, scores)

    @traced("tokenise", tokenise_attributes)
    def encode(self, pairs: Sequence[Pair]) -> Encoded:
        """Tokenise all pairs in one call, truncating the premise first."""
        if not pairs:
            return Encoded(features={"input_ids": []})
        premises = [pair.premise for pair in pairs]
        hypotheses = [pair.hypothesis for pair in pairs]
        try:
            return self._tokenize(premises, hypotheses, "only_first")
        except Exception:  # noqa: BLE001 - a hypothesis alone is longer than max_length
            singles = [
                self._tokenize_one(premise, hypothesis)
                for premise, hypothesis in zip(premises, hypotheses, strict=False)
            ]
            return Encoded.concatenate(singles)

    @traced("forward", forward_attributes)
    def forward(self, encoded: Encoded, chunk: Sequence[int]) -> torch.Tensor:
        """Run one padded forward pass over the pairs at ``chunk``; float32 logits on CPU."""
        started = time.perf_counter()
        inputs = self._pad(encoded, chunk)
        logits = self.backend(inputs)
        if self.observer is not None:
            self.observer(len(chunk), inputs["input_ids"].numel(), time.perf_counter() - started)
        return logits

    def start(self, threads: int) -> None:
        """In the serving process, after any fork: quantise / open the runtime, then warm up."""
        self.backend.start(threads)
        self.warm_up()

    def warm_up(self) -> None:
        """One small forward pass, so the first request does not pay for lazy initialisation.

        It is not reported to the observer: metrics count served traffic only.
        """
        observer, self.observer = self.observer, None
        try:
            self.predict([Pair("A man is playing a guitar.", "A person plays music.")])
        finally:
            self.observer = observer

    def _tokenize_one(self, premise: str, hypothesis: str) -> Encoded:
        try:
            return self._tokenize([premise], [hypothesis], "only_first")
        except Exception:  # noqa: BLE001 - the premise alone cannot absorb the truncation
            return self._tokenize([premise], [hypothesis], "longest_first")

    def _tokenize(self, premises: list[str], hypotheses: list[str], truncation: str) -> Encoded:
        encoding = self.tokenizer(
            premises, hypotheses, truncation=truncation, max_length=self.max_length, padding=False
        )
        features = {name: encoding[name] for name in self.tokenizer.model_input_names if name in encoding}
        if encoding.encodings is not None:  # a fast tokenizer keeps what it cut off as "overflowing"
            truncated = [bool(pair.overflowing) for pair in encoding.encodings]
        else:
            whole = self.tokenizer(premises, hypotheses, truncation=False, padding=False)["input_ids"]
            truncated = [len(ids) > self.max_length for ids in whole]
        return Encoded(features=features, truncated=truncated)

    def _pad(self, encoded: Encoded, chunk: Sequence[int]) -> dict[str, torch.Tensor]:
        width = max(len(encoded.features["input_ids"][i]) for i in chunk)
        pad_left = self.tokenizer.padding_side == "left"
        inputs: dict[str, torch.Tensor] = {}
        for name, rows in encoded.features.items():
            pad_value = (self.tokenizer.pad_token_id or 0) if name == "input_ids" else 0
            tensor = torch.full((len(chunk), width), pad_value, dtype=torch.long)
            for row_number, index in enumerate(chunk):
                values = torch.tensor(rows[index], dtype=torch.long)
                if pad_left:
                    tensor[row_number, width - len(values) :] = values
                else:
                    tensor[row_number, : len(values)] = values
            inputs[name] = tensor
        return inputs

    def describe(self) -> dict[str, Any]:
        """Everything /model reports."""
        return {
            "id": self.model_id,
            "version": self.version,
            "model_version": self.source.version,
            "source": self.source.origin,
            "fallback": self.source.fallback_from is not None,
            "requested_model": self.source.fallback_from or self.model_id,
            "path": self.source.path,
            "labels": list(self.labels.names),
            "model_type": self.model.config.model_type,
            "device": self.device,
            "dtype": self.dtype,
            "backend": self.backend.name,
            "quantize": self.backend.quantize,
            "quantization": self.backend.quantization,
            "padding_free": self.backend.padding_free,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "parameters": self.parameters,
            "load_seconds": round(self.load_seconds, 3),
            "loaded_at": self.loaded_at.isoformat(),
        }


def set_torch_threads(threads: int) -> None:
    """Intra-op threads for this process; call in each worker after fork."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set, or inter-op work already started
        torch.set_num_interop_threads(1)
