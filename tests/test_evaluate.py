"""The evaluation harness: its metrics, its data readers, and HTTP == engine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from serving import GUNICORN, service_env

from training import nli_data
from training.evaluate import (
    classification_metrics,
    engine_scorer,
    expected_calibration_error,
    http_scorer,
    human_agreement,
)
from training.nli_data import Example, VotedExample

needs_data = pytest.mark.skipif(not nli_data.DATA_DIR.is_dir(), reason="shared NLI data not present")


def _scores(entailment: float, neutral: float, contradiction: float) -> dict[str, float]:
    return {"entailment": entailment, "neutral": neutral, "contradiction": contradiction}


def test_accuracy_and_macro_f1() -> None:
    examples = [Example("p", "h", label) for label in ("entailment", "entailment", "neutral", "contradiction")]
    scores = [_scores(0.9, 0.05, 0.05), _scores(0.1, 0.8, 0.1), _scores(0.1, 0.8, 0.1), _scores(0.1, 0.1, 0.8)]
    metrics = classification_metrics(examples, scores)
    assert metrics["accuracy"] == 0.75
    # F1: contradiction 1, entailment 2/3, neutral 2/3
    assert metrics["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_rte_is_two_way() -> None:
    examples = [Example("p", "h", "not_entailment"), Example("p", "h", "entailment")]
    metrics = classification_metrics(examples, [_scores(0.1, 0.1, 0.8), _scores(0.2, 0.7, 0.1)])
    assert metrics["accuracy"] == 0.5


def test_calibration_error_of_a_perfectly_calibrated_and_an_overconfident_model() -> None:
    examples = [Example("p", "h", "entailment")] * 2
    assert expected_calibration_error(examples, [_scores(1.0, 0, 0)] * 2) == pytest.approx(0.0)
    wrong = [Example("p", "h", "neutral")] * 2
    assert expected_calibration_error(wrong, [_scores(0.9, 0.05, 0.05)] * 2) == pytest.approx(0.9)


def test_human_agreement() -> None:
    example = VotedExample("p", "h", {"entailment": 0.7, "neutral": 0.3})
    same = human_agreement([example], [_scores(0.7, 0.3, 0.0)])
    assert same["jsd"] == pytest.approx(0.0, abs=1e-9) and same["majority_accuracy"] == 1.0
    opposite = human_agreement([VotedExample("p", "h", {"entailment": 1.0})], [_scores(0, 0, 1.0)])
    assert opposite["jsd"] == pytest.approx(1.0) and opposite["majority_accuracy"] == 0.0
    assert not math.isnan(opposite["jsd"])


@needs_data
def test_readers_match_the_manifest_and_keep_training_and_evaluation_apart() -> None:
    assert len(nli_data.snli_test()) == 9824 and len(nli_data.snli_validation()) == 9842
    assert [len(nli_data.anli_test(r)) for r in (1, 2, 3)] == [1000, 1000, 1200]
    assert len(nli_data.rte_validation()) == 277
    assert len(nli_data.chaosnli("snli")) == 1514 and len(nli_data.chaosnli("mnli_m")) == 1599
    sick = nli_data.sick_test()
    assert len(sick) == 4906 and {e.label for e in sick} == set(nli_data.NLI_LABELS)
    even, odd = nli_data.mnli_even(), nli_data.mnli_odd()
    assert len(even) + len(odd) == 9815
    assert not {(e.premise, e.hypothesis) for e in even} & {(e.premise, e.hypothesis) for e in odd}
    trainable = {(e.premise, e.hypothesis) for e in nli_data.training_examples()}
    assert not trainable & {(e.premise, e.hypothesis) for e in nli_data.snli_test()}


@needs_data
def test_scores_over_http_equal_the_engines(model_dir: Path, tmp_path: Path, services) -> None:
    pairs = [(e.premise, e.hypothesis) for e in nli_data.snli_test()[:150]]
    direct = engine_scorer(str(model_dir), batch_size=32)(pairs)
    service = services.start(GUNICORN, service_env(NLI_MODEL=model_dir, NLI_WORKERS=2, NLI_LOG_DIR=tmp_path))
    try:
        service.wait_ready()
        served = http_scorer(service.url, chunk=64)(pairs)
    finally:
        service.stop()
    assert [max(s, key=s.get) for s in served] == [max(s, key=s.get) for s in direct]
    assert max(abs(a[k] - b[k]) for a, b in zip(served, direct, strict=True) for k in a) < 1e-5
