"""Claims checked against a whole document: windows of sentences, scored in one call, aggregated per claim.

A cross-encoder reads at most ``max_length`` tokens, so a long document paired with a claim
would be truncated and its end never seen. Here the document is cut into sentences (Latin
``. ! ?`` before a space, Chinese and Japanese ``。！？`` with or without one, and line breaks),
a sentence longer than a window into pieces at token boundaries, and the sentences are packed
into windows of at most ``window_sentences`` sentences that fit ``max_length`` together with
the longest claim. Windows of several sentences overlap by one (the last sentence of a window
starts the next one), so two adjacent sentences are always read together. Every (window,
claim) pair goes through the model in one call.

Aggregation, per claim: the deciding window is the one with the highest
``relatedness + P(entailment) - P(contradiction)``. ``P(e) - P(c)`` is SummaC-ZS's window
score; relatedness (0 to 1) is the claim's share of the document's distinctive tokens found in
the window: the idf-weighted overlap of their token ids (idf over the windows), divided by the
best window's. Without it, a model trained on SNLI calls almost every *unrelated* sentence a
contradiction (p ≈ 0.98), so "the window with the highest contradiction" is a random unrelated
one; relatedness points at the window the claim is about. The claim's result is the deciding
window's result, unchanged, and that window is its evidence.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from nli_service.inference.engine import Checkable, ScoresModel, predictions_of
from nli_service.inference.types import CONTRADICTION, ENTAILMENT, Pair, Span, Verdict

# A sentence ends after . ! ? (and closing quotes or brackets) before whitespace, after 。！？
# (and closing marks) anywhere, or at a line break.
_SENTENCE_END = re.compile(r"""[.!?…]+["'”’)\]]*(?=\s|$)|[。！？]+[」』”’）]*|\n""")


def sentence_spans(text: str) -> list[Span]:
    """The sentences of ``text`` in order, as spans without their surrounding whitespace."""
    spans, start = [], 0
    for end in [match.end() for match in _SENTENCE_END.finditer(text)] + [len(text)]:
        span = _stripped(text, start, end)
        if span is not None:
            spans.append(span)
        start = end
    return spans


def _stripped(text: str, start: int, end: int) -> Span | None:
    piece = text[start:end]
    if not piece.strip():
        return None
    start += len(piece) - len(piece.lstrip())
    end -= len(piece) - len(piece.rstrip())
    return Span(start, end, text[start:end])


class Windowing:
    """Cuts documents into windows that fit the model's ``max_length`` with a claim."""

    def __init__(self, tokenizer: Any, max_length: int, window_sentences: int = 1) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.window_sentences = window_sentences

    def budget(self, claims: Sequence[str]) -> int:
        """Tokens a window may hold: ``max_length`` less the special tokens and the longest claim."""
        claim_tokens = max(len(ids) for ids in self._token_ids(list(claims)))
        return max(1, self.max_length - self.tokenizer.num_special_tokens_to_add(pair=True) - claim_tokens)

    def windows(self, document: str, claims: Sequence[str]) -> list[Span]:
        """Overlapping windows of whole sentences covering ``document``, each fitting with every claim."""
        budget = self.budget(claims)
        units = self._units(document, budget)
        lengths = [length for _, length in units]
        windows, first = [], 0
        while first < len(units):
            last, used = first, lengths[first]  # a unit alone always fits: _units cut the longer ones
            while (
                last + 1 < len(units)
                and last + 1 - first < self.window_sentences
                and used + lengths[last + 1] <= budget
            ):
                last += 1
                used += lengths[last]
            start, end = units[first][0].start, units[last][0].end
            windows.append(Span(start, end, document[start:end]))
            if last + 1 == len(units):
                break
            first = last if last > first else last + 1  # the last sentence starts the next window
        return windows

    def _units(self, document: str, budget: int) -> list[tuple[Span, int]]:
        """The sentences with their token counts; a sentence over ``budget`` tokens cut into pieces that fit."""
        sentences = sentence_spans(document)
        units: list[tuple[Span, int]] = []
        for sentence, ids in zip(sentences, self._token_ids([s.text for s in sentences]), strict=True):
            if len(ids) <= budget:
                units.append((sentence, len(ids)))
            else:
                units.extend(self._pieces(document, sentence, budget))
        return units

    def _pieces(self, document: str, sentence: Span, budget: int) -> list[tuple[Span, int]]:
        """``sentence`` cut at token boundaries into pieces of at most ``budget`` tokens."""
        offsets = self.tokenizer(sentence.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        pieces = []
        for first in range(0, len(offsets), budget):
            chunk = offsets[first : first + budget]
            span = _stripped(document, sentence.start + chunk[0][0], sentence.start + chunk[-1][1])
            if span is not None:
                pieces.append((span, len(chunk)))
        return pieces

    def relatedness(self, windows: Sequence[Span], claims: Sequence[str]) -> list[list[float]]:
        """For each claim, each window's share of the claim's distinctive tokens, 1 for the best window.

        A token's weight is its idf over the windows (``log(windows / windows holding it)``): a token
        found in every window, such as "the", weighs nothing.
        """
        window_tokens = [set(ids) for ids in self._token_ids([window.text for window in windows])]
        holding = Counter(token for tokens in window_tokens for token in tokens)
        table = []
        for claim_ids in self._token_ids(list(claims)):
            overlaps = [
                sum(math.log(len(windows) / holding[token]) for token in set(claim_ids) & tokens)
                for tokens in window_tokens
            ]
            best = max(overlaps)
            table.append([overlap / best if best > 0 else 0.0 for overlap in overlaps])
        return table

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]


def verify(
    model: ScoresModel,
    windowing: Windowing,
    windows: Sequence[Span],
    claims: Sequence[str],
    deadline: Checkable | None = None,
) -> list[Verdict]:
    """Each claim's verdict over ``windows``: every (window, claim) pair in one ``scores`` call, claims major."""
    pairs = [Pair(window.text, claim) for claim in claims for window in windows]
    predictions = predictions_of(model.labels, model.scores(pairs, deadline))
    verdicts = []
    for number, related in enumerate(windowing.relatedness(windows, claims)):
        per_window = predictions[number * len(windows) : (number + 1) * len(windows)]
        decider = deciding_window(
            related, [p.scores[ENTAILMENT] for p in per_window], [p.scores[CONTRADICTION] for p in per_window]
        )
        chosen = per_window[decider]
        verdicts.append(Verdict(chosen.label, chosen.scores, chosen.truncated, windows[decider]))
    return verdicts


def deciding_window(relatedness: Sequence[float], entailment: Sequence[float], contradiction: Sequence[float]) -> int:
    """The window with the highest ``relatedness + entailment - contradiction`` (the earliest on a tie)."""
    scores = [r + e - c for r, e, c in zip(relatedness, entailment, contradiction, strict=True)]
    return max(range(len(scores)), key=scores.__getitem__)
