"""Evaluate an NLI model with the service's own engine, or through a running service.

``python -m training.evaluate [--model M] [--url URL] [--sets snli,mnli,...] [--write-card]``
(``make eval``). Reports accuracy and macro-F1 on SNLI test, odd-index MNLI dev-matched,
ANLI R1-R3 test, SICK test and RTE (entailment vs not); expected calibration error on
SNLI test; agreement with ChaosNLI's 100 human votes per pair (mean Jensen-Shannon
distance, accuracy against the majority); pairs/s. ``--url`` sends the same pairs to a
running service's ``/batch-predict`` instead: the accuracy must be identical.
``--through-service`` also starts the production service (Gunicorn, 2 workers) on the
same model and sends it every SNLI test pair: its labels and accuracy must equal the
engine's. Each set also gets a PNG of its confusion matrix and reliability diagram
(training/charts.py), in ``--charts`` (default training/runs/eval-charts). ``--write-card``
writes the table into the model card and the project README, and the charts into docs/images/,
embedded in the model card.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from training import charts as charts_module
from training import document_eval, nli_data
from training.nli_data import NLI_LABELS, Example, VotedExample

Scores = list[dict[str, float]]
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SETS: dict[str, Callable[[], list[Example]]] = {
    "snli_test": nli_data.snli_test,
    "mnli_m_odd": nli_data.mnli_odd,
    "anli_r1": lambda: nli_data.anli_test(1),
    "anli_r2": lambda: nli_data.anli_test(2),
    "anli_r3": lambda: nli_data.anli_test(3),
    "sick_test": nli_data.sick_test,
    "rte_val": nli_data.rte_validation,
}
START, END = "<!-- eval:start -->", "<!-- eval:end -->"


def engine_scorer(
    model: str, batch_size: int, backend: str = "auto", quantize: str = "none"
) -> Callable[[Sequence[tuple[str, str]]], Scores]:
    """Score pairs with the service's engine (same code path as the HTTP service)."""
    import torch

    from nli_service.inference.engine import NLIEngine
    from nli_service.inference.types import Pair

    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    engine = NLIEngine.from_pretrained(
        model,
        device="cpu",
        batch_size=batch_size,
        backend=backend,
        quantize=quantize,
        calibration_data=str(nli_data.DATA_DIR / "snli" / "validation.tsv"),
    )
    return lambda pairs: [p.scores for p in engine.predict([Pair(a, b) for a, b in pairs])]


def http_scorer(url: str, chunk: int) -> Callable[[Sequence[tuple[str, str]]], Scores]:
    """Score pairs through a running service's /batch-predict."""

    def score(pairs: Sequence[tuple[str, str]]) -> Scores:
        out: Scores = []
        for start in range(0, len(pairs), chunk):
            body = {"pairs": [{"premise": a, "hypothesis": b} for a, b in pairs[start : start + chunk]]}
            request = urllib.request.Request(
                f"{url.rstrip('/')}/batch-predict", json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=300) as response:
                out += [r["scores"] for r in json.loads(response.read())["results"]]
        return out

    return score


def _label(scores: dict[str, float], two_way: bool) -> str:
    top = max(scores, key=scores.__getitem__)
    return top if not two_way or top == "entailment" else "not_entailment"


def _is_two_way(examples: list[Example]) -> bool:
    return any(e.label == "not_entailment" for e in examples)


def classification_metrics(examples: list[Example], scores: Scores) -> dict[str, float]:
    two_way = _is_two_way(examples)
    predicted = [_label(s, two_way) for s in scores]
    gold = [e.label for e in examples]
    labels = sorted(set(gold))
    f1s = []
    for label in labels:
        tp = sum(p == g == label for p, g in zip(predicted, gold, strict=True))
        fp = sum(p == label != g for p, g in zip(predicted, gold, strict=True))
        fn = sum(g == label != p for p, g in zip(predicted, gold, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    accuracy = sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)
    return {"pairs": len(gold), "accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s)}


def confusion_matrix(examples: list[Example], scores: Scores) -> dict[str, list]:
    """Counts of (gold label, predicted label): ``counts[i][j]`` pairs of ``labels[i]`` predicted ``labels[j]``."""
    two_way = _is_two_way(examples)
    labels = ["entailment", "not_entailment"] if two_way else list(NLI_LABELS)
    counts = [[0] * len(labels) for _ in labels]
    for example, score in zip(examples, scores, strict=True):
        counts[labels.index(example.label)][labels.index(_label(score, two_way))] += 1
    return {"labels": labels, "counts": counts}


def reliability(examples: list[Example], scores: Scores, bins: int = 15) -> list[dict[str, float]]:
    """Per confidence bin (the predicted label's probability): its pairs, mean confidence and accuracy.
    Two-way sets count entailment against the rest (confidence: p(entailment) or 1 - p(entailment))."""
    two_way = _is_two_way(examples)
    buckets: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for example, score in zip(examples, scores, strict=True):
        label = _label(score, two_way)
        confidence = score[label] if label in score else 1.0 - score["entailment"]
        buckets[min(int(confidence * bins), bins - 1)].append((confidence, label == example.label))
    return [
        {
            "low": number / bins,
            "high": (number + 1) / bins,
            "pairs": len(bucket),
            "confidence": sum(c for c, _ in bucket) / len(bucket) if bucket else 0.0,
            "accuracy": sum(ok for _, ok in bucket) / len(bucket) if bucket else 0.0,
        }
        for number, bucket in enumerate(buckets)
    ]


def expected_calibration_error(examples: list[Example], scores: Scores, bins: int = 15) -> float:
    total = len(examples)
    return sum(b["pairs"] / total * abs(b["confidence"] - b["accuracy"]) for b in reliability(examples, scores, bins))


def human_agreement(examples: list[VotedExample], scores: Scores) -> dict[str, float]:
    """Mean Jensen-Shannon distance to the human vote distribution, and majority accuracy."""

    def kl(p: list[float], q: list[float]) -> float:
        return sum(a * math.log2(a / b) for a, b in zip(p, q, strict=True) if a > 0)

    distances, hits = [], 0
    for example, score in zip(examples, scores, strict=True):
        human = [example.votes.get(label, 0.0) for label in NLI_LABELS]
        model = [score[label] for label in NLI_LABELS]
        middle = [(a + b) / 2 for a, b in zip(human, model, strict=True)]
        distances.append(math.sqrt(max(0.0, (kl(human, middle) + kl(model, middle)) / 2)))
        hits += max(example.votes, key=example.votes.get) == max(score, key=score.__getitem__)
    return {"pairs": len(examples), "jsd": sum(distances) / len(distances), "majority_accuracy": hits / len(examples)}


def agreement(scores: Scores, reference: Scores) -> dict[str, float]:
    """How many top labels ``scores`` shares with ``reference``, and the largest probability difference."""
    pairs = list(zip(scores, reference, strict=True))
    return {
        "same_labels": sum(max(a, key=a.get) == max(b, key=b.get) for a, b in pairs),
        "max_probability_difference": max(abs(a[k] - b[k]) for a, b in pairs for k in a),
    }


def served_equals_direct(model: str, examples: list[Example], direct: Scores) -> dict[str, float]:
    """Score ``examples`` through a freshly started production service and compare with ``direct``."""
    from bench.server import Service

    service = Service({"NLI_MODEL": model, "NLI_WORKERS": "2"})
    try:
        service.wait_ready(workers=2)
        served = http_scorer(service.url, 64)([(e.premise, e.hypothesis) for e in examples])
    finally:
        service.stop()
    return {
        "pairs": len(examples),
        "accuracy_served": classification_metrics(examples, served)["accuracy"],
        "accuracy_direct": classification_metrics(examples, direct)["accuracy"],
        **agreement(served, direct),
    }


VARIANTS = (("onnx", "none"), ("onnx", "int8"))  # int8 is ONNX int8 (there is no torch int8 backend)


def compare_backends(model: str, examples: list[Example], direct: Scores, batch_size: int) -> dict[str, dict]:
    """SNLI test through every other backend / quantisation: accuracy, agreement with ``direct``, speed."""
    rows: dict[str, dict] = {}
    pairs = [(e.premise, e.hypothesis) for e in examples]
    for backend, quantize in VARIANTS:
        score = engine_scorer(model, batch_size, backend, quantize)
        started = time.perf_counter()
        scores = score(pairs)
        seconds = time.perf_counter() - started
        agree = agreement(scores, direct)
        rows[f"{backend}/{quantize}"] = {
            "accuracy": classification_metrics(examples, scores)["accuracy"],
            "label_agreement": agree["same_labels"] / len(examples),
            "max_probability_difference": agree["max_probability_difference"],
            "pairs_per_second": len(examples) / seconds,
        }
        print(f"backend {backend}/{quantize}", json.dumps(rows[f"{backend}/{quantize}"]), flush=True)
    return rows


def evaluate(
    score: Callable[[Sequence[tuple[str, str]]], Scores],
    names: list[str],
    through_service: str | None = None,
    backends_of: tuple[str, int] | None = None,
) -> dict:
    """Metrics of every set in ``names`` and of ChaosNLI; with ``through_service`` (a model),
    also the SNLI test pairs through the running service; with ``backends_of`` (model, batch
    size), also SNLI test through the other backends."""
    results: dict = {"sets": {}, "charts": {}}
    pairs_done, started = 0, time.perf_counter()
    for name in names:
        examples = SETS[name]()
        set_started = time.perf_counter()
        scores = score([(e.premise, e.hypothesis) for e in examples])
        pairs_done += len(examples)
        results["sets"][name] = classification_metrics(examples, scores)
        results["charts"][name] = {
            "confusion": confusion_matrix(examples, scores),
            "reliability": reliability(examples, scores),
        }
        if name == "snli_test":
            results["sets"][name]["ece"] = expected_calibration_error(examples, scores)
            results["sets"][name]["pairs_per_second"] = len(examples) / (time.perf_counter() - set_started)
            side_started = time.perf_counter()  # pairs/s counts this engine only
            if through_service:
                results["through_service"] = served_equals_direct(through_service, examples, scores)
                print("through_service", json.dumps(results["through_service"]), flush=True)
            if backends_of:
                results["backends"] = compare_backends(backends_of[0], examples, scores, backends_of[1])
            started += time.perf_counter() - side_started
        print(name, json.dumps(results["sets"][name]), flush=True)
    for subset in ("snli", "mnli_m"):
        examples = nli_data.chaosnli(subset)
        results[f"chaosnli_{subset}"] = human_agreement(examples, score([(e.premise, e.hypothesis) for e in examples]))
        pairs_done += len(examples)
        print(f"chaosnli_{subset}", json.dumps(results[f"chaosnli_{subset}"]), flush=True)
    results["pairs_per_second"] = pairs_done / (time.perf_counter() - started)
    return results


def render(model: str, results: dict) -> str:
    lines = [
        f"Model `{model}`, produced by `make eval` ({results['pairs_per_second']:.0f} pairs/s on this CPU; "
        "pairs/s figures are single runs on a shared machine, `make bench` has side-by-side medians).",
        "",
    ]
    lines += ["| set | pairs | accuracy | macro-F1 |", "|---|---|---|---|"]
    for name, row in results["sets"].items():
        lines.append(f"| {name} | {row['pairs']} | {row['accuracy']:.2%} | {row['macro_f1']:.3f} |")
    if "snli_test" in results["sets"]:
        lines += ["", f"Expected calibration error on SNLI test (15 bins): {results['sets']['snli_test']['ece']:.3f}."]
    if "backends" in results:
        snli = results["sets"]["snli_test"]
        lines += [
            "",
            "| backend (SNLI test) | accuracy | labels as torch fp32 | max probability difference | pairs/s |",
            "|---|---|---|---|---|",
            f"| torch/none | {snli['accuracy']:.2%} | 100% | 0 | {snli['pairs_per_second']:.0f} |",
        ]
        for variant, row in results["backends"].items():
            lines.append(
                f"| {variant} | {row['accuracy']:.2%} | {row['label_agreement']:.2%} | "
                f"{row['max_probability_difference']:.3f} | {row['pairs_per_second']:.0f} |"
            )
    served = results.get("through_service")
    if served:
        lines += [
            "",
            f"Through the service (Gunicorn, 2 workers, `/batch-predict`): SNLI test accuracy "
            f"{served['accuracy_served']:.2%} (engine: {served['accuracy_direct']:.2%}), "
            f"{served['same_labels']}/{served['pairs']} labels identical, "
            f"largest probability difference {served['max_probability_difference']:.1e}.",
        ]
    lines += [
        "",
        "| ChaosNLI | pairs | mean JS distance to human votes | accuracy vs human majority |",
        "|---|---|---|---|",
    ]
    for subset in ("snli", "mnli_m"):
        row = results.get(f"chaosnli_{subset}")
        if row:
            lines.append(f"| {subset} | {row['pairs']} | {row['jsd']:.3f} | {row['majority_accuracy']:.2%} |")
    return "\n".join(lines)


def write_between_markers(path: Path, table: str, start: str = START, end: str = END) -> None:
    text = path.read_text()
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1]
        path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled", help="model folder, hub id or 'bundled' (default)")
    parser.add_argument("--url", help="evaluate through this running service instead of the engine")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, from: {', '.join(SETS)}")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto", help="auto: onnx for int8")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none")
    parser.add_argument(
        "--through-service", action="store_true", help="also score SNLI test through the started Gunicorn service"
    )
    parser.add_argument("--compare-backends", action="store_true", help="also score SNLI test with ONNX fp32 / int8")
    parser.add_argument("--write-card", action="store_true", help="put the table in the model card and README")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--charts", type=Path, help="folder of the PNGs (default: docs/images with --write-card, else training/runs)"
    )
    parser.add_argument(
        "--documents", type=int, default=30, help="documents of 30 SNLI test premises for /verify's row (0: none)"
    )
    parser.add_argument(
        "--document-max-length", type=int, default=256, help="max_length of the document row (30 premises: ~420 tokens)"
    )
    parser.add_argument("--only-documents", action="store_true", help="only the document row (truncation vs windows)")
    args = parser.parse_args()
    if args.only_documents:
        _document_row(args, None)
        return

    names = [name for name in args.sets.split(",") if name]
    if args.url:
        score, described = http_scorer(args.url, 64), args.url
    else:
        score = engine_scorer(args.model, args.batch_size, args.backend, args.quantize)
        described = f"{args.model} ({args.backend}/{args.quantize})"
    compares = args.through_service or args.compare_backends
    if compares and (args.url or args.backend == "onnx" or args.quantize != "none"):
        parser.error("--through-service and --compare-backends start from the torch fp32 engine; drop --url/--backend")
    results = evaluate(
        score,
        names,
        through_service=args.model if args.through_service else None,
        backends_of=(args.model, args.batch_size) if args.compare_backends else None,
    )
    table = render(described, results)
    print("\n" + table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    default_charts = PROJECT_ROOT / ("docs/images" if args.write_card else "training/runs/eval-charts")
    charts = charts_module.write_charts(results["charts"], args.charts or default_charts)
    print("charts:", *charts.values(), sep="\n  ")
    if args.write_card:
        from nli_service.inference.loader import bundled_model_dir

        card = bundled_model_dir() / "README.md"
        images = "\n\n".join(
            f"![{name}: {charts_module.TITLE}]({os.path.relpath(path, card.parent)})" for name, path in charts.items()
        )
        write_between_markers(card, f"{table}\n\n{images}")
        write_between_markers(PROJECT_ROOT / "README.md", table)
    if args.documents:
        _document_row(args, results["sets"].get("snli_test", {}).get("accuracy"))


def _document_row(args: argparse.Namespace, snli_accuracy: float | None) -> None:
    """The claims-against-documents row (training/document_eval.py), printed and, with --write-card, in the card."""
    results = document_eval.run(args.model, args.documents, args.document_max_length, args.batch_size)
    section = document_eval.render(results, snli_accuracy)
    print("\n" + section)
    if args.json:
        args.json.with_suffix(".documents.json").write_text(json.dumps(results, indent=2))
    if args.write_card:
        from nli_service.inference.loader import bundled_model_dir

        write_between_markers(bundled_model_dir() / "README.md", section, document_eval.START, document_eval.END)


if __name__ == "__main__":
    main()
