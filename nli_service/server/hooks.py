"""What the Gunicorn config (``nli_service/gunicorn_conf.py``) needs: settings, the metrics directory, server hooks.

Imports of torch and prometheus_client stay inside the hooks: the metrics
directory must be in the environment before prometheus_client is first imported,
and the master must never run inference before it forks its workers.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from gunicorn import glogging
from gunicorn.workers.gthread import ThreadWorker

from nli_service import logs
from nli_service.config import ConfigError, Settings, uses_gpu
from nli_service.server.startup import exit_on_startup_error

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKER_BOOT_ERROR = 3  # gunicorn.arbiter.Arbiter.WORKER_BOOT_ERROR: the master halts on it
WORKER_START_FAILED = 1  # any other code: the master replaces the worker
_metrics_dir_prepared = False


def settings_or_exit() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as error:
        exit_on_startup_error(str(error))


def prepare_metrics_dir() -> str:
    """Point prometheus_client at a per-server directory without old counts (once per master).

    In a directory given in PROMETHEUS_MULTIPROC_DIR (made if missing) only the service's own
    files (``counter_123.db``, ``gauge_livesum_123.db``, ``histogram_archive.db``, ...) are removed
    at start, so old counts are not added in; the directory and anything else in it stay. Without
    one, a fresh directory is made and removed at exit. Runs again on a config reload (SIGHUP)
    without wiping the live counts. A directory that cannot be used stops the start (exit 4).
    """
    global _metrics_dir_prepared
    if _metrics_dir_prepared:
        return os.environ[MULTIPROC_ENV]
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        # The variable is set, so prometheus_client may be imported now (it picks multiprocess mode).
        from nli_service.server.metrics_exporter import clear_own_files

        try:
            clear_own_files(given)
        except OSError as error:
            exit_on_startup_error(f"{MULTIPROC_ENV}={given!r} cannot hold the metrics files: {error}")
    else:
        made = tempfile.mkdtemp(prefix="nli-metrics-")
        os.environ[MULTIPROC_ENV] = made
        master_pid = os.getpid()
        atexit.register(lambda: os.getpid() == master_pid and shutil.rmtree(made, ignore_errors=True))
    _metrics_dir_prepared = True
    return os.environ[MULTIPROC_ENV]


def worker_class(settings: Settings) -> str:
    """gthread workers take new connections least-connections first (``balanced_worker``), when the
    installed Gunicorn has what that worker overrides; otherwise Gunicorn's own gthread, with one warning."""
    if settings.worker_class == "sync":
        return "nli_service.server.sync_worker.BoundedSyncWorker"
    from nli_service.server import balanced_worker

    reason = balanced_worker.incompatibility()
    if reason is not None:
        logging.getLogger("nli_service.server").warning(
            "balanced gthread worker unavailable (%s); using Gunicorn's plain gthread worker", reason
        )
        return "gthread"
    return "nli_service.server.balanced_worker.BalancedThreadWorker"


def can_preload(settings: Settings) -> bool:
    """Preload (share weights copy-on-write) on CPU; CUDA must not start before fork."""
    return not uses_gpu(settings.device)


def worker_timeout(settings: Settings) -> int:
    """Gunicorn kills a silent worker after this: the request deadline plus one chunk's worth."""
    return math.ceil(settings.request_timeout) + 30


def graceful_timeout(settings: Settings) -> int:
    """Once workers are told to stop, in-flight requests get their whole deadline to finish. With the
    defaults, NLI_DRAIN_SECONDS + this (5 + 22 s) fits Kubernetes' default 30 s termination grace."""
    return math.ceil(settings.request_timeout) + 2


def drain_on_sigterm(server: Any, settings: Settings) -> None:
    """The first SIGTERM makes /ready answer 503 in every worker while requests are still served, so
    load balancers stop sending; Gunicorn's graceful stop follows NLI_DRAIN_SECONDS later (at once
    on a second SIGTERM). Workers answer what is already in the listen backlog before exiting."""
    import signal
    import threading

    from nli_service.server.worker_table import TABLE

    stop_now = server.handle_term

    def handle_term() -> None:
        if TABLE.draining() or settings.drain_seconds <= 0:
            TABLE.start_draining()  # workers answer the listen backlog as they stop
            stop_now()
        TABLE.start_draining()
        server.log.info("SIGTERM: /ready answers 503; stopping in %s s", settings.drain_seconds)
        timer = threading.Timer(settings.drain_seconds, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        timer.start()

    server.handle_term = handle_term


class JsonLogger(glogging.Logger):
    """Gunicorn's own messages (boot, worker timeouts, signals) as JSON lines, on stderr
    and in the service's log file, like every other record of the service."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for old in list(self.error_log.handlers):
            self.error_log.removeHandler(old)
        try:
            handlers = logs.json_handlers(Settings.from_env(), stream=sys.stderr)
        except ConfigError as error:
            exit_on_startup_error(str(error))
        for handler in handlers:
            self.error_log.addHandler(handler)


# -- server hooks (names as Gunicorn expects them) -------------------------------------


def when_ready(server: Any) -> None:
    """In the master, once listening: serve the summed metrics of all workers; with a model
    repository, watch it for new versions."""
    from nli_service.server.startup import start_metrics_or_exit

    settings = Settings.from_env()
    drain_on_sigterm(server, settings)
    if settings.model_repository is not None and settings.model_version is None:
        from nli_service.server.model_rollout import ModelRollout

        ModelRollout(server, settings).install()  # new versions are rolled out, worker by worker
    if settings.metrics_port:
        # A copy: the arbiter's thread changes WORKERS while the exporter's threads read it.
        start_metrics_or_exit(settings, worker_pids=lambda: list(server.WORKERS.copy()))
        server.log.info("metrics on %s:%s/metrics", settings.host, settings.metrics_port)


def pre_fork(server: Any, worker: Any) -> None:
    """In the master, before each fork: move the loaded objects out of the garbage collector's
    reach, so collections in the workers do not write to (and un-share) the preloaded pages."""
    import gc

    gc.freeze()


def post_worker_init(worker: Any) -> None:
    """In each new worker: size torch's thread pool for this worker count, then warm up.

    Not in ``post_fork``: until the worker installs its own signal handlers (after that hook)
    it has the master's, so a SIGTERM during the warm-up would be lost and stopping would
    wait out graceful_timeout."""
    from nli_service.server.worker_table import TABLE
    from nli_service.serving.runtime import WorkerContext, prepare_worker
    from nli_service.tracing import start_tracing

    settings = Settings.from_env()
    threads = settings.torch_threads_for(worker.cfg.workers)
    slot = getattr(worker, "slot", None)  # only gthread's BalancedThreadWorker has one
    batching = isinstance(worker, ThreadWorker)  # requests arrive on several threads: batch them
    table = TABLE if slot is not None else None
    try:
        prepare_worker(WorkerContext(threads, batching, table, slot, settings.malloc_arenas, settings.kernel_cache))
    except Exception as error:  # noqa: BLE001 - decided below: halt the server, or let it replace this worker
        _worker_failed_to_start(worker, error)
    worker.wsgi.config["DRAINING"] = TABLE.draining  # /ready: 503 once the server drains
    start_tracing(settings)  # after the warm-up, whose pass is not a request
    TABLE.worker_started()
    TABLE.mark_ready(worker.age, os.getpid())


def pre_request(worker: Any, req: Any) -> None:
    """A body declared over ``NLI_MAX_BODY_BYTES`` is answered 413 without being read: close the
    connection after that answer. Gunicorn drains at most 64 KiB of an unread body and then closes
    the socket anyway, after telling the client ``keep-alive``; a client that sends its next request
    on it meets a closed socket. ``Connection: close`` makes it open a new one instead."""
    length = next((value for name, value in req.headers if name == "CONTENT-LENGTH"), "")
    if length.isdigit() and int(length) > _max_body_bytes():
        req.must_close = True


@functools.cache
def _max_body_bytes() -> int:
    return Settings.from_env().max_body_bytes


WORKER_RETRY_SECONDS = 2.0


def _worker_failed_to_start(worker: Any, error: Exception) -> None:
    """A worker that cannot start (a backend that will not open, a warm-up that fails) must not stop
    a server whose other workers serve: it exits with an ordinary failure and Gunicorn replaces it,
    after a pause so a lasting fault does not spin. Only when no worker has ever started is it a
    start-up failure: Gunicorn's boot-error code then stops the server, with the reason logged."""
    from nli_service.server.worker_table import TABLE

    worker.log.error("worker %s failed to start: %s", worker.pid, error, exc_info=True)
    if not TABLE.any_worker_started():
        sys.exit(WORKER_BOOT_ERROR)
    time.sleep(WORKER_RETRY_SECONDS)
    sys.exit(WORKER_START_FAILED)


def child_exit(server: Any, worker: Any) -> None:
    """In the master, when a worker dies: count it, drop its live gauges, fold its counts into the
    metrics archive files (the file count stays bounded however often workers recycle) and free its
    row in the worker table."""
    from nli_service import metrics
    from nli_service.server.metrics_exporter import mark_worker_dead
    from nli_service.server.worker_table import TABLE

    metrics.WORKER_EXITS.inc()
    try:
        mark_worker_dead(worker.pid)
    except Exception as error:  # noqa: BLE001 - the master must outlive any metrics trouble
        server.log.warning("metrics files of worker %s not archived: %s", worker.pid, error)
    TABLE.release(getattr(worker, "slot", None))  # only gthread's BalancedThreadWorker has one


_aborted = False  # this worker was told to abort (Gunicorn's SIGABRT to a worker past its timeout)


def worker_abort(worker: Any) -> None:
    """In a worker Gunicorn is killing for silence: remembered, so its exit is not counted as planned."""
    global _aborted
    _aborted = True


def worker_exit(server: Any, worker: Any) -> None:
    """In a worker on its way out: count the exit as planned when it was told to go, recycled after
    ``NLI_MAX_REQUESTS`` or stopped (SIGTERM, SIGINT, SIGQUIT). A worker that timed out, crashed,
    failed to start or was killed (out of memory, kill -9: no hook runs) is not counted, so the
    master's ``nli_worker_exits_total`` minus this is the workers that died unasked."""
    if os.getpid() != worker.pid:  # Gunicorn also calls this in the master for a worker already gone
        return
    from nli_service import metrics

    recycled = worker.nr >= worker.max_requests
    if recycled or (not worker.alive and not _aborted):
        metrics.WORKER_PLANNED_EXITS.inc()
