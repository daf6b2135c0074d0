"""Every backend passes the same correctness checks against torch float32."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from model_factory import SAMPLE_PAIRS, WORDS

from nli_service.inference import onnx_export
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
        assert agreement == 1.0 and engine.describe()["quantization"] == "none"
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


def _calibration_tsv(folder: Path) -> Path:
    path = folder / "calibration.tsv"
    rows = ["premise\thypothesis\tlabel"] + [
        f"{p.premise}\t{p.hypothesis}\t{i % 3}" for i, p in enumerate(_pairs(96, 7))
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def _smoothing_nodes(graph) -> list:
    return [node for node in graph.node if node.op_type == "Mul" and node.input[-1].endswith("_smooth_inverse")]


def _graph(path: Path):
    import onnx

    return onnx.load(str(path)).graph


def test_calibrated_int8_smooths_activations_and_computes_outlier_channels_in_float(
    model_dir: Path, reference, tmp_path: Path
) -> None:
    calibration = _calibration_tsv(tmp_path)
    plain = NLIEngine.from_pretrained(str(model_dir), backend="onnx", quantize="int8")
    smoothed = NLIEngine.from_pretrained(
        str(model_dir), backend="onnx", quantize="int8", calibration_data=str(calibration), batch_size=64
    )
    assert smoothed.backend.path != plain.backend.path, "the cache key includes the calibration"
    graph = _graph(smoothed.backend.path)
    layers = 2  # model_factory's tiny BERT: per layer one Q/K/V group, attention output, FFN up, FFN down
    assert len(_smoothing_nodes(graph)) == 4 * layers
    weights = {init.name: tuple(init.dims) for init in graph.initializer}
    float_weighted = [weights[n.input[1]] for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    hidden = 32  # model_factory's default
    assert float_weighted == [(onnx_export.OUTLIER_CHANNELS, hidden)] * layers, "per FFN down-projection: its outliers"
    assert not _smoothing_nodes(_graph(plain.backend.path))
    assert smoothed.describe()["quantization"].startswith("smoothed dynamic int8, calibrated on calibration.tsv")
    assert plain.describe()["quantization"] == "dynamic int8, per-channel weight scales"
    smoothed.start(threads=1)
    pairs = _pairs(64)
    assert max_difference(reference.predict(pairs), smoothed.predict(pairs)) <= BACKENDS[("onnx", "int8")]


def test_smoothing_alone_changes_no_result(model_dir: Path, tmp_path: Path) -> None:
    """Weights scaled up by s and activations down by s: the same function in float32."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from transformers import AutoTokenizer

    exported = NLIEngine.from_pretrained(str(model_dir), backend="onnx").backend
    names = exported.input_names
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pairs = [(p.premise, p.hypothesis) for p in _pairs(40, 3)]
    batches = onnx_export.calibration_batches(tokenizer, pairs, names, 128)
    model = onnx.load(str(exported.path))
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    onnx_export.smooth(smoothed, batches)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(smoothed.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in batches:
        np.testing.assert_allclose(before.run(None, batch)[0], after.run(None, batch)[0], atol=1e-4)


def test_without_calibration_data_int8_is_plain_dynamic_quantisation(model_dir: Path, tmp_path: Path) -> None:
    missing = NLIEngine.from_pretrained(
        str(model_dir), backend="onnx", quantize="int8", calibration_data=str(tmp_path / "absent.tsv")
    )
    plain = NLIEngine.from_pretrained(str(model_dir), backend="onnx", quantize="int8")
    assert missing.backend.path == plain.backend.path


def test_torch_int8_smoothing_alone_changes_no_result(model_dir: Path) -> None:
    """Smoothing, shared Q/K/V scales and float outlier channels: the same function in float32."""
    import torch
    from transformers import AutoTokenizer

    from nli_service.inference import torch_int8

    engine = NLIEngine.from_pretrained(str(model_dir))
    model = engine.backend.model.float().eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pairs = [(p.premise, p.hypothesis) for p in _pairs(40, 3)]
    batches = onnx_export.calibration_batches(tokenizer, pairs, list(tokenizer.model_input_names), 128)
    calibration = torch_int8.calibrate(model, batches)
    layers = 2  # model_factory's tiny BERT
    assert sorted(len(group) for group in calibration["groups"]).count(3) == layers, "Q/K/V share one input"
    smoothed = torch_int8.quantize(model, calibration, int8=False)
    with torch.inference_mode():
        for batch in batches:
            inputs = {name: torch.from_numpy(values) for name, values in batch.items()}
            torch.testing.assert_close(smoothed(**inputs).logits, model(**inputs).logits, atol=1e-4, rtol=1e-4)


def test_calibrated_torch_int8_is_calibrated_once_and_cached(model_dir: Path, reference, tmp_path: Path) -> None:
    calibration = _calibration_tsv(tmp_path)
    first = NLIEngine.from_pretrained(str(model_dir), quantize="int8", calibration_data=str(calibration))
    cached = first.backend.calibration
    assert cached is not None and cached.is_file()
    stamp = cached.stat().st_mtime_ns
    second = NLIEngine.from_pretrained(str(model_dir), quantize="int8", calibration_data=str(calibration))
    assert second.backend.calibration == cached and cached.stat().st_mtime_ns == stamp
    assert second.describe()["quantization"].startswith("smoothed dynamic int8, calibrated on calibration.tsv")
    plain = NLIEngine.from_pretrained(str(model_dir), quantize="int8", calibration_data=str(tmp_path / "absent.tsv"))
    assert plain.backend.calibration is None
    assert plain.describe()["quantization"] == "dynamic int8, per-tensor weight scales"
    second.start(threads=1)
    pairs = _pairs(64)
    assert max_difference(reference.predict(pairs), second.predict(pairs)) <= BACKENDS[("torch", "int8")]
