"""Zero-shot classification: the pipeline's maths, labels by name, one engine call, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REORDERED_ID2LABEL
from model_factory import build_model

from nli_service.inference.engine import NLIEngine
from nli_service.inference.zero_shot import classify

TEXTS = ["A man is playing a guitar in the park.", "The dog is sleeping inside the house."]
LABELS = ["music", "animal", "sport", "food"]
TEMPLATE = "This example is about {}."


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> NLIEngine:
    return NLIEngine.from_pretrained(str(model_dir))


@pytest.fixture(scope="module")
def pipeline(engine: NLIEngine):
    from transformers import pipeline

    return pipeline("zero-shot-classification", model=engine.model, tokenizer=engine.tokenizer, device="cpu")


@pytest.mark.parametrize("multi_label", [False, True])
def test_results_match_the_transformers_pipeline(engine, pipeline, multi_label: bool) -> None:
    ours = classify(engine, TEXTS, LABELS, TEMPLATE, multi_label)
    for text, result in zip(TEXTS, ours, strict=True):
        expected = pipeline(text, candidate_labels=LABELS, hypothesis_template=TEMPLATE, multi_label=multi_label)
        theirs = dict(zip(expected["labels"], expected["scores"], strict=True))
        assert set(result.labels) == set(LABELS)
        for label, score in zip(result.labels, result.scores, strict=True):
            assert score == pytest.approx(theirs[label], abs=1e-5)
        assert result.scores == sorted(result.scores, reverse=True)
    if not multi_label:
        assert all(sum(result.scores) == pytest.approx(1.0, abs=1e-5) for result in ours)


def test_contradiction_and_entailment_are_found_by_name(models_root: Path) -> None:
    # This model's outputs are (neutral, contradiction, entailment): position-based code would
    # take neutral for contradiction. Multi-label must use the logits named by id2label.
    from nli_service.inference.types import zero_shot_pairs

    folder = build_model(models_root / "reordered-random", id2label=REORDERED_ID2LABEL, seed=3)
    engine = NLIEngine.from_pretrained(str(folder))
    result = classify(engine, TEXTS[:1], LABELS, TEMPLATE, multi_label=True)[0]
    raw = engine.logits(zero_shot_pairs(TEXTS[:1], LABELS, TEMPLATE))
    expected = torch.softmax(raw[:, [1, 2]], dim=-1)[:, 1]  # contradiction=1, entailment=2
    assert len(set(expected.tolist())) == len(LABELS), "scores differ between labels"
    assert dict(zip(result.labels, result.scores, strict=True)) == pytest.approx(
        dict(zip(LABELS, expected.tolist(), strict=True)), abs=1e-6
    )


def test_all_label_pairs_go_through_the_engine_in_one_call(model_dir: Path) -> None:
    engine = NLIEngine.from_pretrained(str(model_dir), batch_size=64)
    forwards: list[int] = []
    engine.observer = lambda pairs, tokens, seconds: forwards.append(pairs)
    classify(engine, TEXTS, LABELS, TEMPLATE)
    assert forwards == [len(TEXTS) * len(LABELS)]


# -- over HTTP --------------------------------------------------------------------


def test_zero_shot_endpoint_single_and_many(client, engine) -> None:
    single = client.post("/zero-shot", json={"text": TEXTS[0], "labels": LABELS, "hypothesis_template": TEMPLATE})
    assert single.status_code == 200, single.get_data(as_text=True)
    body = single.get_json()
    assert set(body) == {"labels", "scores", "truncated", "model"}
    expected = classify(engine, TEXTS[:1], LABELS, TEMPLATE)[0]
    assert body["labels"] == expected.labels and body["scores"] == pytest.approx(expected.scores, abs=1e-6)
    many = client.post("/zero-shot", json={"texts": TEXTS, "labels": LABELS, "multi_label": True}).get_json()
    assert len(many["results"]) == 2 and many["model"]
    assert many["results"][0]["labels"] == classify(engine, TEXTS[:1], LABELS, multi_label=True)[0].labels


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"labels": ["a"]}, 400, "either"),
        ({"text": "x", "texts": ["y"], "labels": ["a"]}, 400, "either"),
        ({"text": "x"}, 400, "labels is required"),
        ({"text": "x", "labels": []}, 400, "1 to 64"),
        ({"text": "x", "labels": [f"l{i}" for i in range(65)]}, 400, "1 to 64"),
        ({"text": "x", "labels": ["a", "a"]}, 400, "unique"),
        ({"text": "x", "labels": ["a", " "]}, 400, "labels[1] must not be empty"),
        ({"text": "x", "labels": "a,b"}, 400, "array"),
        ({"text": "x", "labels": ["a"], "hypothesis_template": "no slot"}, 400, "{}"),
        ({"text": "x", "labels": ["a"], "hypothesis_template": "{} and {}"}, 400, "only one"),
        ({"text": "x", "labels": ["a"], "hypothesis_template": "{name} {}"}, 400, "only one"),
        ({"text": "x", "labels": ["a"], "multi_label": "yes"}, 400, "multi_label"),
        ({"text": "", "labels": ["a"]}, 400, "text must not be empty"),
        ({"texts": [], "labels": ["a"]}, 400, "at least one"),
        ({"texts": ["x"] * 100, "labels": [f"l{i}" for i in range(3)]}, 413, "limit"),
    ],
)
def test_invalid_zero_shot_requests(client, body: dict, status: int, fragment: str) -> None:
    response = client.post("/zero-shot", json=body)
    assert response.status_code == status
    assert fragment in response.get_json()["error"]
