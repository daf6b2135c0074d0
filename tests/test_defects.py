"""Defects found by reading the code (issue 13 §4): each test failed before its fix."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import engine_of
from model_factory import SAMPLE_PAIRS

from nli_service.config import Settings
from nli_service.inference.engine import NLIEngine
from nli_service.inference.types import Pair
from nli_service.serving.batcher import MicroBatcher
from nli_service.serving.runtime import EngineSpec

PAIR = {"premise": SAMPLE_PAIRS[0][0], "hypothesis": SAMPLE_PAIRS[0][1]}
PROJECT_ROOT = Path(__file__).parents[1]


# -- the process's engine is keyed by everything it is built from ---------------------


def test_every_engine_argument_is_part_of_the_engine_key() -> None:
    """The key used to omit backend, quantisation and calibration file: a second app asking for
    ONNX silently got the torch engine."""
    base = Settings.from_env({"NLI_MODEL": "some/model"})
    for env, value in [
        ("NLI_BACKEND", "onnx"),
        ("NLI_QUANTIZE", "int8"),
        ("NLI_CALIBRATION_DATA", "elsewhere.tsv"),
        ("NLI_OFFLINE", "true"),
        ("NLI_HUB_TIMEOUT", "9"),
        ("NLI_DTYPE", "bfloat16"),
    ]:
        try:
            changed = Settings.from_env({"NLI_MODEL": "some/model", env: value})
        except ValueError:
            continue  # a combination this configuration refuses
        assert EngineSpec.from_settings(changed) != EngineSpec.from_settings(base), env


def test_a_second_app_with_another_backend_gets_its_own_engine(make_app) -> None:
    torch_app = make_app()
    onnx_app = make_app(NLI_BACKEND="onnx")
    assert engine_of(torch_app).backend.name == "torch"
    assert engine_of(onnx_app).backend.name == "onnx"
    assert onnx_app.test_client().post("/predict", json=PAIR).status_code == 200


# -- the batcher thread outlives a failing pass -----------------------------------------


def test_the_batcher_thread_survives_a_failure_while_gathering(model_dir: Path, monkeypatch) -> None:
    original, failures = MicroBatcher._gather, []

    def gather_then_fail(self, jobs):
        live = original(self, jobs)
        if not failures:
            failures.append(True)
            raise RuntimeError("a bug between passes")
        return live

    monkeypatch.setattr(MicroBatcher, "_gather", gather_then_fail)
    engine = NLIEngine.from_pretrained(str(model_dir), batch_size=8)
    batcher = MicroBatcher(engine, max_pairs=8, max_wait=0.001)
    pair = [Pair(*SAMPLE_PAIRS[0])]
    with pytest.raises(RuntimeError, match="a bug between passes"):
        batcher.predict(pair)
    answered = threading.Event()
    threading.Thread(target=lambda: batcher.predict(pair) and answered.set(), daemon=True).start()
    assert answered.wait(10), "the next request was never answered: the batcher thread died"


# -- the deadline cannot be swallowed, and a late alarm is harmless ---------------------


def test_an_except_exception_in_the_work_cannot_swallow_the_timeout(make_app, monkeypatch) -> None:
    app = make_app(NLI_REQUEST_TIMEOUT=0.3)
    engine = engine_of(app)
    original = engine.forward

    def forward_that_swallows(encoded, chunk):
        try:  # noqa: SIM105 - written as library code on the way may write it
            time.sleep(5)
        except Exception:  # noqa: BLE001
            pass
        return original(encoded, chunk)

    monkeypatch.setattr(engine, "forward", forward_that_swallows)
    started = time.monotonic()
    response = app.test_client().post("/predict", json=PAIR)
    assert response.status_code == 408, response.get_data(as_text=True)
    assert time.monotonic() - started < 2


LATE_ALARM = """
import os, signal, sys, time
sys.path.insert(0, "tests")
from model_factory import build_model
from nli_service import create_app
import tempfile
root = tempfile.mkdtemp()
app = create_app({"NLI_MODEL": str(build_model(__import__("pathlib").Path(root) / "m")), "NLI_LOG_DIR": root,
                  "NLI_WORKER_CLASS": "sync"})
client = app.test_client()
pair = {"premise": "A man plays.", "hypothesis": "A person plays."}
first = client.post("/predict", json=pair)
assert first.status_code == 200, first.get_data(as_text=True)
os.kill(os.getpid(), signal.SIGALRM)  # an alarm delivered after the request ended
time.sleep(0.1)
assert client.post("/predict", json=pair).status_code == 200
print("alive")
"""


def test_an_alarm_delivered_after_the_request_does_not_kill_the_worker() -> None:
    """Each request used to end by restoring the default SIGALRM action, which terminates."""
    result = subprocess.run(
        [sys.executable, "-c", LATE_ALARM], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "alive", result.stderr[-2000:]


# -- the balanced worker checks what it overrides --------------------------------------


def test_the_balanced_worker_is_used_when_gunicorn_has_what_it_overrides() -> None:
    from nli_service.server import balanced_worker, hooks

    assert balanced_worker.incompatibility() is None
    settings = Settings.from_env({"NLI_WORKER_CLASS": "gthread"})
    assert hooks.worker_class(settings) == "nli_service.server.balanced_worker.BalancedThreadWorker"


def test_an_incompatible_gunicorn_falls_back_to_plain_gthread_with_one_warning(monkeypatch, caplog) -> None:
    from nli_service.server import balanced_worker, hooks

    class RenamedInternals:
        def accept(self, listener):
            self.connections = 1

    assert "set_accept_enabled" in balanced_worker.incompatibility(worker=RenamedInternals)
    assert "outside the tested range" in balanced_worker.incompatibility(version=(28, 0, 0))
    monkeypatch.setattr(balanced_worker, "incompatibility", lambda: "its gthread worker has no accept")
    settings = Settings.from_env({"NLI_WORKER_CLASS": "gthread"})
    with caplog.at_level(logging.WARNING):
        assert hooks.worker_class(settings) == "gthread"
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "plain gthread" in warnings[0].getMessage()
