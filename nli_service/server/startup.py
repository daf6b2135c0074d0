"""Entry points shared by ``wsgi.py``, ``app.py`` and ``gunicorn.conf.py``.

A service that cannot start (bad setting, missing model) prints one line saying
why and exits with Gunicorn's "app failed to load" code, so the Gunicorn master
stops instead of re-spawning workers that would fail the same way.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import NoReturn, TypeVar

from nli_service.config import ConfigError

APP_LOAD_ERROR = 4  # gunicorn.arbiter.Arbiter.APP_LOAD_ERROR: the master halts on it
T = TypeVar("T")

log = logging.getLogger("nli_service.startup")


def exit_on_startup_error(message: str) -> NoReturn:
    log.critical("cannot start: %s", message)
    print(f"nli-service cannot start: {message}", file=sys.stderr, flush=True)
    sys.exit(APP_LOAD_ERROR)


def or_exit(build: Callable[[], T]) -> T:
    """Run ``build``; on a configuration or model error, exit with a one-line message."""
    from nli_service.inference.loader import ModelLoadError

    try:
        return build()
    except (ConfigError, ModelLoadError) as error:
        exit_on_startup_error(str(error))


def build_app():
    """``create_app()`` from the environment, or exit with the reason."""
    from nli_service.api import create_app

    return or_exit(create_app)


def start_metrics_or_exit(settings, worker_pids: Callable[[], Iterable[int]]) -> None:
    """Serve Prometheus metrics on NLI_METRICS_PORT, or exit with the reason (e.g. port taken);
    ``worker_pids`` names the processes that serve requests."""
    from nli_service.server import metrics_exporter

    try:
        metrics_exporter.start_exporter(settings.metrics_port, settings.host, worker_pids)
    except OSError as error:
        exit_on_startup_error(f"NLI_METRICS_PORT={settings.metrics_port} cannot be served: {error}")


def run_dev_server(app) -> None:
    """Flask's server, single-threaded (SIGALRM timeouts), no reloader, metrics on the side port."""
    from nli_service.serving.runtime import WorkerContext, prepare_worker
    from nli_service.tracing import start_tracing

    settings = app.config["NLI_SETTINGS"]
    prepare_worker(
        WorkerContext(threads=settings.torch_threads_for(workers=1), batching=False, kernel_cache=settings.kernel_cache)
    )
    start_tracing(settings)
    if settings.metrics_port:
        start_metrics_or_exit(settings, worker_pids=lambda: [os.getpid()])  # this process serves
    log.info("development server starting", extra={"host": settings.host, "port": settings.port})
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # stop cleanly, like Ctrl-C
    app.run(host=settings.host, port=settings.port, threaded=False, use_reloader=False, debug=False)
