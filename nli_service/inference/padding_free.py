"""Padding-free forward passes: the pairs of a pass packed into one row, as TEI does.

A padded pass of short pairs beside a longer one spends its matrix products on padding
(a third of the work for eight random SNLI pairs). Here the linear layers, layer norms
and activations, which are most of an encoder's work, see only real tokens: the pass's
pairs are concatenated into one sequence of their tokens, each pair keeping its own
position ids. Attention alone still needs each pair on its own: :func:`packed_attention`
scatters queries, keys and values into a padded block per pair, runs PyTorch's
``scaled_dot_product_attention`` with a key mask, and gathers the real tokens back.
The classification head then reads each pair's first token.

It plugs into transformers through its attention registry (``AttentionInterface``), so
the model's own modules run; it applies to the encoders whose classification head is
listed in :data:`HEADS` (BERT and RoBERTa layouts: the bundled MiniLM, distilroberta,
XLM-R, ELECTRA). :meth:`PaddingFree.attach` checks, in the serving process, that packed
and padded passes give the same logits before it is used; any other model runs padded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

log = logging.getLogger(__name__)

ATTENTION = "nli_padding_free"
"""The attention implementation's name in transformers' registry."""

PAD_PRICE = 0.1
"""What a padded token costs in a packed pass, in real tokens: only attention still sees
padding, a small share of an encoder's work at NLI lengths (``plan_chunks``'s price)."""


@dataclass(frozen=True)
class Packed:
    """One pass's pairs as a single row of real tokens, and where each pair sits in it."""

    inputs: dict[str, torch.Tensor]  # input_ids (and token_type_ids) of shape (1, tokens); position_ids
    index: torch.Tensor  # for each real token, its place in the (pairs x width) padded layout
    valid: torch.Tensor  # (pairs, width): True where a padded layout holds a real token
    starts: torch.Tensor  # each pair's first token in the row

    @classmethod
    def from_padded(cls, inputs: dict[str, torch.Tensor], position_offset: int) -> Packed:
        valid = inputs["attention_mask"].bool()
        lengths = valid.sum(dim=1)
        positions = (valid.cumsum(dim=1) - 1)[valid] + position_offset
        packed = {name: tensor[valid][None] for name, tensor in inputs.items() if name != "attention_mask"}
        packed["position_ids"] = positions[None]
        return cls(
            inputs=packed,
            index=valid.reshape(-1).nonzero().squeeze(1),
            valid=valid,
            starts=lengths.cumsum(dim=0) - lengths,
        )

    def to(self, device: torch.device) -> Packed:
        return Packed(
            inputs={name: tensor.to(device) for name, tensor in self.inputs.items()},
            index=self.index.to(device),
            valid=self.valid.to(device),
            starts=self.starts.to(device),
        )


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention within each pair of a packed row; an ordinary padded pass goes to sdpa."""
    packed: Packed | None = kwargs.pop("packed", None)
    if packed is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    pairs, width = packed.valid.shape
    heads, head_size = query.shape[1], query.shape[3]

    def blocks(states: torch.Tensor) -> torch.Tensor:  # (1, heads, tokens, d) -> (pairs, heads, width, d)
        padded = states.new_zeros(pairs * width, heads, head_size)
        padded[packed.index] = states[0].transpose(0, 1)
        return padded.view(pairs, width, heads, head_size).transpose(1, 2)

    output = F.scaled_dot_product_attention(
        blocks(query), blocks(key), blocks(value), attn_mask=packed.valid[:, None, None, :], scale=scaling
    )
    return output.transpose(1, 2).reshape(pairs * width, heads, head_size)[packed.index][None], None


AttentionInterface.register(ATTENTION, packed_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # padded passes build sdpa's mask


def _pooled_head(model: Any, first_tokens: torch.Tensor) -> torch.Tensor:
    """BERT: the pooler over the first token, then the classifier."""
    pooled = model.base_model.pooler(first_tokens)
    return model.classifier(model.dropout(pooled))


def _sequence_head(model: Any, first_tokens: torch.Tensor) -> torch.Tensor:
    """RoBERTa-style heads read the first token of the sequence output themselves."""
    return model.classifier(first_tokens)


HEADS: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    "BertForSequenceClassification": _pooled_head,
    "RobertaForSequenceClassification": _sequence_head,
    "XLMRobertaForSequenceClassification": _sequence_head,
    "CamembertForSequenceClassification": _sequence_head,
    "ElectraForSequenceClassification": _sequence_head,
}


def _position_offset(model: Any) -> int:
    """RoBERTa numbers positions from ``padding_idx + 1``; BERT from 0."""
    embeddings = model.base_model.embeddings
    if hasattr(embeddings, "create_position_ids_from_input_ids"):
        return int(embeddings.padding_idx) + 1
    return 0


class PaddingFree:
    """Runs a classification model on packed passes; :meth:`attach` returns one only where
    packed logits match padded ones."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.head = HEADS[type(model).__name__]
        self.position_offset = _position_offset(model)

    @classmethod
    def attach(cls, model: Any) -> PaddingFree | None:
        """Switch ``model`` to packed attention if its layout is known and a check pass agrees."""
        name = type(model).__name__
        if name not in HEADS or getattr(model.config, "is_decoder", False):
            log.info("padding-free passes: not for %s, passes are padded", name)
            return None
        previous = model.config._attn_implementation
        model.set_attn_implementation(ATTENTION)
        runner = cls(model)
        difference = runner.check()
        tolerance = 1e-4 if model.dtype == torch.float32 else 2e-2
        if difference > tolerance:
            model.set_attn_implementation(previous)
            log.warning(
                "padding-free passes: %s differs from padded passes by %.2g, passes are padded", name, difference
            )
            return None
        log.info("padding-free passes: on for %s (packed and padded logits within %.2g)", name, difference)
        return runner

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of a padded batch (``attention_mask`` required), computed without its padding."""
        packed = Packed.from_padded(inputs, self.position_offset).to(self.model.device)
        hidden = self.model.base_model(**packed.inputs, packed=packed).last_hidden_state
        return self.head(self.model, hidden[0, packed.starts][:, None, :])

    def check(self) -> float:
        """Largest logit difference between packed and padded passes over pairs of unequal lengths."""
        generator = torch.Generator().manual_seed(0)
        lengths = (9, 4, 6)
        vocabulary = self.model.config.vocab_size
        ids = torch.randint(5, vocabulary, (len(lengths), max(lengths)), generator=generator)
        mask = torch.zeros_like(ids)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        pad = self.model.config.pad_token_id or 0
        inputs = {"input_ids": ids.masked_fill(mask == 0, pad), "attention_mask": mask}
        with torch.inference_mode():
            device = self.model.device
            padded = self.model(**{name: tensor.to(device) for name, tensor in inputs.items()}).logits
            packed = self(inputs)
        return float((padded.float() - packed.float()).abs().max())
