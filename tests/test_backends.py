"""Every backend passes the same correctness checks against torch float32."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from model_factory import SAMPLE_PAIRS, WORDS

from nli_service.inference.engine import NLIEngine
from nli_service.inference.types import NLI_LABELS, Pair

# Largest probability difference allowed against torch float32, per backend. int8 quantises
# activations per batch (dynamic quantisation), so it is only approximately batch-invariant.
BACKENDS = {("torch", "none"): 1e-6, ("onnx", "none"): 1e-4, ("torch", "int8"): 0.15, ("onnx", "int8"): 0.15}


def _pairs(count: int, seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    return [Pair(words(rng.randint(3, 60)), words(rng.randint(2, 12))) for _ in range(count)]


@pytest.fixture(scope="module", autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NLI_ONNX_CACHE", str(tmp_path_factory.mktemp("onnx-cache")))
        yield


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> NLIEngine:
    return NLIEngine.from_pretrained(str(model_dir), batch_size=64)


def max_difference(a, b) -> float:
    return max(abs(x.scores[label] - y.scores[label]) for x, y in zip(a, b, strict=True) for label in NLI_LABELS)


@pytest.mark.parametrize(("backend", "quantize"), list(BACKENDS))
def test_backend_agrees_with_torch_float32(backend: str, quantize: str, model_dir: Path, reference) -> None:
    engine = NLIEngine.from_pretrained(str(model_dir), backend=backend, quantize=quantize, batch_size=64)
    engine.start(threads=1)
    pairs = _pairs(64)
    expected, got = reference.predict(pairs), engine.predict(pairs)
    difference = max_difference(expected, got)
    agreement = sum(e.label == g.label for e, g in zip(expected, got, strict=True)) / len(pairs)
    print(f"{backend}/{quantize}: max probability difference {difference:.2e}, label agreement {agreement:.1%}")
    assert difference <= BACKENDS[(backend, quantize)]
    if quantize == "none":
        assert agreement == 1.0
    assert engine.describe()["backend"] == backend and engine.describe()["quantize"] == quantize


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_float32_backends_are_batch_invariant(backend: str, model_dir: Path) -> None:
    engine = NLIEngine.from_pretrained(str(model_dir), backend=backend, batch_size=64)
    probe = Pair(*SAMPLE_PAIRS[2])
    batch = _pairs(63, seed=5)
    batch.insert(40, probe)
    assert max_difference(engine.predict([probe]), [engine.predict(batch)[40]]) < 1e-5


def test_the_onnx_export_is_cached_and_reused(model_dir: Path) -> None:
    first = NLIEngine.from_pretrained(str(model_dir), backend="onnx")
    exported = first.backend.path
    stamp = exported.stat().st_mtime_ns
    second = NLIEngine.from_pretrained(str(model_dir), backend="onnx")
    assert second.backend.path == exported and exported.stat().st_mtime_ns == stamp
    quantized = NLIEngine.from_pretrained(str(model_dir), backend="onnx", quantize="int8")
    assert quantized.backend.path != exported, "the cache key includes the settings"
