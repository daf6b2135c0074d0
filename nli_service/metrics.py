"""Prometheus metrics, correct across Gunicorn workers.

Under Gunicorn, ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before
this module is imported: each process then writes its values to files there,
and the exporter in the master (:func:`start_exporter`) adds them up. Under
``python app.py`` the ordinary in-process registry is served instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from flask import Flask, Response, g, request
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_KNOWN_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}

REQUESTS = Counter("nli_request", "HTTP requests answered", ["method", "endpoint", "status"])
REQUEST_LATENCY = Histogram(
    "nli_request_latency_seconds", "HTTP request latency", ["method", "endpoint"], buckets=_LATENCY_BUCKETS
)
INFERENCE_SECONDS = Histogram("nli_inference_seconds", "Seconds per forward pass", buckets=_LATENCY_BUCKETS)
BATCH_PAIRS = Histogram("nli_batch_pairs", "Pairs per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_TOKENS = Histogram(
    "nli_batch_padded_tokens", "Padded tokens per forward pass", buckets=(64, 256, 1024, 2048, 4096, 8192, 16384)
)
PAIRS = Counter("nli_pairs", "Pairs scored (by /predict, /batch-predict and /zero-shot)")
PREDICTED_LABELS = Counter("nli_predicted_label", "Predicted labels", ["label"])
IN_FLIGHT = Gauge("nli_requests_in_flight", "Requests being handled", multiprocess_mode="livesum")
REQUEST_TIMEOUTS = Counter("nli_request_timeouts", "Requests answered 408 after their deadline")
BORROWED_CORES = Counter("nli_borrowed_cores_passes", "Lone small passes run on idle workers' cores too")
MODEL_LOAD_SECONDS = Gauge("nli_model_load_seconds", "Seconds taken to load the model", multiprocess_mode="max")


def observe_forward(pairs: int, padded_tokens: int, seconds: float) -> None:
    """Engine observer: one forward pass happened."""
    INFERENCE_SECONDS.observe(seconds)
    BATCH_PAIRS.observe(pairs)
    BATCH_TOKENS.observe(padded_tokens)


def count_labels(labels: Iterable[str]) -> None:
    for label in labels:
        PREDICTED_LABELS.labels(label=label).inc()


def _endpoint() -> str:
    # The route pattern, not the raw path, keeps label cardinality bounded.
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def _method() -> str:
    return request.method if request.method in _KNOWN_METHODS else "OTHER"


def _before_request() -> None:
    g.metrics_started = time.perf_counter()
    IN_FLIGHT.inc()


def _after_request(response: Response) -> Response:
    method, endpoint = _method(), _endpoint()
    REQUESTS.labels(method=method, endpoint=endpoint, status=str(response.status_code)).inc()
    REQUEST_LATENCY.labels(method=method, endpoint=endpoint).observe(time.perf_counter() - g.metrics_started)
    return response


def _teardown_request(error: BaseException | None) -> None:
    if "metrics_started" in g:
        IN_FLIGHT.dec()


def init_app(app: Flask) -> None:
    """Count every request of ``app``."""
    app.before_request(_before_request)
    app.after_request(_after_request)
    app.teardown_request(_teardown_request)


# -- exporting -----------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def reset_multiprocess_dir(path: str) -> None:
    """Empty the metrics directory so a restart does not add up old counts."""
    directory = Path(path)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)


class _MultiProcessFiles:
    """prometheus_client's ``MultiProcessCollector``, minus the files still empty: a worker
    creates its file, then sizes it; reading it in between failed the whole scrape (500)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self):
        files = []
        for file in glob.glob(os.path.join(self.path, "*.db")):
            with contextlib.suppress(FileNotFoundError):  # a dead worker's live gauge, just dropped
                if os.path.getsize(file) > 0:
                    files.append(file)
        return multiprocess.MultiProcessCollector.merge(files, accumulate=True)


def export_registry() -> CollectorRegistry:
    """The registry to serve: all processes' files in multiprocess mode, else this process."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(_MultiProcessFiles(path))
    return registry


def start_exporter(port: int, host: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``port`` from a background thread of this process."""
    start_http_server(port, addr=host, registry=export_registry())


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay counted)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)
