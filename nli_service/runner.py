"""This worker's engine: loaded once per process, run under the request deadline.

The blueprints call :func:`predict`; it hands the pairs to the engine with the
request's deadline enforced (SIGALRM or cooperative, see ``deadline.py``) and
counts the results. The engine is a process-wide singleton: with Gunicorn's
``preload_app`` it is loaded once in the master and shared copy-on-write by the
forked workers, which must not have run any inference before the fork.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from flask import Flask, current_app, g

from nli_service import metrics
from nli_service.config import Settings, available_cores
from nli_service.deadline import Deadline, enforce
from nli_service.errors import ApiError
from nli_service.inference.types import Pair, Prediction, QueueFull, ZeroShotResult, zero_shot_pairs

if TYPE_CHECKING:
    from nli_service.inference.batcher import MicroBatcher
    from nli_service.inference.engine import NLIEngine
    from nli_service.inference.shared_cores import SharedCores

log = logging.getLogger(__name__)
T = TypeVar("T")

EXTENSION_KEY = "nli_engine"
_process_engine: NLIEngine | None = None
_process_engine_key: tuple[object, ...] | None = None
_worker_threads: int | None = None  # set once this process serves requests
_worker_slot: int | None = None  # this Gunicorn worker's row in worker_table.TABLE
# Keyed by pid (threads do not survive a fork), engine and the batcher's own settings.
_batchers: dict[tuple[object, ...], MicroBatcher] = {}
_batchers_lock = threading.Lock()


def _engine_key(settings: Settings) -> tuple[object, ...]:
    return (
        settings.model,
        settings.model_is_default,
        settings.device,
        settings.dtype,
        settings.batch_size,
        settings.max_length,
        settings.max_batch_tokens,
        settings.sort_by_length,
    )


def load_engine(settings: Settings) -> NLIEngine:
    """The process's engine for ``settings``, loading it on first use."""
    global _process_engine, _process_engine_key
    key = _engine_key(settings)
    if _process_engine is None or _process_engine_key != key:
        from nli_service.inference.engine import NLIEngine, set_torch_threads

        if _worker_threads is None:
            # Maybe the Gunicorn master before fork: a single thread never starts the
            # OpenMP pool (a dtype cast while loading could), which children would inherit broken.
            set_torch_threads(1)
        engine = NLIEngine.from_settings(settings)
        engine.observer = metrics.observe_forward
        metrics.MODEL_LOAD_SECONDS.set(engine.load_seconds)
        log.info("model loaded", extra={k: v for k, v in engine.describe().items() if k != "labels"})
        _process_engine, _process_engine_key = engine, key
        if _worker_threads is not None:  # loaded inside a worker (no preload): start here
            engine.start(_worker_threads)
    return _process_engine


def prepare_worker(torch_threads: int, slot: int | None = None) -> None:
    """In a freshly forked worker (or the dev server): size torch's threads, then warm up."""
    from nli_service.inference.engine import set_torch_threads

    global _worker_threads, _worker_slot
    _worker_threads, _worker_slot = torch_threads, slot
    set_torch_threads(torch_threads)
    if _process_engine is not None:
        _process_engine.start(torch_threads)


def init_app(app: Flask) -> None:
    """Attach this process's engine to ``app`` (unless ``LOAD_MODEL`` is False)."""
    if app.config.get("LOAD_MODEL", True):
        app.extensions[EXTENSION_KEY] = load_engine(app.config["NLI_SETTINGS"])


def get_engine() -> NLIEngine | MicroBatcher:
    """This worker's engine; with threaded workers, wrapped in the cross-request batcher."""
    engine = current_app.extensions.get(EXTENSION_KEY)
    if engine is None:
        raise ApiError("the model is not loaded yet; retry shortly", 503)
    settings: Settings = current_app.config["NLI_SETTINGS"]
    if settings.worker_class != "gthread":
        return engine
    key = (
        os.getpid(),
        id(engine),
        settings.batch_size,
        settings.batch_wait_ms,
        settings.max_queued_pairs,
        settings.idle_cores_max_pairs,
    )
    with _batchers_lock:
        if key not in _batchers:
            from nli_service.inference.batcher import MicroBatcher

            wait = settings.batch_wait_ms / 1000
            _batchers[key] = MicroBatcher(
                engine,
                max_pairs=settings.batch_size,
                max_wait=wait,
                max_queued_pairs=settings.max_queued_pairs,
                cores=_shared_cores(engine, settings),
            )
        return _batchers[key]


def _shared_cores(engine: NLIEngine, settings: Settings) -> SharedCores | None:
    """Lend idle workers' cores to a lone small pass, where torch can change its threads per pass."""
    from nli_service.inference.shared_cores import SharedCores
    from nli_service.worker_table import TABLE

    own, every = _worker_threads, available_cores()
    lendable = engine.backend.name == "torch" and engine.device == "cpu" and own is not None and every > own
    if _worker_slot is None or not settings.idle_cores_max_pairs or not lendable:
        return None
    return SharedCores(
        TABLE, _worker_slot, own, every, settings.idle_cores_max_pairs, on_borrow=metrics.BORROWED_CORES.inc
    )


def _within_deadline(pairs: Sequence[Pair], work: Callable[[NLIEngine | MicroBatcher, Deadline], T]) -> T:
    """Account for ``pairs`` in the access record, then run ``work`` under the request deadline."""
    engine = get_engine()
    settings: Settings = current_app.config["NLI_SETTINGS"]
    g.pairs = len(pairs)
    g.input_chars = sum(pair.characters for pair in pairs)
    if settings.log_inputs:
        g.logged_inputs = [{"premise": p.premise, "hypothesis": p.hypothesis} for p in pairs]
    deadline = Deadline(settings.request_timeout, started_at=g.get("request_started"))
    try:
        with enforce(deadline):
            result = work(engine, deadline)
    except QueueFull as error:
        raise ApiError(f"this worker is overloaded: {error}; retry shortly", 429, {"Retry-After": "1"}) from None
    metrics.PAIRS.inc(len(pairs))
    return result


def predict(pairs: Sequence[Pair]) -> list[Prediction]:
    """Classify ``pairs`` within the request's deadline and count the results."""
    predictions = _within_deadline(pairs, lambda engine, deadline: engine.predict(pairs, deadline))
    metrics.count_labels(prediction.label for prediction in predictions)
    return predictions


def zero_shot(texts: list[str], labels: list[str], template: str, multi_label: bool) -> list[ZeroShotResult]:
    """Rank ``labels`` for each text, all label pairs in one engine call."""
    from nli_service.inference.zero_shot import classify

    return _within_deadline(
        zero_shot_pairs(texts, labels, template),
        lambda engine, deadline: classify(engine, texts, labels, template, multi_label, deadline),
    )
