"""How ``POST /verify``'s windows and aggregation rule were chosen: on SNLI validation, never on test.

``python -m training.verify_rules [--scores FILE]``. The bundled model was trained on SNLI
validation except the 5 % ``train_nli`` held out (seed 13), so the claims here are those
held-out pairs (memorised pairs would score ~94 %). Documents are built as the model card's
(:mod:`training.document_eval`): 30 shuffled validation premises each, a few of them with their
held-out hypotheses as claims. Every run of 1, 2 and 3 adjacent sentences is scored once
against every claim (saved to ``--scores``, reused when present); each rule then picks a window
per claim from that table, on each window set, in seconds. Printed per rule: accuracy overall
and on the claims whose premise ends past the 256-token limit, and how often the deciding window
holds the claim's premise, with the two targets of the card (within 5 points of the pair level;
at least 15 points over truncation past the limit).
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training.document_eval import PREMISES_PER_DOCUMENT, Document, document_of

MAX_LENGTH = 256
CLAIMED_PREMISES = 8  # per document: ~457 held-out premises make 57 documents
WINDOW_SETS = {"1": (1,), "2": (2,), "1+2": (1, 2), "1+2+3": (1, 2, 3)}  # sentences per window
# A rule: (window relatedness, entailment, contradiction) -> the deciding window.
Rule = Callable[[Sequence[float], Sequence[float], Sequence[float]], int]


def held_out_documents(documents: int, seed: int) -> list[Document]:
    """Documents whose claims are SNLI validation pairs the bundled model did not train on."""
    from training import nli_data
    from training.train_nli import split

    validation = nli_data.snli_validation()
    in_validation = {(e.premise, e.hypothesis) for e in validation}
    _, holdout = split(nli_data.training_examples(), 0.05, 13)  # as train_nli made the bundled model
    held: dict[str, list] = defaultdict(list)
    for example in holdout:
        if (example.premise, example.hypothesis) in in_validation:
            held[example.premise.strip()].append(example)
    rng = random.Random(seed)
    claimed_premises = sorted(held)
    rng.shuffle(claimed_premises)
    others = sorted({e.premise.strip() for e in validation} - set(held))
    built = []
    for number in range(min(documents, len(claimed_premises) // CLAIMED_PREMISES)):
        claimed = claimed_premises[number * CLAIMED_PREMISES : (number + 1) * CLAIMED_PREMISES]
        chosen = claimed + rng.sample(others, PREMISES_PER_DOCUMENT - len(claimed))
        rng.shuffle(chosen)
        built.append(document_of(chosen, claimed, held))
    return built


def score_table(documents: Sequence[Document]) -> dict[str, Any]:
    """Every (run of 1-3 adjacent sentences, claim) scored by the bundled model, with truncation and pair level."""
    from nli_service.inference.documents import Windowing, sentence_spans
    from nli_service.inference.engine import NLIEngine, predictions_of
    from nli_service.inference.loader import bundled_model_dir
    from nli_service.inference.types import Pair

    engine = NLIEngine.from_pretrained(str(bundled_model_dir()), device="cpu", max_length=MAX_LENGTH)
    specials = engine.tokenizer.num_special_tokens_to_add(pair=True)
    table = []
    for document in documents:
        claims = [claim.hypothesis for claim in document.claims]
        windows = Windowing(engine.tokenizer, MAX_LENGTH, window_sentences=3).windows(document.text, claims)
        candidates = [
            {"start": w.start, "end": w.end, "text": w.text, "size": len(sentence_spans(w.text))} for w in windows
        ]
        scores = predictions_of(engine.labels, engine.scores([Pair(w.text, c) for c in claims for w in windows]))
        truncated = engine.predict([Pair(document.text, claim) for claim in claims])
        alone = engine.predict([Pair(claim.premise, claim.hypothesis) for claim in document.claims])
        rows = []
        for number, claim in enumerate(document.claims):
            before = [
                engine.tokenizer(text, add_special_tokens=False)["input_ids"]
                for text in (document.text[: claim.premise_end], claim.hypothesis)
            ]
            rows.append(
                {
                    "hypothesis": claim.hypothesis,
                    "gold": claim.label,
                    "premise": claim.premise,
                    "past_limit": sum(map(len, before)) + specials > MAX_LENGTH,
                    "truncation": truncated[number].label,
                    "pair": alone[number].label,
                    "scores": [p.scores for p in scores[number * len(windows) : (number + 1) * len(windows)]],
                }
            )
        table.append({"text": document.text, "windows": candidates, "claims": rows})
    return {"documents": table}


def _max_e_minus_c(among: Sequence[int], entailment: Sequence[float], contradiction: Sequence[float]) -> int:
    return max(among, key=lambda window: (entailment[window] - contradiction[window], -window))


def _literal(among: Sequence[int], entailment: Sequence[float], contradiction: Sequence[float]) -> int:
    """The highest-entailment window against the highest-contradiction one: the larger probability decides."""
    best_e = max(among, key=lambda window: (entailment[window], -window))
    best_c = max(among, key=lambda window: (contradiction[window], -window))
    return best_e if entailment[best_e] >= contradiction[best_c] else best_c


def rules() -> dict[str, Rule]:
    """The candidates: SummaC-ZS's max(e - c), the literal max-entailment vs max-contradiction comparison, each
    over all windows or only the related ones, and the earlier highest relatedness + e - c."""
    from nli_service.inference.documents import deciding_window, related_windows

    found: dict[str, Rule] = {
        "max(e-c), all windows": lambda r, e, c: _max_e_minus_c(range(len(r)), e, c),
        "literal, all windows": lambda r, e, c: _literal(range(len(r)), e, c),
        "relatedness + e - c": lambda r, e, c: max(range(len(r)), key=lambda w: (r[w] + e[w] - c[w], -w)),
        "chosen: /verify's deciding_window": deciding_window,
    }
    for threshold in (0.5, 0.7, 0.9, 1.0):
        found[f"max(e-c), relatedness >= {threshold}"] = lambda r, e, c, t=threshold: _max_e_minus_c(
            related_windows(r, t), e, c
        )
        found[f"literal, relatedness >= {threshold}"] = lambda r, e, c, t=threshold: _literal(
            related_windows(r, t), e, c
        )
    return found


def evaluate(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Each rule on each window set, with :meth:`Windowing.relatedness` (a window: its least related sentence)."""
    from transformers import AutoTokenizer

    from nli_service.inference.documents import Windowing
    from nli_service.inference.loader import bundled_model_dir
    from nli_service.inference.types import Span

    windowing = Windowing(AutoTokenizer.from_pretrained(str(bundled_model_dir())), MAX_LENGTH)
    candidates = rules()
    counts: dict[tuple[str, str], dict[str, list[int]]] = {}
    for set_name, sizes in WINDOW_SETS.items():
        for document in table["documents"]:
            chosen = [n for n, w in enumerate(document["windows"]) if w["size"] in sizes]
            spans = [
                Span(document["windows"][n]["start"], document["windows"][n]["end"], document["windows"][n]["text"])
                for n in chosen
            ]
            claims = document["claims"]
            for claim, related in zip(
                claims, windowing.relatedness(spans, [c["hypothesis"] for c in claims]), strict=True
            ):
                scores = [claim["scores"][n] for n in chosen]
                entailment = [s["entailment"] for s in scores]
                contradiction = [s["contradiction"] for s in scores]
                for rule_name, rule in candidates.items():
                    decider = rule(related, entailment, contradiction)
                    right = max(scores[decider], key=scores[decider].get) == claim["gold"]
                    holds = claim["premise"] in spans[decider].text
                    tally = counts.setdefault((set_name, rule_name), {"all": [0, 0, 0], "past_limit": [0, 0, 0]})
                    for key in ("all", "past_limit") if claim["past_limit"] else ("all",):
                        tally[key][0] += 1
                        tally[key][1] += right
                        tally[key][2] += holds
    return [
        {
            "windows": set_name,
            "rule": rule_name,
            "accuracy": tally["all"][1] / tally["all"][0],
            "past_limit": tally["past_limit"][1] / max(tally["past_limit"][0], 1),
            "evidence_holds_premise": tally["all"][2] / tally["all"][0],
        }
        for (set_name, rule_name), tally in counts.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--documents", type=int, default=57, help="documents (57 at most: the held-out premises, 8 a document)"
    )
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--scores", type=Path, help="the score table: read if it exists, else written there")
    args = parser.parse_args()
    if args.scores and args.scores.exists():
        table = json.loads(args.scores.read_text())
    else:
        table = score_table(held_out_documents(args.documents, args.seed))  # ~8 min on one CPU thread
        if args.scores:
            args.scores.write_text(json.dumps(table))
    claims = [claim for document in table["documents"] for claim in document["claims"]]
    past = [claim for claim in claims if claim["past_limit"]]

    def accuracy(rows: list[dict], key: str) -> float:
        return sum(row[key] == row["gold"] for row in rows) / len(rows)

    pair, truncation = accuracy(claims, "pair"), accuracy(past, "truncation")
    print(
        f"{len(claims)} claims, {len(past)} past the limit; pair level {pair:.1%}, truncation past it {truncation:.1%}"
    )
    for row in sorted(evaluate(table), key=lambda row: -row["accuracy"]):
        met = pair - row["accuracy"] <= 0.05 and row["past_limit"] - truncation >= 0.15
        print(
            f"{row['windows']:6} {row['rule']:36} {row['accuracy']:6.1%} {row['past_limit']:6.1%} "
            f"{row['evidence_holds_premise']:6.1%} {'targets met' if met else ''}"
        )


if __name__ == "__main__":
    main()
