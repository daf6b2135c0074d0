"""The service's Prometheus metrics, correct across Gunicorn workers.

Under Gunicorn, ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before
this module is imported: each process then writes its values to files there,
and the exporter in the master (``server/metrics_exporter.py``) adds them up. Under
``python app.py`` the ordinary in-process registry is served instead. The API counts
requests (``api/request_metrics.py``), the serving layer pairs and forward passes, the
server layer worker exits; the exporter adds each worker's memory at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("nli_request", "HTTP requests answered", ["method", "endpoint", "status"])
REQUEST_LATENCY = Histogram(
    "nli_request_latency_seconds", "HTTP request latency", ["method", "endpoint"], buckets=_LATENCY_BUCKETS
)
# What depends on the model carries the model and its version (serve_model); ``nli_model_info`` counts the workers.
_MODEL = ["model", "version"]
INFERENCE_SECONDS = Histogram("nli_inference_seconds", "Seconds per forward pass", _MODEL, buckets=_LATENCY_BUCKETS)
BATCH_PAIRS = Histogram("nli_batch_pairs", "Pairs per forward pass", _MODEL, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_TOKENS = Histogram(
    "nli_batch_padded_tokens",
    "Padded tokens per forward pass",
    _MODEL,
    buckets=(64, 256, 1024, 2048, 4096, 8192, 16384),
)
PAIRS = Counter("nli_pairs", "Pairs scored (by /predict, /batch-predict and /zero-shot)")
TRUNCATED_PAIRS = Counter(
    "nli_truncated_pairs", "Pairs cut to fit the model's max_length: the end of their premise was not read"
)
PREDICTED_LABELS = Counter("nli_predicted_label", "Predicted labels", ["label", *_MODEL])
IN_FLIGHT = Gauge("nli_requests_in_flight", "Requests being handled", multiprocess_mode="livesum")
QUEUED_PAIRS = Gauge(
    "nli_queued_pairs",
    "Pairs waiting in the workers' batchers (or being tokenised for them)",
    multiprocess_mode="livesum",
)
REQUEST_TIMEOUTS = Counter("nli_request_timeouts", "Requests answered 408 after their deadline")
DROPPED = Counter(
    "nli_requests_dropped",
    "Requests answered without computing them: deadline passed or too near while queued, client gone",
    ["reason"],
)
CACHE_HITS = Counter("nli_cache_hits", "Pairs answered from the result cache", ["store"])
CACHE_MISSES = Counter("nli_cache_misses", "Pairs looked up in the result cache and not found", ["store"])
CACHE_EVICTIONS = Counter("nli_cache_evictions", "Results evicted from the in-process cache (LRU)", ["store"])
CACHE_ERRORS = Counter(
    "nli_cache_errors", "Result-cache calls that failed (Redis unreachable): served uncached", ["store"]
)
KEY_REQUESTS = Counter("nli_api_key_requests", "API requests by key name (never the key)", ["key", "status"])
RATE_LIMITED = Counter("nli_rate_limited", "Requests refused 429 by a rate limit", ["limit"])
RATE_LIMIT_STORE_ERRORS = Counter(
    "nli_rate_limit_store_errors", "Rate-limit checks the store (Redis) could not answer", ["outcome"]
)
BORROWED_CORES = Counter("nli_borrowed_cores_passes", "Lone small passes run on idle workers' cores too")
MODEL_LOAD_SECONDS = Gauge("nli_model_load_seconds", "Seconds taken to load the model", multiprocess_mode="max")
MODEL_FALLBACK = Gauge(
    "nli_model_fallback",
    "1 while the bundled model serves in place of the default one (which could not be had), else 0",
    multiprocess_mode="max",
)
# Exits are counted by the Gunicorn master, planned exits by the workers themselves: the
# difference is the workers that died unasked (killed, out of memory, timed out, crashed).
WORKER_EXITS = Counter("nli_worker_exits", "Gunicorn workers that exited, for any reason (counted by the master)")
WORKER_PLANNED_EXITS = Counter(
    "nli_worker_planned_exits",
    "Gunicorn workers that exited because they were told to: recycled after NLI_MAX_REQUESTS, or stopped",
)
MODEL_INFO = Gauge(
    "nli_model_info",
    "Workers serving each model and version (version: the repository's, else a digest of the model's files)",
    _MODEL,
    multiprocess_mode="livesum",
)
MODEL_VERSIONS_REFUSED = Counter(
    "nli_model_versions_refused",
    "Repository model versions not served: they failed to load, to answer, or were not NLI models",
    _MODEL,
)


_served = {"model": "", "version": ""}  # this process's model (one per serving process)


def serve_model(model: str, version: str) -> None:
    """The model this process serves from now on: the labels of the metrics that depend on it."""
    _served.update(model=model, version=version)


def observe_forward(pairs: int, padded_tokens: int, seconds: float) -> None:
    """Engine observer: one forward pass happened."""
    INFERENCE_SECONDS.labels(**_served).observe(seconds)
    BATCH_PAIRS.labels(**_served).observe(pairs)
    BATCH_TOKENS.labels(**_served).observe(padded_tokens)


def count_labels(labels: Iterable[str]) -> None:
    for label in labels:
        PREDICTED_LABELS.labels(label=label, **_served).inc()
