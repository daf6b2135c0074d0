"""Plain data passed between the HTTP layer and the engine (no torch, no Flask)."""

from __future__ import annotations

from dataclasses import dataclass

ENTAILMENT, NEUTRAL, CONTRADICTION = "entailment", "neutral", "contradiction"
NLI_LABELS = (ENTAILMENT, NEUTRAL, CONTRADICTION)


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
