"""Claims checked against a whole document: overlapping windows of sentences, scored in one call, aggregated per claim.

A cross-encoder reads at most ``max_length`` tokens, so a long document paired with a claim
would be truncated and its end never seen. Here the document is cut into sentences (Latin
``. ! ?`` before a space, Chinese and Japanese ``。！？`` with or without one, and line breaks),
a sentence longer than a window into pieces at token boundaries, and the windows are every run
of 1 to ``window_sentences`` adjacent sentences that fits ``max_length`` together with the
longest claim: with 2, each sentence alone and each pair of neighbours, so windows overlap and
two adjacent sentences are always read together as well as apart. Every (window, claim) pair
goes through the model in one call.

Aggregation, per claim: SummaC-ZS's score, the highest ``P(entailment) - P(contradiction)``
over the windows, taken among the windows the claim is about: those whose every sentence has
a relatedness of at least :data:`RELATED` (all windows if none has). A sentence's relatedness
(0 to 1) is the idf-weighted overlap of its token ids with the claim's (idf over the
document's sentences), divided by the best sentence's. Without that restriction, a model
trained on SNLI calls almost every *unrelated* sentence a contradiction (p ≈ 0.98), and a
related sentence joined to an unrelated one drifts towards entailment. The claim's result is
the deciding window's result, unchanged, and that window is its evidence.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from nli_service.inference.engine import Checkable, ScoresModel, predictions_of
from nli_service.inference.types import CONTRADICTION, ENTAILMENT, Pair, Span, Verdict

DEFAULT_WINDOW_SENTENCES = 2
RELATED = 0.5
"""Least relatedness of every sentence of a window for the claim to be about it (chosen on SNLI validation)."""

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

    def __init__(self, tokenizer: Any, max_length: int, window_sentences: int = DEFAULT_WINDOW_SENTENCES) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.window_sentences = window_sentences

    def budget(self, claims: Sequence[str]) -> int:
        """Tokens a window may hold: ``max_length`` less the special tokens and the longest claim."""
        claim_tokens = max(len(ids) for ids in self._token_ids(list(claims)))
        return max(1, self.max_length - self.tokenizer.num_special_tokens_to_add(pair=True) - claim_tokens)

    def windows(self, document: str, claims: Sequence[str]) -> list[Span]:
        """Every run of 1 to ``window_sentences`` adjacent sentences that fits with every claim, in
        document order (by first sentence, then shorter first)."""
        budget = self.budget(claims)
        units = self._units(document, budget)
        windows = []
        for first in range(len(units)):
            used = 0  # a unit alone always fits: _units cut the longer ones
            for last in range(first, min(first + self.window_sentences, len(units))):
                used += units[last][1]
                if used > budget:
                    break
                start, end = units[first][0].start, units[last][0].end
                windows.append(Span(start, end, document[start:end]))
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
        """For each claim, each window's relatedness: that of its least related sentence.

        A sentence's relatedness is the claim's share of the document's distinctive tokens found in
        it, 1 for the best sentence; a token weighs its idf over the sentences (``log(sentences /
        sentences holding it)``): a token found in every sentence, such as "the", weighs nothing.
        """
        members = [
            [
                Span(window.start + part.start, window.start + part.end, part.text)
                for part in sentence_spans(window.text)
            ]
            for window in windows
        ]
        sentences = list(dict.fromkeys(sentence for parts in members for sentence in parts))
        sentence_tokens = [set(ids) for ids in self._token_ids([sentence.text for sentence in sentences])]
        holding = Counter(token for tokens in sentence_tokens for token in tokens)
        table = []
        for claim_ids in self._token_ids(list(claims)):
            overlaps = [
                sum(math.log(len(sentences) / holding[token]) for token in set(claim_ids) & tokens)
                for tokens in sentence_tokens
            ]
            best = max(overlaps, default=0.0)
            related = {
                sentence: overlap / best if best > 0 else 0.0
                for sentence, overlap in zip(sentences, overlaps, strict=True)
            }
            table.append([min(related[sentence] for sentence in parts) for parts in members])
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
    """SummaC-ZS among the windows the claim is about: the highest ``entailment - contradiction`` among the
    windows whose ``relatedness`` is at least :data:`RELATED` (among all if none is), the earliest on a tie."""
    return max(related_windows(relatedness), key=lambda window: (entailment[window] - contradiction[window], -window))


def related_windows(relatedness: Sequence[float], least: float = RELATED) -> list[int]:
    """The windows whose relatedness is at least ``least``; every window if none is."""
    return [window for window, value in enumerate(relatedness) if value >= least] or list(range(len(relatedness)))
