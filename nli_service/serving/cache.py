"""The result cache: a pair answered before is answered again without computing it.

:class:`CachingPredictor` sits in front of the engine (or the batcher): it looks every pair of
a call up, computes only the pairs that missed (each once, however often a request repeats
it), stores them and puts the logits back in input order. A hit never queues in the batcher.

A result is keyed by a sha256 of everything its logits depend on: the model's id and version
(a digest of its files, and how they run: backend, export, quantisation, dtype), max_length
and the pair, each field length-prefixed so that no two pairs share a key. It is stored as its
logits' float32 bytes and one byte for its truncated flag, so an answer from the cache is
byte-identical to the computed one, flag included.

Stores: this worker's LRU (:class:`MemoryStore`, ``NLI_CACHE_SIZE`` results) by default;
Redis (:class:`RedisStore`, shared by every worker and replica, ``NLI_CACHE_TTL``) when
``NLI_REDIS_URL`` is set. Redis is an optimisation, never a dependency: every call is bounded
by a short socket timeout, a failure counts as misses (the request is computed), and Redis is
left alone for :data:`REDIS_PAUSE` seconds before the next try, so an outage costs one timeout
per pause, not one per request, and the cache is back within seconds of Redis.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import redis
import torch
from cachetools import LRUCache
from redis.backoff import NoBackoff
from redis.retry import Retry

from nli_service import metrics
from nli_service.config import Settings
from nli_service.inference.engine import NLIEngine, Scores
from nli_service.inference.labels import LabelMap
from nli_service.inference.types import Pair, Prediction
from nli_service.serving.deadline import Deadline
from nli_service.serving.outage import Outage
from nli_service.serving.service import Predictor

log = logging.getLogger(__name__)
T = TypeVar("T")

ROW = np.dtype("<f4")  # a stored result: its logits as little-endian float32, the same bytes on every replica
KEY_PREFIX = "nli:result:v2:"  # v2: a row ends with the truncated flag
REDIS_TIMEOUT = 0.5  # seconds: connecting, or waiting for one answer
REDIS_PAUSE = 1.0  # seconds Redis is left alone after a failure


class ResultStore(Protocol):
    """Where results are kept: values are stored rows (bytes), keys from :class:`ResultKeys`."""

    name: str  # the metrics' `store` label

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def put_many(self, items: dict[str, bytes]) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class _CountingLRU(LRUCache):
    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()
        metrics.CACHE_EVICTIONS.labels(store=MemoryStore.name).inc()
        return item


class MemoryStore:
    """This process's least-recently-used ``size`` results (thread-safe)."""

    name = "memory"

    def __init__(self, size: int) -> None:
        self.size = size
        self._lru = _CountingLRU(maxsize=size)
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            return [self._lru.get(key) for key in keys]

    def put_many(self, items: dict[str, bytes]) -> None:
        with self._lock:
            self._lru.update(items)

    def describe(self) -> dict[str, Any]:
        return {"store": self.name, "size": self.size, "ttl_seconds": None}


class RedisStore:
    """Results in Redis for ``ttl`` seconds, shared by every worker and replica using it."""

    name = "redis"

    def __init__(self, url: str, ttl: float, timeout: float = REDIS_TIMEOUT, pause: float = REDIS_PAUSE) -> None:
        self.ttl = ttl
        # No retries: redis-py's default retries with backoff would hold a request for seconds.
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self.outage = Outage(
            log, "result cache (Redis) unreachable: computing every pair", "result cache (Redis) reachable again", pause
        )

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = self._call(lambda: self.client.mget(keys))
        return list(values) if values is not None else [None] * len(keys)

    def put_many(self, items: dict[str, bytes]) -> None:
        def put() -> None:
            pipeline = self.client.pipeline(transaction=False)
            for key, value in items.items():
                pipeline.set(key, value, px=max(1, round(self.ttl * 1000)))
            pipeline.execute()

        self._call(put)

    def _call(self, operation: Callable[[], T]) -> T | None:
        """``operation()``, or None if Redis failed just now or fails now (counted, logged once per outage)."""
        if self.outage.skipping():
            return None
        try:
            result = operation()
        except redis.RedisError as error:
            metrics.CACHE_ERRORS.labels(store=self.name).inc()
            self.outage.failed(error)
            return None
        self.outage.answered()
        return result

    def describe(self) -> dict[str, Any]:
        return {"store": self.name, "size": None, "ttl_seconds": self.ttl}


def result_store(settings: Settings) -> ResultStore | None:
    """The store the settings ask for: Redis if ``NLI_REDIS_URL`` is set, else memory; None when
    ``NLI_CACHE_SIZE=0`` (no cache at all)."""
    if not settings.cache_size:
        return None
    if settings.redis_url:
        return RedisStore(settings.redis_url, settings.cache_ttl)
    return MemoryStore(settings.cache_size)


def _field(value: object) -> bytes:
    data = str(value).encode("utf-8", "surrogatepass")  # JSON may carry lone surrogates
    return len(data).to_bytes(8, "big") + data


class ResultKeys:
    """The key of a pair's result with ``engine``: everything its logits depend on, hashed."""

    def __init__(self, engine: NLIEngine) -> None:
        self._base = hashlib.sha256()
        # The repository version too: a new version never answers from an old one's results, whatever its files.
        for part in (
            engine.model_id,
            engine.source.version,
            engine.version,
            engine.backend.name,
            engine.backend.quantize,
            engine.dtype,
        ):
            self._base.update(_field(part))
        self._base.update(_field(engine.max_length))

    def __call__(self, pair: Pair) -> str:
        digest = self._base.copy()
        digest.update(_field(pair.premise) + _field(pair.hypothesis))
        return KEY_PREFIX + digest.hexdigest()


class CachingPredictor:
    """``inner`` (the engine or the batcher) behind ``store``; without a store it only passes calls on."""

    def __init__(self, inner: Predictor, engine: NLIEngine, store: ResultStore | None) -> None:
        self.inner = inner
        self.engine = engine
        self.store = store
        self.keys = ResultKeys(engine) if store is not None else None

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def labels(self) -> LabelMap:
        return self.inner.labels

    def describe(self) -> dict[str, Any]:
        cache = self.store.describe() if self.store is not None else {"store": None, "size": 0, "ttl_seconds": None}
        return {**self.inner.describe(), "cache": cache}

    def predict(self, pairs: Sequence[Pair], deadline: Deadline | None = None) -> list[Prediction]:
        if self.store is None:
            return self.inner.predict(pairs, deadline)
        return self.engine.to_predictions(self.scores(pairs, deadline))

    def scores(self, pairs: Sequence[Pair], deadline: Deadline | None = None) -> Scores:
        """Logits and truncated flags in input order: stored rows for the pairs seen before, the others computed."""
        if self.store is None or self.keys is None or not pairs:
            return self.inner.scores(pairs, deadline)
        width = len(self.labels.names) * ROW.itemsize + 1
        keys = [self.keys(pair) for pair in pairs]
        first: dict[str, int] = {}  # each key once, at its first pair
        for index, key in enumerate(keys):
            first.setdefault(key, index)
        rows = {
            key: row
            for key, row in zip(first, self.store.get_many(list(first)), strict=True)
            if row is not None and len(row) == width
        }
        missing = [key for key in first if key not in rows]
        metrics.CACHE_HITS.labels(store=self.store.name).inc(len(rows))
        metrics.CACHE_MISSES.labels(store=self.store.name).inc(len(missing))
        if missing:
            computed = self.inner.scores([pairs[first[key]] for key in missing], deadline)
            values = np.ascontiguousarray(computed.logits.numpy(), dtype=ROW)
            fresh = {
                key: values[number].tobytes() + bytes([computed.truncated[number]])
                for number, key in enumerate(missing)
            }
            self.store.put_many(fresh)
            rows.update(fresh)
        # Every row, computed or not, goes through the same bytes: cached answers equal computed ones.
        table = np.frombuffer(b"".join(rows[key][:-1] for key in keys), dtype=ROW).reshape(len(keys), -1)
        return Scores(torch.from_numpy(table.astype(np.float32)), [bool(rows[key][-1]) for key in keys])
