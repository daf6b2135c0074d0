"""Padding-free passes: the same logits as padded ones, the models they apply to, and the plan."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from nli_service.inference import padding_free
from nli_service.inference.engine import NLIEngine, plan_chunks
from nli_service.inference.types import Pair
from tests.model_factory import SAMPLE_PAIRS, build_model

# a short pair, a long one, and pairs between: a padded pass pads most of them
PAIRS = [Pair(*pair) for pair in SAMPLE_PAIRS] + [
    Pair("A man is playing a guitar in the park with two dogs and a child " * 3, "A man plays."),
    Pair("A dog.", "A cat."),
]


def _engines(model: str) -> tuple[NLIEngine, NLIEngine]:
    engines = []
    for enabled in (True, False):
        engine = NLIEngine.from_pretrained(model, padding_free=enabled, batch_size=16)
        engine.start(1)
        engines.append(engine)
    return engines[0], engines[1]


@pytest.fixture(scope="module")
def distilbert_model_dir(models_root: Path) -> Path:
    return build_model(models_root / "tiny-distilbert", architecture="distilbert")


@pytest.mark.parametrize("fixture", ["model_dir", "roberta_model_dir"])
def test_packed_passes_give_the_logits_of_padded_ones(
    fixture: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed, padded = _engines(str(request.getfixturevalue(fixture)))
    assert packed.backend.padding_free and not padded.backend.padding_free
    assert packed.describe()["padding_free"] is True
    passes: list[int] = []
    run_packed = padding_free.PaddingFree.__call__
    monkeypatch.setattr(
        padding_free.PaddingFree, "__call__", lambda self, inputs: passes.append(1) or run_packed(self, inputs)
    )
    assert torch.allclose(packed.logits(PAIRS), padded.logits(PAIRS), atol=1e-5)
    assert passes  # the pass of unequal pairs ran packed
    passes.clear()
    alone = torch.cat([packed.logits([pair]) for pair in PAIRS])  # a pair alone has no padding to drop
    assert not passes
    assert torch.allclose(alone, packed.logits(PAIRS), atol=1e-5)


def test_the_bundled_minilm_runs_padding_free_with_its_padded_answers() -> None:
    packed, padded = _engines("bundled")
    assert packed.backend.padding_free
    assert torch.allclose(packed.logits(PAIRS), padded.logits(PAIRS), atol=1e-5)
    assert [p.label for p in packed.predict(PAIRS)] == [p.label for p in padded.predict(PAIRS)]


def test_a_model_of_another_layout_runs_padded(distilbert_model_dir: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger=padding_free.__name__):
        engine, padded = _engines(str(distilbert_model_dir))
    assert not engine.backend.padding_free and engine.backend.pad_price == 1.0
    assert "not for DistilBertForSequenceClassification" in caplog.text
    assert torch.equal(engine.logits(PAIRS), padded.logits(PAIRS))


def test_a_packing_that_disagrees_with_padded_passes_is_not_used(roberta_model_dir: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(padding_free, "_position_offset", lambda model: 0)  # RoBERTa's positions start at 2
    with caplog.at_level(logging.WARNING, logger=padding_free.__name__):
        engine, padded = _engines(str(roberta_model_dir))
    assert not engine.backend.padding_free
    assert "differs from padded passes" in caplog.text
    assert torch.allclose(engine.logits(PAIRS), padded.logits(PAIRS), atol=1e-6)


def test_padding_free_can_be_turned_off_in_the_settings(make_app) -> None:
    for value, expected in (("false", False), ("true", True)):
        with make_app(NLI_PADDING_FREE=value).test_client() as client:
            assert client.get("/model").get_json()["padding_free"] is expected


def test_a_padding_free_plan_keeps_short_pairs_with_a_longer_one() -> None:
    lengths = [40, 20, 20, 20, 20, 20, 20, 20]
    assert len(plan_chunks(lengths, max_pairs=16, max_tokens=8192)) == 2  # padded: the long pair alone
    assert plan_chunks(lengths, max_pairs=16, max_tokens=8192, pad_price=padding_free.PAD_PRICE) == [list(range(8))]
    very_long = [400] + [20] * 7  # its padding would cost more than a pass
    assert len(plan_chunks(very_long, max_pairs=16, max_tokens=8192, pad_price=padding_free.PAD_PRICE)) == 2
