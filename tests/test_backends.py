"""Every backend passes the same correctness checks against torch float32."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from model_factory import SAMPLE_PAIRS, WORDS

from nli_service.inference import backends, int8, onnx_export
from nli_service.inference.engine import NLIEngine
from nli_service.inference.loader import ModelLoadError
from nli_service.inference.types import NLI_LABELS, Pair

# Largest probability difference allowed against torch float32, per backend. int8 quantises
# activations per batch (dynamic quantisation), so it is only approximately batch-invariant.
BACKENDS = {("torch", "none"): 1e-6, ("onnx", "none"): 1e-4, ("onnx", "int8"): 0.15}


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
    assert float_weighted == [(int8.OUTLIER_CHANNELS, hidden)] * layers, "per FFN down-projection: its outliers"
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
    batches = int8.calibration_batches(tokenizer, pairs, names, 128)
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


# -- which backend runs int8 ----------------------------------------------------------------


def test_int8_is_onnx_int8_and_torch_int8_is_refused(model_dir: Path) -> None:
    from nli_service.config import ConfigError, Settings

    assert Settings.from_env({}).backend == "torch"
    assert Settings.from_env({"NLI_QUANTIZE": "int8"}).backend == "onnx"
    assert Settings.from_env({"NLI_BACKEND": "auto", "NLI_QUANTIZE": "int8"}).backend == "onnx"
    assert Settings.from_env({"NLI_BACKEND": "onnx"}).backend == "onnx"
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"NLI_BACKEND": "torch", "NLI_QUANTIZE": "int8"})
    message = str(refused.value)
    assert "\n" not in message and "NLI_BACKEND=torch" in message and "NLI_QUANTIZE=int8" in message
    assert "NLI_BACKEND=onnx" in message
    with pytest.raises(ModelLoadError, match="NLI_BACKEND=onnx"):
        NLIEngine.from_pretrained(str(model_dir), backend="torch", quantize="int8")
    engine = NLIEngine.from_pretrained(str(model_dir), quantize="int8")  # backend auto
    assert engine.describe()["backend"] == "onnx" and engine.describe()["quantize"] == "int8"


def test_there_is_no_torch_int8_module() -> None:
    import importlib.util

    assert importlib.util.find_spec("nli_service.inference.torch_int8") is None


# -- the cache of exports: content keys, timeouts, corrupt files ---------------------------


def test_a_changed_model_file_with_the_same_size_and_mtime_gets_a_new_cache_key(tmp_path: Path) -> None:
    import os
    import time

    folder = tmp_path / "model"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"a" * 4096)
    (folder / "config.json").write_text("{}")
    old = time.time() - 3600
    os.utime(weights, (old, old))
    first = backends._model_key(str(folder))
    assert backends._model_key(str(folder)) == first
    stamp = weights.stat()
    weights.write_bytes(b"b" * 4096)  # same size
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # same mtime
    assert weights.stat().st_size == stamp.st_size and weights.stat().st_mtime_ns == stamp.st_mtime_ns
    assert backends._model_key(str(folder)) != first


def test_file_digests_are_remembered_but_never_trusted_over_a_rewrite(tmp_path: Path, monkeypatch) -> None:
    import hashlib
    import os

    monkeypatch.setattr(backends, "_RACY_SECONDS", -1.0)  # remember even a file written just now
    file = tmp_path / "weights.bin"
    file.write_bytes(b"x" * 100)
    assert backends.file_digest(file) == hashlib.sha256(b"x" * 100).hexdigest()
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a[0]) or real_open(*a, **k))
    assert backends.file_digest(file) == hashlib.sha256(b"x" * 100).hexdigest()
    assert file not in reads, "the second digest comes from the memo"
    stamp = file.stat()
    file.write_bytes(b"y" * 100)
    os.utime(file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert backends.file_digest(file) == hashlib.sha256(b"y" * 100).hexdigest()


def test_a_hung_export_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    import time

    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"ONNX export did not finish within 0\.5 s"):
        backends._build_once(tmp_path / "model.onnx", ["-c", "import time; time.sleep(60)"], "ONNX export", 0.5)
    assert time.monotonic() - started < 10
    assert not (tmp_path / "model.onnx").exists()


def test_a_hung_export_fails_loading_with_a_clear_error(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NLI_ONNX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "BUILD_TIMEOUT", 0.2)  # python cannot even import torch in that time
    with pytest.raises(ModelLoadError, match="ONNX export did not finish within 0.2 s"):
        NLIEngine.from_pretrained(str(model_dir), backend="onnx")


def test_a_corrupt_cached_export_is_rebuilt(model_dir: Path, reference) -> None:
    exported = NLIEngine.from_pretrained(str(model_dir), backend="onnx").backend.path
    exported.write_bytes(b"not an onnx model")
    engine = NLIEngine.from_pretrained(str(model_dir), backend="onnx", batch_size=64)
    assert engine.backend.path == exported and exported.stat().st_size > 1000
    pairs = _pairs(16)
    assert max_difference(reference.predict(pairs), engine.predict(pairs)) <= BACKENDS[("onnx", "none")]


def test_an_export_that_stays_unreadable_fails_with_a_clear_error(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NLI_ONNX_CACHE", str(tmp_path / "cache"))
    real_build = backends._build_once

    def build_garbage(path: Path, arguments: list[str], what: str, timeout=None, discard=None) -> None:
        real_build(path, ["-c", f"open({str(path)!r}, 'wb').write(b'garbage')"], what, timeout, discard)

    monkeypatch.setattr(backends, "_build_once", build_garbage)
    with pytest.raises(ModelLoadError, match="cannot be opened, even rebuilt"):
        NLIEngine.from_pretrained(str(model_dir), backend="onnx")
