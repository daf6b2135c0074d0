"""Rate limits per API key (or client address), in requests and in pairs, shared through Redis.

``NLI_RATE_LIMIT`` counts requests (e.g. ``20/second;1000/minute``), checked before the body is
read; ``NLI_PAIR_RATE_LIMIT`` counts pairs (a 256-pair batch costs 256), charged once the body
is decoded. The algorithms and stores are the ``limits`` package's (the one Flask-Limiter is
built on): a moving window for requests, exact, so N of a burst of 3N pass however many workers
share the store; a sliding-window counter for pairs, O(1) per request whatever the cost. With
``NLI_REDIS_URL`` the counts live in Redis, shared by every worker and replica; without it each
worker counts on its own (in-process).

Over a limit: 429 with ``Retry-After`` and the ``RateLimit-Limit`` / ``RateLimit-Remaining`` /
``RateLimit-Reset`` / ``RateLimit-Policy`` headers (IETF httpapi draft); answers within the
limits carry them too. If the store cannot answer (Redis down), the request is served
(``NLI_RATE_LIMIT_FAIL_CLOSED=false``, the default) or refused 503; either way the failure is
counted and logged, the store is left alone for a second, and checks resume once it answers.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass

from flask import Flask, Response, current_app, g, request
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter, RateLimiter, SlidingWindowCounterRateLimiter

from nli_service import metrics
from nli_service.api.auth import OPEN_ENDPOINTS
from nli_service.api.errors import ApiError
from nli_service.config import Settings
from nli_service.serving.outage import Outage

log = logging.getLogger(__name__)

STORE_TIMEOUT = 0.25  # seconds a Redis call may take before the check counts as failed
STORE_RETRY_SECONDS = 1.0  # after a failure, the store is left alone this long
_WARN_EVERY = 10.0
_EXTENSION_KEY = "nli_rate_limits"


@dataclass(frozen=True)
class _Limit:
    kind: str  # "requests" or "pairs"
    item: RateLimitItem
    strategy: RateLimiter

    @property
    def policy(self) -> str:
        return f"{self.item.amount};w={self.item.get_expiry()}"


@dataclass(frozen=True)
class _Verdict:
    limit: _Limit
    allowed: bool
    remaining: int
    reset_seconds: float


def _parse(limits: str | None) -> list[RateLimitItem]:
    return parse_many(limits) if limits else []


class StoreUnavailable(Exception):
    """The rate-limit store did not answer."""


class RateLimits:
    """This process's limits and their store (created after the fork, per process)."""

    def __init__(self, settings: Settings) -> None:
        uri = settings.redis_url or "memory://"
        options = (
            {"socket_timeout": STORE_TIMEOUT, "socket_connect_timeout": STORE_TIMEOUT} if settings.redis_url else {}
        )
        self.store_name = "redis" if settings.redis_url else "memory"
        self.storage: Storage = storage_from_string(uri, wrap_exceptions=True, **options)
        moving, sliding = MovingWindowRateLimiter(self.storage), SlidingWindowCounterRateLimiter(self.storage)
        self.requests = [_Limit("requests", item, moving) for item in _parse(settings.rate_limit)]
        self.pairs = [_Limit("pairs", item, sliding) for item in _parse(settings.pair_rate_limit)]
        self.fail_closed = settings.rate_limit_fail_closed
        action = "refusing requests (503)" if self.fail_closed else "serving without rate limits"
        self.outage = Outage(
            log,
            f"rate-limit store unreachable: {action}",
            "rate-limit store reachable again",
            STORE_RETRY_SECONDS,
            warn_every=_WARN_EVERY,
        )

    def charge(self, limits: list[_Limit], identity: str, cost: int) -> list[_Verdict]:
        """Count ``cost`` against each limit in turn, stopping at the first exceeded."""
        if self.outage.skipping():
            raise StoreUnavailable("recently unreachable")
        verdicts = []
        try:
            for limit in limits:
                allowed = limit.strategy.hit(limit.item, limit.kind, identity, cost=cost)
                stats = limit.strategy.get_window_stats(limit.item, limit.kind, identity)
                reset = max(stats.reset_time - time.time(), 0.0)
                verdicts.append(_Verdict(limit, allowed, stats.remaining, reset))
                if not allowed:
                    break
        except StorageError as error:
            self.outage.failed(error)
            raise StoreUnavailable(str(error)) from None
        self.outage.answered()
        return verdicts


_per_process: dict[tuple[int, Settings], RateLimits] = {}
_per_process_lock = threading.Lock()


def _limits() -> RateLimits | None:
    settings: Settings = current_app.config["NLI_SETTINGS"]
    if not (settings.rate_limit or settings.pair_rate_limit):
        return None
    key = (os.getpid(), settings)  # a store's connections and threads are the process's own
    found = _per_process.get(key)
    if found is None:
        with _per_process_lock:
            found = _per_process.setdefault(key, RateLimits(settings))
    return found


def identity() -> str:
    """Whom a limit counts: the API key's name, else the client's address."""
    name = g.get("api_key_name")
    return f"key:{name}" if name is not None else f"addr:{request.remote_addr or 'unknown'}"


def _apply(kind: str, cost: int) -> None:
    limits = _limits()
    if limits is None:
        return
    chosen = limits.requests if kind == "requests" else limits.pairs
    if not chosen or cost <= 0:
        return
    try:
        verdicts = limits.charge(chosen, identity(), cost)
    except StoreUnavailable:
        outcome = "refused" if limits.fail_closed else "served"
        metrics.RATE_LIMIT_STORE_ERRORS.labels(outcome=outcome).inc()
        if limits.fail_closed:
            raise ApiError(
                "the rate-limit store is unreachable and NLI_RATE_LIMIT_FAIL_CLOSED is set; retry shortly",
                503,
                {"Retry-After": "1"},
            ) from None
        return
    g.rate_limit_verdicts = [*g.get("rate_limit_verdicts", []), *verdicts]
    refused = next((verdict for verdict in verdicts if not verdict.allowed), None)
    if refused is not None:
        metrics.RATE_LIMITED.labels(limit=kind).inc()
        retry_after = max(1, math.ceil(refused.reset_seconds))
        item = refused.limit.item
        raise ApiError(
            f"rate limit exceeded: {item.amount} {kind} per {item.get_expiry()} s; retry after {retry_after} s",
            429,
            {"Retry-After": str(retry_after), **_headers(verdicts)},
        )


def count_pairs(pairs: int) -> None:
    """Charge a decoded request's ``pairs`` to its client's pair limits (429 over them)."""
    _apply("pairs", pairs)


def _check_request() -> None:
    if request.endpoint in OPEN_ENDPOINTS or request.endpoint is None:
        return
    _apply("requests", 1)


def _headers(verdicts: list[_Verdict]) -> dict[str, str]:
    """The RateLimit-* headers of the tightest limit, and the policy of all of them."""
    tightest = min(verdicts, key=lambda verdict: (verdict.allowed, verdict.remaining))
    return {
        "RateLimit-Limit": str(tightest.limit.item.amount),
        "RateLimit-Remaining": str(max(tightest.remaining, 0)),
        "RateLimit-Reset": str(math.ceil(tightest.reset_seconds)),
        "RateLimit-Policy": ", ".join(verdict.limit.policy for verdict in verdicts),
    }


def _add_headers(response: Response) -> Response:
    verdicts = g.get("rate_limit_verdicts")
    if verdicts and "RateLimit-Limit" not in response.headers:
        response.headers.update(_headers(verdicts))
    return response


def init_app(app: Flask) -> None:
    """Check ``NLI_RATE_LIMIT`` before each API request, and add the RateLimit-* headers to answers."""
    app.before_request(_check_request)
    app.after_request(_add_headers)
