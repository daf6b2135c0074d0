"""Zero-shot text classification with the NLI model, as transformers' pipeline does it.

Each candidate label becomes one pair ``(text, template.format(label))``; all
pairs of all texts go through the engine in one call. Single-label: softmax of
the entailment logits across the labels. Multi-label: per label, softmax over
(contradiction, entailment). Both labels are found by name in ``id2label``;
the transformers pipeline takes contradiction by position (index 0, or -1 when
entailment is 0), which is wrong for models ordered otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nli_service.inference.engine import Checkable, ScoresModel
from nli_service.inference.types import (
    CONTRADICTION,
    DEFAULT_TEMPLATE,
    ENTAILMENT,
    ZeroShotResult,
    zero_shot_pairs,
)


def classify(
    engine: ScoresModel,
    texts: Sequence[str],
    labels: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
    multi_label: bool = False,
    deadline: Checkable | None = None,
) -> list[ZeroShotResult]:
    """Score every label for every text; one :class:`ZeroShotResult` per text."""
    pairs = zero_shot_pairs(texts, labels, template)
    scores = engine.scores(pairs, deadline)
    logits = scores.logits.view(len(texts), len(labels), -1)
    truncated = torch.tensor(scores.truncated, dtype=torch.bool).view(len(texts), len(labels)).any(dim=1).tolist()
    entailment = engine.labels.index(ENTAILMENT)
    if multi_label:
        contradiction = engine.labels.index(CONTRADICTION)
        probabilities = torch.softmax(logits[..., [contradiction, entailment]], dim=-1)[..., 1]
    else:
        probabilities = torch.softmax(logits[..., entailment], dim=-1)
    return [_ranked(labels, row, cut) for row, cut in zip(probabilities.tolist(), truncated, strict=True)]


def _ranked(labels: Sequence[str], scores: list[float], truncated: bool) -> ZeroShotResult:
    order = sorted(range(len(labels)), key=lambda i: scores[i], reverse=True)
    return ZeroShotResult(labels=[labels[i] for i in order], scores=[scores[i] for i in order], truncated=truncated)
