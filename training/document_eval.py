"""Claims against whole documents: truncation vs the windows of ``POST /verify``, on SNLI test.

Each document is 30 SNLI test premises (distinct, shuffled, one per line's sentence), so
the evidence for a claim sits anywhere, often past the model's token limit. Its claims are
all the hypotheses of a few of those premises, and their gold labels are SNLI's. Scored two
ways with the service's own engine: the whole document and the claim as one pair, truncated
to ``max_length`` as ``/predict`` would; and the windows and aggregation of ``/verify``
(:mod:`nli_service.inference.documents`). The claims whose premise ends past the truncation
limit are counted apart, and the same claims against their own premise alone give the
model's pair-level accuracy. Run by ``make eval`` (``--documents N``; ``--only-documents``
for this row alone).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from training.nli_data import Example

PREMISES_PER_DOCUMENT = 30
CLAIMED_PREMISES = 3  # premises per document whose hypotheses are the claims
START, END = "<!-- eval-documents:start -->", "<!-- eval-documents:end -->"


@dataclass(frozen=True)
class Claim:
    hypothesis: str
    label: str
    premise: str
    premise_end: int  # offset just past its premise in the document


@dataclass(frozen=True)
class Document:
    text: str
    claims: list[Claim]


def build_documents(
    examples: Sequence[Example], documents: int, premises_with_claims: int, seed: int = 0
) -> list[Document]:
    """``documents`` documents of :data:`PREMISES_PER_DOCUMENT` distinct premises each, shuffled, one premise
    per sentence; the claims are every hypothesis of ``premises_with_claims`` of them, chosen at random."""
    by_premise: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_premise[example.premise.strip()].append(example)
    premises = sorted(by_premise)
    rng = random.Random(seed)
    built = []
    for _ in range(documents):
        chosen = rng.sample(premises, PREMISES_PER_DOCUMENT)  # already in random order
        built.append(document_of(chosen, rng.sample(chosen, premises_with_claims), by_premise))
    return built


def document_of(premises: Sequence[str], claimed: Sequence[str], examples: Mapping[str, Sequence[Example]]) -> Document:
    """``premises`` in this order, one a sentence; the claims are every hypothesis ``examples`` has for ``claimed``."""
    text, ends = "", {}
    for premise in premises:
        text += ("" if not text else " ") + (premise if premise.endswith((".", "!", "?")) else premise + ".")
        ends[premise] = len(text)
    return Document(
        text, [Claim(e.hypothesis, e.label, premise, ends[premise]) for premise in claimed for e in examples[premise]]
    )


def evaluate_documents(
    engine: Any, documents: Sequence[Document], window_sentences: int | None = None
) -> dict[str, Any]:
    """Accuracy of truncation, of windows (``/verify``'s default windows unless ``window_sentences``) and
    of the pairs alone; overall and for claims past the limit."""
    from nli_service.inference import documents as document_windows
    from nli_service.inference.types import Pair

    window_sentences = window_sentences or document_windows.DEFAULT_WINDOW_SENTENCES

    windowing = document_windows.Windowing(engine.tokenizer, engine.max_length, window_sentences)
    specials = engine.tokenizer.num_special_tokens_to_add(pair=True)
    rows: list[dict[str, Any]] = []
    windows_total, started = 0, time.perf_counter()
    for document in documents:
        claims = [claim.hypothesis for claim in document.claims]
        truncated = engine.predict([Pair(document.text, claim) for claim in claims])
        windows = windowing.windows(document.text, claims)
        windows_total += len(windows)
        verdicts = document_windows.verify(engine, windowing, windows, claims)
        alone = engine.predict([Pair(claim.premise, claim.hypothesis) for claim in document.claims])
        for claim, cut, verdict, pair in zip(document.claims, truncated, verdicts, alone, strict=True):
            claim_tokens = len(engine.tokenizer(claim.hypothesis, add_special_tokens=False)["input_ids"])
            before = len(engine.tokenizer(document.text[: claim.premise_end], add_special_tokens=False)["input_ids"])
            rows.append(
                {
                    "gold": claim.label,
                    "truncation": cut.label,
                    "windows": verdict.label,
                    "pair": pair.label,
                    "past_limit": before + claim_tokens + specials > engine.max_length,
                    "evidence_holds_premise": claim.premise in verdict.evidence.text,
                    "document_truncated": cut.truncated,
                }
            )
    return {
        "documents": len(documents),
        "claims": len(rows),
        "windows_per_document": windows_total / max(len(documents), 1),
        "max_length": engine.max_length,
        "window_sentences": window_sentences,
        "seconds": time.perf_counter() - started,
        "all": _accuracies(rows),
        "past_limit": _accuracies([row for row in rows if row["past_limit"]]),
        "within_limit": _accuracies([row for row in rows if not row["past_limit"]]),
        "documents_truncated": sum(row["document_truncated"] for row in rows) / max(len(rows), 1),
    }


def _accuracies(rows: list[dict[str, Any]]) -> dict[str, float]:
    count = len(rows)

    def accuracy(key: str) -> float:
        return sum(row[key] == row["gold"] for row in rows) / count if count else float("nan")

    return {
        "claims": count,
        "truncation": accuracy("truncation"),
        "windows": accuracy("windows"),
        "pair": accuracy("pair"),
        "evidence_holds_premise": sum(row["evidence_holds_premise"] for row in rows) / count if count else float("nan"),
    }


def run(model: str, documents: int, max_length: int, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """Build the documents from SNLI test and evaluate ``model`` on them at ``max_length``."""
    from nli_service.inference.engine import NLIEngine
    from training import nli_data

    engine = NLIEngine.from_pretrained(model, device="cpu", batch_size=batch_size, max_length=max_length)
    built = build_documents(nli_data.snli_test(), documents, CLAIMED_PREMISES, seed)
    return evaluate_documents(engine, built)


def render(results: dict[str, Any], snli_pair_accuracy: float | None = None) -> str:
    """The model card's section: the table and whether the targets are met (against ``snli_pair_accuracy``,
    else the pair-level accuracy of the same claims)."""
    rows = [("all claims", results["all"]), ("evidence past the limit", results["past_limit"])]
    rows.append(("evidence within the limit", results["within_limit"]))
    lines = [
        f"{results['documents']} documents of {PREMISES_PER_DOCUMENT} shuffled SNLI test premises "
        f"({results['windows_per_document']:.1f} windows each, every run of 1 to {results['window_sentences']} "
        f"adjacent sentences, at max_length {results['max_length']}; "
        f"{results['documents_truncated']:.0%} of the (document, claim) pairs are truncated), {results['claims']} "
        "claims (every hypothesis of a few of the premises, gold = their SNLI label); "
        f"{results['seconds']:.0f} s on this CPU.",
        "",
        "| claims | count | truncation | windows (`/verify`) | premise alone (pair level) "
        "| evidence window holds the premise |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows:
        lines.append(
            f"| {name} | {row['claims']} | {row['truncation']:.2%} | {row['windows']:.2%} | {row['pair']:.2%} | "
            f"{row['evidence_holds_premise']:.2%} |"
        )
    overall, past = results["all"], results["past_limit"]
    reference = snli_pair_accuracy if snli_pair_accuracy is not None else overall["pair"]
    within = reference - overall["windows"] <= 0.05
    gain = past["windows"] - past["truncation"]
    lines += [
        "",
        f"Targets: windows within 5 points of the pair-level SNLI accuracy ({reference:.2%}): "
        f"{overall['windows'] - reference:+.2%} ({'met' if within else 'NOT met'}); windows beat truncation by at "
        f"least 15 points on claims whose evidence lies past the limit: {gain:+.2%} "
        f"({'met' if gain >= 0.15 else 'NOT met'}).",
    ]
    return "\n".join(lines)
