"""The engine alone: batching must not change results, truncation, chunk planning."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import torch
from model_factory import SAMPLE_PAIRS, WORDS

from nli_service.inference.engine import FORWARD_OVERHEAD_TOKENS, NLIEngine, plan_chunks
from nli_service.inference.loader import ModelLoadError
from nli_service.inference.types import NLI_LABELS, Pair
from nli_service.serving.deadline import Deadline, DeadlineExceeded


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> NLIEngine:
    return NLIEngine.from_pretrained(str(model_dir), batch_size=64, max_batch_tokens=64 * 128)


@pytest.mark.parametrize("architecture", ["bert", "roberta"])
@pytest.mark.parametrize("batch_size", [64, 8])
def test_a_pair_scores_the_same_alone_and_among_64_long_neighbours(
    architecture: str, batch_size: int, model_dir: Path, roberta_model_dir: Path
) -> None:
    folder = roberta_model_dir if architecture == "roberta" else model_dir
    engine = NLIEngine.from_pretrained(str(folder), batch_size=batch_size, max_batch_tokens=64 * 128)
    rng = random.Random(1)
    batch = [Pair(_sentence(rng, rng.randint(40, 120)), _sentence(rng, rng.randint(5, 30))) for _ in range(63)]
    probe = Pair(*SAMPLE_PAIRS[0])
    batch.insert(17, probe)
    alone = engine.predict([probe])[0]
    together = engine.predict(batch)
    spread = max(r.scores["entailment"] for r in together) - min(r.scores["entailment"] for r in together)
    assert spread > 1e-3, "the model must tell inputs apart, or this test proves nothing"
    for label in NLI_LABELS:
        assert together[17].scores[label] == pytest.approx(alone.scores[label], abs=1e-5)
    # every pair, not only the probe, matches its solo score
    for pair, batched in zip(batch[:10], together[:10], strict=True):
        solo = engine.predict([pair])[0]
        assert max(abs(solo.scores[k] - batched.scores[k]) for k in NLI_LABELS) < 1e-5


def test_results_come_back_in_input_order(engine: NLIEngine) -> None:
    pairs = [Pair(p, h) for p, h in SAMPLE_PAIRS] * 5
    results = engine.predict(list(reversed(pairs)))
    assert [r.scores for r in results] == [r.scores for r in reversed(engine.predict(pairs))]


def test_scores_are_probabilities_and_the_label_is_the_top_one(engine: NLIEngine) -> None:
    for result in engine.predict([Pair(p, h) for p, h in SAMPLE_PAIRS]):
        assert set(result.scores) == set(NLI_LABELS)
        assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert result.label == max(result.scores, key=result.scores.get)


def test_long_premises_are_truncated_first(engine: NLIEngine) -> None:
    hypothesis = "the dog is sleeping"
    encoded = engine.encode([Pair("a man is playing " * 200, hypothesis)])
    ids = encoded.features["input_ids"][0]
    assert len(ids) == engine.max_length
    hypothesis_ids = engine.tokenizer(hypothesis, add_special_tokens=False)["input_ids"]
    assert ids[-len(hypothesis_ids) - 1 : -1] == hypothesis_ids


def test_an_overlong_hypothesis_is_truncated_too(engine: NLIEngine) -> None:
    pairs = [Pair("a man", "the dog " * 400), Pair(*SAMPLE_PAIRS[1])]
    assert max(engine.encode(pairs).lengths) <= engine.max_length
    assert len(engine.predict(pairs)) == 2


def test_roberta_positions_leave_room_for_the_padding_offset(roberta_model_dir: Path) -> None:
    engine = NLIEngine.from_pretrained(str(roberta_model_dir))
    assert engine.max_length == 128 - 2
    assert engine.predict([Pair("the man " * 500, "a dog " * 500)])[0].label in NLI_LABELS


def test_max_length_beyond_the_model_is_refused(model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="NLI_MAX_LENGTH=4096"):
        NLIEngine.from_pretrained(str(model_dir), max_length=4096)


def test_forward_passes_are_reported_to_the_observer(model_dir: Path) -> None:
    engine = NLIEngine.from_pretrained(str(model_dir), batch_size=4)
    seen: list[tuple[int, int, float]] = []
    engine.observer = lambda pairs, tokens, seconds: seen.append((pairs, tokens, seconds))
    engine.predict([Pair(*SAMPLE_PAIRS[0])] * 10)
    assert [pairs for pairs, _, _ in seen] == [4, 4, 2]
    length = engine.encode([Pair(*SAMPLE_PAIRS[0])]).lengths[0]  # ten equal pairs: no padding
    assert [tokens for _, tokens, _ in seen] == [4 * length, 4 * length, 2 * length]
    assert all(seconds > 0 for _, _, seconds in seen)


def test_an_expired_deadline_stops_before_the_next_chunk(engine: NLIEngine) -> None:
    with pytest.raises(DeadlineExceeded):
        engine.predict([Pair(*SAMPLE_PAIRS[0])], Deadline(0.0))


def test_logits_are_float32_even_for_a_half_precision_model(models_root: Path) -> None:
    from model_factory import build_model

    folder = build_model(models_root / "bf16", dtype=torch.bfloat16)
    engine = NLIEngine.from_pretrained(str(folder), dtype="bfloat16")
    assert engine.dtype == "bfloat16"
    assert engine.logits([Pair(*SAMPLE_PAIRS[0])]).dtype == torch.float32


def test_a_half_precision_checkpoint_is_cast_only_when_the_engine_starts(models_root: Path) -> None:
    """Loading (which may run in the Gunicorn master) must not run the cast; start() (in the worker) does."""
    from model_factory import build_model

    folder = build_model(models_root / "fp16", dtype=torch.float16)
    engine = NLIEngine.from_pretrained(str(folder), dtype="float32")
    assert next(engine.model.parameters()).dtype == torch.float16, "no cast at load time"
    assert engine.dtype == "float32", "/model reports the dtype the model will compute in"
    engine.start(threads=1)
    assert next(engine.model.parameters()).dtype == torch.float32
    reference = NLIEngine.from_pretrained(str(folder), dtype="float32")
    reference.model.float()
    pair = [Pair(*SAMPLE_PAIRS[0])]
    assert torch.allclose(engine.logits(pair), reference.logits(pair), atol=1e-6)


@pytest.mark.parametrize("sort", [True, False])
@pytest.mark.parametrize("seed", range(20))
def test_chunks_cover_every_pair_once_within_both_limits(seed: int, sort: bool) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 512) for _ in range(rng.randint(1, 300))]
    max_pairs, max_tokens = rng.randint(1, 64), rng.randint(512, 8192)
    chunks = plan_chunks(lengths, max_pairs, max_tokens, sort)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    for chunk in chunks:
        assert len(chunk) <= max_pairs
        padded = max(lengths[i] for i in chunk) * len(chunk)
        assert len(chunk) == 1 or padded <= max_tokens
    if sort:  # sorted chunks cost less than chunks in input order
        assert _plan_cost(lengths, chunks) <= _plan_cost(
            lengths, plan_chunks(lengths, max_pairs, max_tokens, sort=False)
        )


def _plan_cost(lengths: list[int], plan: list[list[int]]) -> int:
    """Padded tokens plus the planner's price of each forward pass."""
    return sum(max(lengths[i] for i in chunk) * len(chunk) + FORWARD_OVERHEAD_TOKENS for chunk in plan)


def _cheapest_cost(widths: list[int], max_pairs: int, max_tokens: int) -> int:
    """Every way of cutting the longest-first order into passes, tried one by one."""
    if not widths:
        return 0
    return min(
        taken * widths[0] + FORWARD_OVERHEAD_TOKENS + _cheapest_cost(widths[taken:], max_pairs, max_tokens)
        for taken in range(1, min(max_pairs, len(widths)) + 1)
        if taken == 1 or taken * widths[0] <= max_tokens
    )


@pytest.mark.parametrize("seed", range(30))
def test_sorted_chunks_are_the_cheapest_cut_of_the_longest_first_order(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(5, 40), rng.randint(200, 512)]) for _ in range(rng.randint(1, 11))]
    max_pairs, max_tokens = rng.randint(1, 8), rng.randint(256, 2048)
    widths = sorted(lengths, reverse=True)
    plan = plan_chunks(lengths, max_pairs, max_tokens)
    assert _plan_cost(lengths, plan) == _cheapest_cost(widths, max_pairs, max_tokens)


def test_a_few_long_pairs_get_their_own_pass_instead_of_padding_short_ones() -> None:
    lengths = [20] * 10 + [480, 500] + [25] * 20
    chunks = plan_chunks(lengths, max_pairs=32, max_tokens=32 * 512)
    assert chunks[0] == [11, 10]  # the two long pairs together
    assert sorted(i for chunk in chunks[1:] for i in chunk) == [*range(10), *range(12, 32)]
    assert all(len(chunk) > 1 for chunk in chunks[1:]), "short pairs still share passes"


def test_freed_activations_are_given_back_after_large_forward_passes_and_now_and_then(
    engine: NLIEngine, monkeypatch
) -> None:
    import platform

    from nli_service.inference import memory

    if platform.libc_ver()[0] == "glibc":
        assert memory.release_free_memory() is True
    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(engine, "heap", memory.HeapTrimmer(interval=0.5))
    engine.predict([Pair(*SAMPLE_PAIRS[0])])
    assert calls == [], "a small request does not pay for a trim"
    long_premise = " ".join(["word"] * 120)
    monkeypatch.setattr(engine, "batch_size", 64)
    monkeypatch.setattr(engine, "max_batch_tokens", 64 * 128)
    engine.predict([Pair(long_premise, "a dog")] * 40)  # 40 pairs x 128 tokens in one forward pass
    assert calls == [1]
    time.sleep(0.6)
    engine.predict([Pair(*SAMPLE_PAIRS[0])])
    assert calls == [1, 1], "small passes too, once the interval has passed"
    engine.predict([Pair(*SAMPLE_PAIRS[0])])
    assert calls == [1, 1]
