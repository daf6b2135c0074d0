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
    """The engine's answer for one pair: the top label, every label's probability, and whether
    the pair was cut to fit the model's ``max_length`` (its premise's end was not seen)."""

    label: str
    scores: dict[str, float]
    truncated: bool = False


@dataclass(frozen=True)
class Span:
    """A stretch of a document: ``document[start:end] == text`` (offsets in characters)."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Verdict:
    """One claim checked against a document: the deciding window's result, and that window as evidence."""

    label: str
    scores: dict[str, float]
    truncated: bool
    evidence: Span


@dataclass(frozen=True)
class ZeroShotResult:
    """Zero-shot candidate labels sorted by score, highest first."""

    labels: list[str]
    scores: list[float]
    truncated: bool = False  # the text was cut to fit max_length in at least one of its pairs


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
