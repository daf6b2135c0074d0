"""All settings of the service, read from environment variables in one place.

Every setting has a documented default; an invalid value stops start-up with a
one-line :class:`ConfigError` that names the variable. This module imports
nothing heavy (no torch, no Flask, no prometheus_client) so that
``gunicorn.conf.py`` can read it before anything else is loaded.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nli_service.inference.backend_choice import choose_backend

DEFAULT_MODEL = "cross-encoder/nli-distilroberta-base"


class ConfigError(ValueError):
    """A setting has an invalid value."""


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _optional_positive_int(raw: str) -> int | None:
    return None if raw.strip().lower() in ("", "auto") else _positive_int(raw)


def _optional_version(raw: str) -> int | None:
    return None if not raw.strip() else _positive_int(raw)


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < float("inf"):
        raise ValueError("must be a number >= 0")
    return value


def _optional(raw: str) -> str | None:
    return raw.strip() or None


def _rate_limits(raw: str) -> str | None:
    """``20/second;1000/minute`` (the ``limits`` package's notation), or empty for none."""
    if not raw.strip():
        return None
    from limits import parse_many

    parse_many(raw)  # ValueError names what it could not read
    return raw.strip()


def _redis_url(raw: str) -> str | None:
    if not raw.strip():
        return None
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return raw.strip()


def _otlp_endpoint(raw: str) -> str | None:
    if not raw.strip():
        return None
    if not raw.strip().startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL (the collector's OTLP/HTTP port, e.g. :4318)")
    return raw.strip()


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port between 0 and 65535")
    return value


def _boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _device(raw: str) -> str:
    value = raw.strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda|cuda:\d+|mps", value):
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
    return value


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def _non_empty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _setting(env: str, default: str, parse: Callable[[str], Any], doc: str) -> Any:
    return field(metadata={"env": env, "default": default, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """The service's configuration; build it with :meth:`from_env`."""

    model: str = _setting("NLI_MODEL", DEFAULT_MODEL, _non_empty, "Hugging Face hub id or local model directory")
    model_repository: str | None = _setting(
        "NLI_MODEL_REPOSITORY",
        "",
        _optional,
        "folder of `NAME/VERSION/` model folders (NLI_MODEL: the NAME, if several); serves the highest VERSION",
    )
    model_version: int | None = _setting(
        "NLI_MODEL_VERSION", "", _optional_version, "with NLI_MODEL_REPOSITORY: serve this version (empty: the highest)"
    )
    model_poll_seconds: float = _setting(
        "NLI_MODEL_POLL_SECONDS",
        "10",
        _non_negative_float,
        "with NLI_MODEL_REPOSITORY under Gunicorn: seconds between looks for a new version (0: only on SIGHUP)",
    )
    device: str = _setting("NLI_DEVICE", "auto", _device, "auto / cpu / cuda / cuda:N")
    dtype: str = _setting(
        "NLI_DTYPE",
        "auto",
        _choice("auto", "float32", "float16", "bfloat16"),
        "auto (float32 on CPU, float16 on GPU) / float32 / float16 / bfloat16",
    )
    backend: str = _setting(
        "NLI_BACKEND",
        "auto",
        _choice("auto", "torch", "onnx"),
        "auto (torch; onnx when NLI_QUANTIZE=int8) / torch / onnx (ONNX Runtime, CPU)",
    )
    quantize: str = _setting(
        "NLI_QUANTIZE", "none", _choice("none", "int8"), "none / int8 (ONNX Runtime dynamic int8, CPU only)"
    )
    calibration_data: str = _setting(
        "NLI_CALIBRATION_DATA",
        "../shared/data/nli/snli/validation.tsv",
        _non_empty,
        "premise/hypothesis TSV calibrating int8 (its first 512 pairs); missing: plain dynamic int8",
    )
    batch_size: int = _setting(
        "NLI_BATCH_SIZE", "auto", _optional_positive_int, "pairs per forward pass (auto: see Layout)"
    )
    max_batch_tokens: int = _setting(
        "NLI_MAX_BATCH_TOKENS", "8192", _positive_int, "padded tokens per forward pass (caps long-text batches)"
    )
    sort_by_length: bool = _setting(
        "NLI_SORT_BY_LENGTH", "true", _boolean, "sort a request's pairs by length before chunking (less padding)"
    )
    padding_free: bool = _setting(
        "NLI_PADDING_FREE",
        "true",
        _boolean,
        "torch: forward passes on real tokens only, pairs packed into one row (BERT/RoBERTa layouts; others padded)",
    )
    batch_wait_ms: float = _setting(
        "NLI_BATCH_WAIT_MS",
        "5",
        _non_negative_float,
        "gthread micro-batching: ms to wait for requests still arriving or due back",
    )
    max_queued_pairs: int = _setting(
        "NLI_MAX_QUEUED_PAIRS",
        "1024",
        _non_negative_int,
        "gthread micro-batching: pairs waiting in a worker before new requests get 429 (0: no limit)",
    )
    max_length: int | None = _setting(
        "NLI_MAX_LENGTH", "auto", _optional_positive_int, "tokens per pair (auto: the model's limit, at most 512)"
    )
    max_pairs: int = _setting("NLI_MAX_PAIRS", "256", _positive_int, "most pairs in one batch request (more: 413)")
    max_body_bytes: int = _setting(
        "NLI_MAX_BODY_BYTES", str(1024 * 1024), _positive_int, "largest request body in bytes (more: 413)"
    )
    max_expanded_chars: int = _setting(
        "NLI_MAX_EXPANDED_CHARS",
        str(4 * 1024 * 1024),
        _positive_int,
        "zero-shot: most characters of model input, texts x labels x (text + hypothesis) (more: 413)",
    )
    verify_window_sentences: int = _setting(
        "NLI_VERIFY_WINDOW_SENTENCES",
        "2",
        _positive_int,
        "/verify: windows are every run of 1 to this many adjacent sentences (2: each sentence, and it with the next)",
    )
    malloc_arenas: int = _setting(
        "NLI_MALLOC_ARENAS",
        "2",
        _non_negative_int,
        "glibc malloc arenas a worker's threads share (0: glibc's default, 8 per core; each fragments on its own)",
    )
    kernel_cache: int = _setting(
        "NLI_KERNEL_CACHE",
        "128",
        _non_negative_int,
        "oneDNN kernels (one per tensor shape) a worker keeps for reuse; oneDNN's own 1024 grew workers for an hour",
    )
    request_timeout: float = _setting(
        "NLI_REQUEST_TIMEOUT", "20", _positive_float, "seconds a request may take (more: 408)"
    )
    drain_seconds: float = _setting(
        "NLI_DRAIN_SECONDS",
        "5",
        _non_negative_float,
        "on SIGTERM: seconds /ready answers 503 while requests are still served, before stopping",
    )
    client_timeout: float = _setting(
        "NLI_CLIENT_TIMEOUT",
        "5",
        _positive_float,
        "seconds a client has to send a whole request, headers and body (more: 408, connection closed)",
    )
    offline: bool = _setting(
        "NLI_OFFLINE", "false", _boolean, "never contact the hub (also implied by HF_HUB_OFFLINE=1)"
    )
    hub_timeout: float = _setting(
        "NLI_HUB_TIMEOUT", "5", _positive_float, "seconds to wait for the hub before giving up on a download"
    )
    log_dir: str = _setting("NLI_LOG_DIR", "logs", _non_empty, "directory of nli_service.log")
    log_level: str = _setting("NLI_LOG_LEVEL", "INFO", _log_level, "DEBUG / INFO / WARNING / ERROR")
    log_inputs: bool = _setting(
        "NLI_LOG_INPUTS", "false", _boolean, "log premise and hypothesis texts (off: only counts)"
    )
    metrics_port: int = _setting("NLI_METRICS_PORT", "8000", _port, "Prometheus side port; 0 disables it")
    host: str = _setting("NLI_HOST", "0.0.0.0", _non_empty, "address to listen on")
    port: int = _setting("NLI_PORT", "5000", _port, "HTTP port")
    workers: int = _setting(
        "NLI_WORKERS", "auto", _optional_positive_int, "Gunicorn worker processes (auto: see Layout)"
    )
    worker_class: str = _setting(
        "NLI_WORKER_CLASS",
        "auto",
        _choice("auto", "sync", "gthread"),
        "Gunicorn worker class (auto: gthread); gthread batches concurrent requests and balances connections",
    )
    idle_cores_max_pairs: int = _setting(
        "NLI_IDLE_CORES_MAX_PAIRS",
        "2",
        _non_negative_int,
        "gthread, torch on CPU: a pass of at most this many pairs uses every core while no other worker computes"
        " (0: never)",
    )
    threads: int = _setting(
        "NLI_THREADS", "auto", _optional_positive_int, "request threads per gthread worker (auto: see Layout)"
    )
    max_requests: int = _setting(
        "NLI_MAX_REQUESTS",
        "10000",
        _non_negative_int,
        "recycle a worker after this many requests (+ up to 10 % jitter; 0: never)",
    )
    torch_threads: int | None = _setting(
        "NLI_TORCH_THREADS", "auto", _optional_positive_int, "torch threads per worker (auto: cores // workers)"
    )
    api_keys_file: str | None = _setting(
        "NLI_API_KEYS_FILE",
        "",
        _optional,
        "file of API keys, one per line (`key` or `name:key`); set: the API routes need one (re-read when it changes)",
    )
    rate_limit: str | None = _setting(
        "NLI_RATE_LIMIT", "", _rate_limits, "requests per API key (or client address), e.g. `20/second;1000/minute`"
    )
    pair_rate_limit: str | None = _setting(
        "NLI_PAIR_RATE_LIMIT", "", _rate_limits, "pairs per API key (or client address), e.g. `5000/minute`"
    )
    rate_limit_fail_closed: bool = _setting(
        "NLI_RATE_LIMIT_FAIL_CLOSED", "false", _boolean, "while Redis is unreachable: refuse (503) instead of serving"
    )
    proxies: int = _setting(
        "NLI_PROXIES",
        "0",
        _non_negative_int,
        "proxies in front that append to X-Forwarded-For (the shipped nginx: 1); client addresses are read past them",
    )
    redis_url: str | None = _setting(
        "NLI_REDIS_URL", "", _redis_url, "Redis for rate limits and the result cache, shared by workers and replicas"
    )
    cache_size: int = _setting(
        "NLI_CACHE_SIZE", "10000", _non_negative_int, "results kept in each worker's in-process cache (0: no cache)"
    )
    cache_ttl: float = _setting("NLI_CACHE_TTL", "86400", _positive_float, "seconds a result stays in the Redis cache")
    otlp_endpoint: str | None = _setting(
        "NLI_OTLP_ENDPOINT",
        "",
        _otlp_endpoint,
        "OpenTelemetry collector's OTLP/HTTP URL, e.g. http://127.0.0.1:4318: every request is traced (empty: off)",
    )

    model_is_default: bool = field(default=True, metadata={})  # NLI_MODEL unset: may fall back to the bundled model

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``environ`` (default: ``os.environ``)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if "env" not in spec.metadata:
                continue
            env, default, parse = spec.metadata["env"], spec.metadata["default"], spec.metadata["parse"]
            raw = str(environ.get(env, default))
            try:
                values[spec.name] = parse(raw)
            except ValueError as error:
                raise ConfigError(f"{env}={raw!r} is invalid: {error}") from None
        if _boolean(environ.get("HF_HUB_OFFLINE", "0") or "0"):
            values["offline"] = True
        values["model_is_default"] = "NLI_MODEL" not in environ
        if values["model_version"] is not None and values["model_repository"] is None:
            raise ConfigError("NLI_MODEL_VERSION is set but NLI_MODEL_REPOSITORY is not: versions live in a repository")
        values["backend"] = _backend_for(values["backend"], values["quantize"])
        layout = default_layout(available_cores(), gpu=uses_gpu(values["device"]))
        for name in ("workers", "threads", "batch_size"):
            if values[name] is None:
                values[name] = getattr(layout, name)
        if values["worker_class"] == "auto":
            values["worker_class"] = layout.worker_class
        return cls(**values)

    def torch_threads_for(self, workers: int) -> int:
        """Intra-op threads per process, so that workers x threads <= cores."""
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, available_cores() // workers)


@dataclass(frozen=True)
class Layout:
    """The process layout ``auto`` settings take, from the hardware.

    CPU: gthread workers, one per core (at most ``MAX_CPU_WORKERS``), each computing with its
    share of the cores. Their request threads queue into one cross-request batcher per
    worker, which fills passes of up to 16 pairs from concurrent requests; connections are
    balanced across workers and a lone request borrows idle cores. Sync workers cannot batch
    across requests, and more processes than cores only fight for them (the README says what
    was measured, docs/benchmarks.md the latest figures).

    GPU: one gthread worker holding the model once on the device, fed by 32 request threads
    through the batcher in passes of up to 32 pairs (a GPU wants large passes; a second
    process would hold a second copy of the weights in device memory).
    """

    workers: int
    worker_class: str
    threads: int
    batch_size: int


MAX_CPU_WORKERS = 8  # past this, each worker computes with more threads instead (memory: one model per worker)


def default_layout(cores: int, gpu: bool = False) -> Layout:
    if gpu:
        return Layout(workers=1, worker_class="gthread", threads=32, batch_size=32)
    return Layout(workers=max(1, min(cores, MAX_CPU_WORKERS)), worker_class="gthread", threads=16, batch_size=16)


def uses_gpu(device: str) -> bool:
    """Whether the model will run on a GPU, without importing torch (this module must stay light)."""
    return device.startswith("cuda") or (device == "auto" and os.path.exists("/dev/nvidia0"))


def _backend_for(backend: str, quantize: str) -> str:
    try:
        return choose_backend(backend, quantize)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity (taskset, cpusets), capped by a CPU quota
    (a container's ``--cpus``, a Kubernetes CPU limit), which the affinity does not show."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota(cgroup_root)
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """Cores' worth of CPU time the cgroup allows (cgroup v2 ``cpu.max``, or v1's CFS quota), None if unlimited.

    Read at the mount root, which is this process's own cgroup inside a container."""
    try:
        limit = (cgroup_root / "cpu.max").read_text().split()  # v2: "<quota> <period>" or "max <period>"
    except OSError:
        try:
            limit = [
                (cgroup_root / "cpu" / name).read_text().strip() for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")
            ]
        except OSError:
            return None
    try:
        quota, period = float(limit[0]), float(limit[1])
    except (ValueError, IndexError):  # "max", or "-1" below
        return None
    return quota / period if quota > 0 and period > 0 else None


def documented_settings() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for docs and ``--help``."""
    return [(f.metadata["env"], f.metadata["default"], f.metadata["doc"]) for f in fields(Settings) if f.metadata]
