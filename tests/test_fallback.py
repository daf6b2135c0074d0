"""NLI_MODEL unset: the default model if it can be had, else the bundled one (never when set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nli_service import create_app
from nli_service.config import DEFAULT_MODEL
from nli_service.inference.loader import ModelLoadError


@pytest.fixture
def offline_without_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> Path:
    """An empty hub cache, offline, and a bundled model folder (the tiny test model)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("NLI_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NLI_BUNDLED_MODEL_DIR", str(model_dir))
    return model_dir


def test_unset_model_falls_back_to_the_bundled_one_with_a_warning(offline_without_default, tmp_path) -> None:
    client = create_app({"NLI_LOG_DIR": str(tmp_path / "logs")}).test_client()
    info = client.get("/model").get_json()
    assert info["fallback"] is True and info["requested_model"] == DEFAULT_MODEL
    assert info["source"] == "bundled" and info["id"] == f"bundled/{offline_without_default.name}"
    assert client.get("/health").get_json()["fallback"] is True
    assert client.post("/predict", json={"premise": "a man", "hypothesis": "a dog"}).get_json()["model"] == info["id"]
    records = [json.loads(line) for line in (tmp_path / "logs" / "nli_service.log").read_text().splitlines()]
    warning = next(r for r in records if r["level"] == "WARNING")
    assert "bundled" in warning["message"] and "not in the Hugging Face cache" in warning["reason"]


def test_an_explicit_model_never_falls_back(offline_without_default, tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        create_app({"NLI_MODEL": DEFAULT_MODEL, "NLI_LOG_DIR": str(tmp_path)})


def test_bundled_selects_it_by_name(offline_without_default, tmp_path) -> None:
    info = create_app({"NLI_MODEL": "bundled", "NLI_LOG_DIR": str(tmp_path)}).test_client().get("/model").get_json()
    assert info["source"] == "bundled" and info["fallback"] is False


def test_without_a_bundled_model_the_failure_stands(offline_without_default, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NLI_BUNDLED_MODEL_DIR", str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        create_app({"NLI_LOG_DIR": str(tmp_path)})


def test_the_fallback_shows_in_the_metrics(offline_without_default, tmp_path) -> None:
    """nli_model_fallback (alert NLIFallbackModelServed): 1 while the bundled model stands in, else 0."""
    from prometheus_client import REGISTRY

    create_app({"NLI_LOG_DIR": str(tmp_path / "fallback")})
    assert REGISTRY.get_sample_value("nli_model_fallback") == 1
    create_app({"NLI_MODEL": "bundled", "NLI_LOG_DIR": str(tmp_path / "chosen")})
    assert REGISTRY.get_sample_value("nli_model_fallback") == 0
