"""Shared fixtures: tiny models built locally, and apps that serve them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from model_factory import build_model  # noqa: E402

from nli_service import create_app  # noqa: E402

# The guide's model orders its labels contradiction, entailment, neutral; this one differs,
# and its classifier always picks output 1, which it calls CONTRADICTION.
REORDERED_ID2LABEL = {0: "Neutral", 1: "CONTRADICTION", 2: "entailment"}


def engine_of(app):
    """The engine behind ``app``'s service (behind the batcher, with threaded workers)."""
    from nli_service.api.service import EXTENSION_KEY

    predictor = app.extensions[EXTENSION_KEY].predictor
    return getattr(predictor, "engine", predictor)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def model_dir(models_root: Path) -> Path:
    return build_model(models_root / "tiny-bert")


@pytest.fixture(scope="session")
def reordered_model_dir(models_root: Path) -> Path:
    return build_model(models_root / "reordered", id2label=REORDERED_ID2LABEL, classifier_bias=[0.0, 4.0, 1.0])


@pytest.fixture(scope="session")
def roberta_model_dir(models_root: Path) -> Path:
    return build_model(models_root / "tiny-roberta", architecture="roberta")


@pytest.fixture(scope="module")
def tiny_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model under Gunicorn, 2 workers, at most 4 pairs per request."""
    from serving import GUNICORN, running, service_env

    logs = tmp_path_factory.mktemp("logs")
    with running(
        GUNICORN, service_env(NLI_MODEL=model_dir, NLI_WORKERS=2, NLI_MAX_PAIRS=4, NLI_LOG_DIR=logs)
    ) as service:
        yield service


@pytest.fixture
def make_app(tmp_path: Path, model_dir: Path):
    """``make_app(**settings)``: an app on the tiny model, logging under tmp_path."""

    def make(**overrides: object):
        config = {"TESTING": True, "NLI_MODEL": str(model_dir), "NLI_LOG_DIR": str(tmp_path / "logs")}
        config.update(overrides)
        return create_app(config)

    return make


@pytest.fixture
def client(make_app) -> Iterator:
    with make_app().test_client() as test_client:
        yield test_client
