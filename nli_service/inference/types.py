"""Plain data passed between the HTTP layer and the engine (no torch, no Flask)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ENTAILMENT, NEUTRAL, CONTRADICTION = "entailment", "neutral", "contradiction"
NLI_LABELS = (ENTAILMENT, NEUTRAL, CONTRADICTION)
DEFAULT_TEMPLATE = "This example is {}."


@dataclass(frozen=True)
class Pair:
    """One premise/hypothesis pair to classify."""

    premise: str
    hypothesis: str

    @property
    def characters(self) -> int:
        return len(self.premise) + len(self.hypothesis)


@dataclass(frozen=True)
class Prediction:
    """The engine's answer for one pair: the top label and every label's probability."""

    label: str
    scores: dict[str, float]


@dataclass(frozen=True)
class ZeroShotResult:
    """Zero-shot candidate labels sorted by score, highest first."""

    labels: list[str]
    scores: list[float]


def zero_shot_pairs(texts: Sequence[str], labels: Sequence[str], template: str) -> list[Pair]:
    """One pair per (text, label): the text against the template with the label in its ``{}``, texts major.

    The same statement as ``template.format(label)`` (``{{`` and ``}}`` are literal braces), but
    the template is only parsed, never formatted: ``ValueError`` unless it holds exactly one bare
    ``{}`` (no field name, index, attribute, conversion or format spec).
    """
    import string

    parsed = list(string.Formatter().parse(template))
    slots = [index for index, (_, name, _, _) in enumerate(parsed) if name is not None]
    if len(slots) != 1 or parsed[slots[0]][1:] != ("", "", None):
        raise ValueError(f'a zero-shot template must hold exactly one bare "{{}}", got {template[:80]!r}')
    before = "".join(literal for literal, _, _, _ in parsed[: slots[0] + 1])
    after = "".join(literal for literal, _, _, _ in parsed[slots[0] + 1 :])
    statements = [before + label + after for label in labels]
    return [Pair(text, statement) for text in texts for statement in statements]
