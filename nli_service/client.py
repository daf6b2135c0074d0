"""Python clients for nli-service: :class:`NLIClient` (threads) and :class:`AsyncNLIClient` (asyncio).

Both retry connection errors, 429, 502, 503 and 504 with exponential backoff and jitter,
honouring ``Retry-After`` (seconds or an HTTP date); they never retry other 4xx answers.
Errors carry the status, the server's message and the request id. ``rate``/``burst`` set a
client-side token bucket. ``NLIClient.submit`` runs a call in the background with bounded
concurrency and returns a ``concurrent.futures.Future``; its ``callback`` is called exactly
once, with the result or the exception (a ``CancelledError`` if the future was cancelled).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

from nli_service.inference.types import DEFAULT_TEMPLATE, Span, Verdict, ZeroShotResult
from nli_service.inference.types import Prediction as PredictResult

RETRIED_STATUSES = {429, 502, 503, 504}
DEFAULT_MAX_PAIRS = 64  # when /model does not say
PairLike = tuple[str, str] | dict[str, str]


# -- errors -----------------------------------------------------------------------------


class NLIError(Exception):
    """Any failure of a call to the service."""


class NLIConnectionError(NLIError):
    """The service could not be reached (after the retries)."""


class NLIHTTPError(NLIError):
    """The service answered with an error status."""

    def __init__(self, status: int, message: str, request_id: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}" + (f" (request id {request_id})" if request_id else ""))
        self.status, self.message, self.request_id = status, message, request_id


class NLIResponseError(NLIError):
    """The service answered with a success status but a body that is not JSON."""


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:  # also UnicodeDecodeError
        return None


def _text_snippet(response: httpx.Response, limit: int = 200) -> str:
    text = " ".join(response.text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _raise_for(response: httpx.Response) -> None:
    """Raise :class:`NLIHTTPError` for an error status, whatever the body (JSON object or not)."""
    if response.status_code < 400:
        return
    body = _json_body(response)
    body = body if isinstance(body, dict) else {}
    message = body.get("error")
    if not isinstance(message, str):
        message = _text_snippet(response) or response.reason_phrase
    request_id = body.get("request_id") or response.headers.get("X-Request-ID")
    raise NLIHTTPError(response.status_code, message, request_id)


def _answer(response: httpx.Response) -> Any:
    """The JSON body of a successful answer; NLIHTTPError or NLIResponseError otherwise."""
    _raise_for(response)
    body = _json_body(response)
    if body is None:
        raise NLIResponseError(f"HTTP {response.status_code} answer is not JSON: {_text_snippet(response)!r}")
    return body


def _pair_json(pair: PairLike) -> dict[str, str]:
    if isinstance(pair, dict):
        return {"premise": pair["premise"], "hypothesis": pair["hypothesis"]}
    premise, hypothesis = pair
    return {"premise": premise, "hypothesis": hypothesis}


def _zero_shot_body(text: str | Sequence[str], labels: Sequence[str], template: str, multi_label: bool) -> dict:
    body: dict[str, Any] = {"labels": list(labels), "hypothesis_template": template, "multi_label": multi_label}
    body["text" if isinstance(text, str) else "texts"] = text if isinstance(text, str) else list(text)
    return body


def _zero_shot_results(text: str | Sequence[str], body: dict) -> ZeroShotResult | list[ZeroShotResult]:
    if isinstance(text, str):
        return ZeroShotResult(body["labels"], body["scores"], body.get("truncated", False))
    return [ZeroShotResult(r["labels"], r["scores"], r.get("truncated", False)) for r in body["results"]]


def _prediction(body: dict) -> PredictResult:
    return PredictResult(body["label"], body["scores"], body.get("truncated", False))


def _verdicts(body: dict) -> list[Verdict]:
    return [
        Verdict(
            r["label"], r["scores"], r["truncated"], Span(**{k: r["evidence"][k] for k in ("start", "end", "text")})
        )
        for r in body["results"]
    ]


T = TypeVar("T")


def _from_json(cls: type[T], body: dict[str, Any], **converted: Any) -> T:
    """``cls`` from a JSON body: ``converted`` fields as given, every other field by name (None when absent)."""
    plain = {f.name: body.get(f.name) for f in fields(cls) if f.name not in converted and f.name != "raw"}
    return cls(**plain, **converted, raw=body)


@dataclass(frozen=True)
class Health:
    """``GET /health``: ``status`` is "ok" once the model is loaded ("loading" before)."""

    status: str
    model: str | None
    fallback: bool
    model_loaded_at: str | None
    uptime_seconds: float
    pid: int | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Health:
        return _from_json(
            cls,
            body,
            status=body["status"],
            fallback=bool(body.get("fallback", False)),
            uptime_seconds=float(body.get("uptime_seconds", 0.0)),
        )


@dataclass(frozen=True)
class ModelInfo:
    """``GET /model``: the served model and the request limits (every field is in ``raw``)."""

    id: str
    labels: tuple[str, ...]
    max_pairs: int
    max_body_bytes: int | None
    request_timeout: float | None
    source: str | None
    fallback: bool
    device: str | None
    dtype: str | None
    backend: str | None
    max_length: int | None
    batch_size: int | None
    parameters: int | None
    loaded_at: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelInfo:
        return _from_json(
            cls,
            body,
            id=body["id"],
            labels=tuple(body.get("labels", ())),
            max_pairs=int(body.get("max_pairs", DEFAULT_MAX_PAIRS)),
            fallback=bool(body.get("fallback", False)),
        )


# -- rate limiting and retries ----------------------------------------------------------


class TokenBucket:
    """``rate`` calls per second on average, at most ``burst`` at once; thread-safe, no busy wait.

    Each call reserves a token, possibly one that will only exist later, and sleeps until then.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; returns the seconds to wait before using it."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1
            return max(0.0, -self._tokens / self.rate)

    def acquire(self) -> None:
        time.sleep(self.reserve())

    async def acquire_async(self) -> None:
        await asyncio.sleep(self.reserve())


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff: float = 0.5  # seconds before the first retry, doubled each time
    max_backoff: float = 20.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds before retry ``attempt`` (0-based): Retry-After if given, else backoff with jitter.

        Both are capped at ``max_backoff``; the jitter draws from [50 %, 100 %] of the backoff.
        """
        retry_after = _retry_after(response.headers.get("Retry-After")) if response is not None else None
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        return min(self.backoff * 2**attempt, self.max_backoff) * random.uniform(0.5, 1.0)

    def should_retry(self, attempt: int, response: httpx.Response | None) -> bool:
        return attempt < self.retries and (response is None or response.status_code in RETRIED_STATUSES)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, delay-seconds or HTTP-date; None if unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, says RFC 5322
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _headers(api_key: str | None, timeout: float) -> dict[str, str]:
    """``X-Request-Timeout`` tells the server when this client stops waiting: it refuses (429) what
    it could not answer by then instead of computing it for nobody."""
    headers = {"X-Request-Timeout": f"{timeout:g}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


# -- the synchronous client -------------------------------------------------------------


class _ClientSettings:
    """What both clients share: retries, the rate limiter, concurrency, the server's pair limit."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 60.0,
        retries: int = 3,
        api_key: str | None = None,
        rate: float | None = None,
        burst: int = 1,
        max_concurrency: int = 8,
        backoff: float = 0.5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http_options = {"base_url": self.base_url, "timeout": timeout, "headers": _headers(api_key, timeout)}
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.retry = RetryPolicy(retries=retries, backoff=backoff)
        self.bucket = TokenBucket(rate, burst) if rate is not None else None
        self.max_concurrency = max_concurrency
        self._max_pairs: int | None = None


class NLIClient(_ClientSettings):
    """A thread-safe client; use it as a context manager or call :meth:`close`."""

    def __init__(self, base_url: str, **options: Any) -> None:
        """Options: timeout, retries, api_key, rate, burst, max_concurrency, backoff."""
        super().__init__(base_url, **options)
        self._http = httpx.Client(**self.http_options)
        self._pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="nli-client")

    def __enter__(self) -> NLIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._http.close()

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        attempt = 0
        while True:
            if self.bucket is not None:
                self.bucket.acquire()
            try:
                response: httpx.Response | None = self._http.request(method, path, json=body)
            except httpx.TransportError as error:
                response, failure = None, error
            if not self.retry.should_retry(attempt, response):
                if response is None:
                    raise NLIConnectionError(f"cannot reach {self._http.base_url}: {failure}") from failure
                return _answer(response)
            time.sleep(self.retry.delay(attempt, response))
            attempt += 1

    def health(self) -> Health:
        return Health.from_json(self._call("GET", "/health"))

    def model_info(self) -> ModelInfo:
        return ModelInfo.from_json(self._call("GET", "/model"))

    def predict(self, premise: str, hypothesis: str) -> PredictResult:
        return _prediction(self._call("POST", "/predict", {"premise": premise, "hypothesis": hypothesis}))

    def max_pairs(self) -> int:
        if self._max_pairs is None:
            self._max_pairs = self.model_info().max_pairs
        return self._max_pairs

    def batch_predict(self, pairs: Sequence[PairLike], chunk_size: int | None = None) -> list[PredictResult]:
        """Classify any number of pairs, in requests of at most the server's limit, in order."""
        size = chunk_size or self.max_pairs()
        results: list[PredictResult] = []
        for start in range(0, len(pairs), size):
            chunk = [_pair_json(pair) for pair in pairs[start : start + size]]
            body = self._call("POST", "/batch-predict", {"pairs": chunk})
            results += [_prediction(r) for r in body["results"]]
        return results

    def zero_shot(
        self,
        text: str | Sequence[str],
        labels: Sequence[str],
        hypothesis_template: str = DEFAULT_TEMPLATE,
        multi_label: bool = False,
    ) -> ZeroShotResult | list[ZeroShotResult]:
        """Rank ``labels`` for ``text`` (a string: one result; a list of texts: a list)."""
        body = self._call("POST", "/zero-shot", _zero_shot_body(text, labels, hypothesis_template, multi_label))
        return _zero_shot_results(text, body)

    def verify(self, document: str, claims: Sequence[str]) -> list[Verdict]:
        """Check each claim against the whole ``document``: label, scores and evidence span, in order."""
        return _verdicts(self._call("POST", "/verify", {"document": document, "claims": list(claims)}))

    def submit(
        self,
        method: str | Callable[..., Any],
        *args: Any,
        callback: Callable[[Any], None] | None = None,
        **kwargs: Any,
    ) -> Future:
        """Run ``self.<method>(*args, **kwargs)`` (or any callable) in the background, at most
        ``max_concurrency`` at once. ``callback`` gets the result, or the exception, exactly once.
        """
        function = getattr(self, method) if isinstance(method, str) else method
        future = self._pool.submit(function, *args, **kwargs)
        if callback is not None:
            future.add_done_callback(lambda done: callback(_outcome(done)))
        return future


def _outcome(future: Future) -> Any:
    """A finished future's result, or its exception (``CancelledError`` if it was cancelled)."""
    if future.cancelled():
        return CancelledError()
    error = future.exception()
    return future.result() if error is None else error


# -- the asyncio client -----------------------------------------------------------------


class AsyncNLIClient(_ClientSettings):
    """The same calls as :class:`NLIClient`, as coroutines; ``async with`` it or ``await close()``."""

    def __init__(self, base_url: str, **options: Any) -> None:
        """Options: timeout, retries, api_key, rate, burst, max_concurrency, backoff."""
        super().__init__(base_url, **options)
        self._http = httpx.AsyncClient(**self.http_options)
        self._slots = asyncio.Semaphore(self.max_concurrency)

    async def __aenter__(self) -> AsyncNLIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        attempt = 0
        async with self._slots:
            while True:
                if self.bucket is not None:
                    await self.bucket.acquire_async()
                try:
                    response: httpx.Response | None = await self._http.request(method, path, json=body)
                except httpx.TransportError as error:
                    response, failure = None, error
                if not self.retry.should_retry(attempt, response):
                    if response is None:
                        raise NLIConnectionError(f"cannot reach {self._http.base_url}: {failure}") from failure
                    return _answer(response)
                await asyncio.sleep(self.retry.delay(attempt, response))
                attempt += 1

    async def health(self) -> Health:
        return Health.from_json(await self._call("GET", "/health"))

    async def model_info(self) -> ModelInfo:
        return ModelInfo.from_json(await self._call("GET", "/model"))

    async def predict(self, premise: str, hypothesis: str) -> PredictResult:
        return _prediction(await self._call("POST", "/predict", {"premise": premise, "hypothesis": hypothesis}))

    async def batch_predict(self, pairs: Sequence[PairLike], chunk_size: int | None = None) -> list[PredictResult]:
        if chunk_size is None:
            if self._max_pairs is None:
                self._max_pairs = (await self.model_info()).max_pairs
            chunk_size = self._max_pairs
        chunks = [[_pair_json(p) for p in pairs[i : i + chunk_size]] for i in range(0, len(pairs), chunk_size)]
        bodies = await asyncio.gather(*(self._call("POST", "/batch-predict", {"pairs": c}) for c in chunks))
        return [_prediction(r) for body in bodies for r in body["results"]]

    async def zero_shot(
        self,
        text: str | Sequence[str],
        labels: Sequence[str],
        hypothesis_template: str = DEFAULT_TEMPLATE,
        multi_label: bool = False,
    ) -> ZeroShotResult | list[ZeroShotResult]:
        body = await self._call("POST", "/zero-shot", _zero_shot_body(text, labels, hypothesis_template, multi_label))
        return _zero_shot_results(text, body)

    async def verify(self, document: str, claims: Sequence[str]) -> list[Verdict]:
        """Check each claim against the whole ``document``: label, scores and evidence span, in order."""
        return _verdicts(await self._call("POST", "/verify", {"document": document, "claims": list(claims)}))
