"""This process's model: loaded once, started in each worker, served as one :class:`NLIService`.

The engine is a process-wide singleton: with Gunicorn's ``preload_app`` it is loaded once in
the master and shared copy-on-write by the forked workers, which must not have run any
inference before the fork. :func:`prepare_worker` (called by the server in each new worker,
or by the dev server) sizes torch's threads and warms the engine up there.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, fields

from nli_service import metrics
from nli_service.config import Settings, available_cores
from nli_service.inference import memory
from nli_service.inference.documents import Windowing
from nli_service.inference.engine import NLIEngine, set_torch_threads
from nli_service.inference.loader import ModelLoadError
from nli_service.inference.repository import ModelVersion, chosen_versions
from nli_service.serving import model_versions
from nli_service.serving.batcher import MicroBatcher
from nli_service.serving.cache import CachingPredictor, result_store
from nli_service.serving.service import NLIService, Predictor
from nli_service.serving.shared_cores import CoreTable, SharedCores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSpec:
    """Every argument the engine is built from; two equal specs may share one engine."""

    model: str
    device: str
    dtype: str
    backend: str
    quantize: str
    offline: bool
    hub_timeout: float
    fallback: bool
    calibration_data: str
    batch_size: int
    max_length: int | None
    max_batch_tokens: int
    sort_by_length: bool
    padding_free: bool
    model_version: ModelVersion | None = None  # from NLI_MODEL_REPOSITORY

    @classmethod
    def from_settings(cls, settings: Settings, model_version: ModelVersion | None = None) -> EngineSpec:
        return cls(
            model=model_version.name if model_version is not None else settings.model,
            device=settings.device,
            dtype=settings.dtype,
            backend=settings.backend,
            quantize=settings.quantize,
            offline=settings.offline,
            hub_timeout=settings.hub_timeout,
            fallback=settings.model_is_default and model_version is None,
            calibration_data=settings.calibration_data,
            batch_size=settings.batch_size,
            max_length=settings.max_length,
            max_batch_tokens=settings.max_batch_tokens,
            sort_by_length=settings.sort_by_length,
            padding_free=settings.padding_free,
            model_version=model_version,
        )

    def arguments(self) -> dict[str, object]:
        """The engine's keyword arguments (``asdict`` would turn the model version into a dict)."""
        return {spec.name: getattr(self, spec.name) for spec in fields(self)}


@dataclass(frozen=True)
class WorkerContext:
    """How this serving process runs: its torch threads and, under Gunicorn, its row in the worker table."""

    threads: int
    batching: bool | None = None  # None: as the settings' worker class says
    table: CoreTable | None = None
    slot: int | None = None
    malloc_arenas: int = 0  # 0: glibc's default
    kernel_cache: int | None = None  # oneDNN primitives kept (None: oneDNN's default)


_engine: NLIEngine | None = None
_engine_spec: EngineSpec | None = None
_worker: WorkerContext | None = None  # set once this process serves requests
# Keyed by pid (a batcher's thread does not survive a fork), the settings and whether requests are batched.
_services: dict[tuple[object, ...], NLIService] = {}
_services_lock = threading.Lock()


def load_engine(settings: Settings) -> NLIEngine:
    """The process's engine for ``settings``, loading it on first use (or when the spec changed).

    From a repository, the version chosen for this process (``model_versions``); at first the
    pinned version, or the highest that loads (each one that does not is refused)."""
    global _engine, _engine_spec
    version = None
    if settings.model_repository is not None:
        version = model_versions.chosen(settings)
        if version is None:
            return _load_best_version(settings)
    spec = EngineSpec.from_settings(settings, version)
    if _engine is None or _engine_spec != spec:
        if _worker is None:
            # Maybe the Gunicorn master before fork: a single thread never starts the
            # OpenMP pool (a dtype cast while loading could), which children would inherit broken.
            set_torch_threads(1)
        engine = NLIEngine.from_pretrained(**spec.arguments())
        engine.observer = metrics.observe_forward
        metrics.serve_model(engine.model_id, version_label(engine))
        metrics.MODEL_LOAD_SECONDS.set(engine.load_seconds)
        metrics.MODEL_FALLBACK.set(1 if engine.describe()["fallback"] else 0)
        log.info("model loaded", extra={k: v for k, v in engine.describe().items() if k != "labels"})
        _engine, _engine_spec = engine, spec
        if _worker is not None:  # loaded inside a worker (no preload): start here
            engine.start(_worker.threads)
            _announce(engine)
    return _engine


def _load_best_version(settings: Settings) -> NLIEngine:
    assert settings.model_repository is not None
    failure: ModelLoadError | None = None
    name = model_versions.served_name(settings)
    for version in chosen_versions(settings.model_repository, name, settings.model_version):
        model_versions.choose(settings, version)
        try:
            return load_engine(settings)
        except ModelLoadError as error:
            model_versions.choose(settings, None)
            model_versions.refuse(version, str(error))
            failure = error
    raise ModelLoadError(f"no version in NLI_MODEL_REPOSITORY={settings.model_repository!r} can be served: {failure}")


def preload_version(settings: Settings, version: ModelVersion) -> None:
    """In the Gunicorn master: load ``version``, so that the workers forked from now on share it
    copy-on-write; raises :class:`ModelLoadError` with the previous version still chosen."""
    previous = model_versions.chosen(settings)
    model_versions.choose(settings, version)
    try:
        load_engine(settings)
    except ModelLoadError:
        model_versions.choose(settings, previous)
        raise


def _announce(engine: NLIEngine) -> None:
    """This worker serves ``engine``: ``nli_model_info`` counts it (livesum: gone with the worker)."""
    metrics.MODEL_INFO.labels(model=engine.model_id, version=version_label(engine)).set(1)


def version_label(engine: NLIEngine) -> str:
    """The version metrics name: the repository's, else the digest of the model's files (``/model``'s ``version``)."""
    return engine.version if engine.source.version is None else str(engine.source.version)


def served_model() -> tuple[str | None, int | None]:
    """The id of the model this process serves and its repository version (None: not from a repository)."""
    engine = _engine
    return (engine.model_id, engine.source.version) if engine is not None else (None, None)


def prepare_worker(context: WorkerContext) -> None:
    """In a freshly forked worker (or the dev server): size torch's threads, then warm up."""
    global _worker
    _worker = context
    memory.limit_malloc_arenas(context.malloc_arenas)
    if context.kernel_cache is not None:
        memory.limit_kernel_cache(context.kernel_cache)
    set_torch_threads(context.threads)
    if _engine is not None:
        _engine.start(context.threads)
        _announce(_engine)


def service_for(settings: Settings) -> NLIService:
    """The service the API calls in this process: the engine, with threaded workers behind the
    cross-request batcher, behind the result cache. Ask again in each request: a Gunicorn worker
    is forked after the app was built, and the batcher's thread (and the cache's Redis
    connections) must be this process's own."""
    key = (os.getpid(), settings, _batching(settings))
    service = _services.get(key)  # the common case: one dict lookup per request
    if service is None:
        with _services_lock:
            if key not in _services:
                engine = load_engine(settings)
                windowing = Windowing(engine.tokenizer, engine.max_length, settings.verify_window_sentences)
                _services[key] = NLIService(_predictor(engine, settings), settings.request_timeout, windowing)
            service = _services[key]
    return service


def _batching(settings: Settings) -> bool:
    if _worker is not None and _worker.batching is not None:
        return _worker.batching
    return settings.worker_class == "gthread"


def _predictor(engine: NLIEngine, settings: Settings) -> Predictor:
    """The result cache outermost (a hit never queues), then the batcher, then the engine."""
    return CachingPredictor(_computing(engine, settings), engine, result_store(settings))


def _computing(engine: NLIEngine, settings: Settings) -> Predictor:
    if not _batching(settings):
        return engine
    return MicroBatcher(
        engine,
        max_pairs=settings.batch_size,
        max_wait=settings.batch_wait_ms / 1000,
        max_queued_pairs=settings.max_queued_pairs,
        cores=_shared_cores(engine, settings),
    )


def _shared_cores(engine: NLIEngine, settings: Settings) -> SharedCores | None:
    """Lend idle workers' cores to a lone small pass, where torch can change its threads per pass."""
    if _worker is None or _worker.table is None or _worker.slot is None or not settings.idle_cores_max_pairs:
        return None
    own, every = _worker.threads, available_cores()
    if engine.backend.name != "torch" or engine.device != "cpu" or every <= own:
        return None
    return SharedCores(
        _worker.table,
        _worker.slot,
        own,
        every,
        settings.idle_cores_max_pairs,
        on_borrow=metrics.BORROWED_CORES.inc,
    )
