"""The Python clients against the real service (and a stub for retries, concurrency, odd answers)."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import threading
import time
from concurrent.futures import CancelledError
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from model_factory import SAMPLE_PAIRS
from serving import wait_for

from nli_service.client import (
    AsyncNLIClient,
    Health,
    ModelInfo,
    NLIClient,
    NLIConnectionError,
    NLIError,
    NLIHTTPError,
    NLIResponseError,
    RetryPolicy,
    TokenBucket,
)

PAIRS = [(p, h) for p, h in SAMPLE_PAIRS] * 3  # 12 pairs; the server takes 4 per request


def access_records(server, path: str) -> list[dict]:
    log = Path(server.env["NLI_LOG_DIR"]) / "nli_service.log"
    return [r for r in map(json.loads, log.read_text().splitlines()) if r.get("path") == path]


def test_batch_predict_splits_by_the_server_limit_and_keeps_order(tiny_server) -> None:
    with NLIClient(tiny_server.url) as client:
        assert client.model_info().max_pairs == 4 and client.health().status == "ok"
        batched = client.batch_predict(PAIRS)
        singles = [client.predict(p, h) for p, h in PAIRS]
    assert [r.label for r in batched] == [r.label for r in singles]
    assert all(abs(a.scores[k] - b.scores[k]) < 1e-5 for a, b in zip(batched, singles, strict=True) for k in a.scores)


def test_health_and_model_info_are_typed_and_frozen(tiny_server) -> None:
    with NLIClient(tiny_server.url) as client:
        health, info = client.health(), client.model_info()
    assert isinstance(health, Health) and isinstance(info, ModelInfo)
    assert health.status == "ok" and health.model == info.id and health.fallback is False
    assert isinstance(health.pid, int) and health.uptime_seconds > 0 and health.model_loaded_at
    assert sorted(info.labels) == ["contradiction", "entailment", "neutral"] and isinstance(info.labels, tuple)
    assert info.max_pairs == 4 and info.max_body_bytes == 1048576 and info.request_timeout == 20
    assert info.source == "local" and info.device == "cpu" and info.parameters > 0
    assert info.raw["max_pairs"] == 4 and info.raw["model_type"] == "bert" and health.raw["pid"] == health.pid
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.max_pairs = 8  # type: ignore[misc]


def test_zero_shot_one_text_and_many(tiny_server) -> None:
    with NLIClient(tiny_server.url) as client:
        one = client.zero_shot("A man plays a guitar.", ["music", "sport"])
        many = client.zero_shot(["A man plays a guitar.", "A dog runs."], ["music", "sport"], multi_label=True)
    assert sorted(one.labels) == ["music", "sport"] and one.scores == sorted(one.scores, reverse=True)
    assert len(many) == 2 and all(len(r.scores) == 2 for r in many)


def test_validation_errors_are_raised_with_the_servers_message_and_never_retried(tiny_server) -> None:
    before = len([r for r in access_records(tiny_server, "/predict") if r["status"] == 400])
    with NLIClient(tiny_server.url, retries=3) as client, pytest.raises(NLIHTTPError) as raised:
        client.predict("", "a dog")
    assert raised.value.status == 400 and "premise must not be empty" in raised.value.message
    assert raised.value.request_id

    def refused() -> int:
        return len([r for r in access_records(tiny_server, "/predict") if r["status"] == 400])

    wait_for(lambda: refused() > before, timeout=10, what="the 400's access record")  # written after the answer
    assert refused() == before + 1


def test_submit_delivers_results_and_errors_to_the_callback_exactly_once(tiny_server) -> None:
    delivered: list[object] = []
    with NLIClient(tiny_server.url, max_concurrency=4) as client:
        ok = client.submit("predict", *SAMPLE_PAIRS[0], callback=delivered.append)
        bad = client.submit("predict", "", "x", callback=delivered.append)
        assert ok.result().label
        with pytest.raises(NLIHTTPError):
            bad.result()
    assert len(delivered) == 2
    assert sum(isinstance(item, NLIHTTPError) for item in delivered) == 1


def test_a_cancelled_submit_calls_back_once_with_cancelled_error() -> None:
    delivered: list[object] = []
    release = threading.Event()
    with NLIClient("http://127.0.0.1:9", max_concurrency=1) as client:
        busy = client.submit(release.wait, 10)  # holds the only slot
        queued = client.submit("health", callback=delivered.append)
        assert queued.cancel()
        release.set()
        assert busy.result() is True
    assert len(delivered) == 1 and isinstance(delivered[0], CancelledError)


def test_the_rate_limit_holds_across_threads(tiny_server) -> None:
    with NLIClient(tiny_server.url, rate=10, burst=1, max_concurrency=8) as client:
        started = time.monotonic()
        futures = [client.submit("health") for _ in range(20)]
        for future in futures:
            future.result()
        elapsed = time.monotonic() - started
    assert 1.7 <= elapsed <= 3.0, f"20 calls at 10/s with burst 1 took {elapsed:.2f} s (expected ~1.9 s)"


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=50, burst=5)
    waits = [bucket.reserve() for _ in range(10)]
    assert waits[:5] == [0.0] * 5
    assert waits[9] == pytest.approx(5 / 50, abs=0.01)


def test_async_client(tiny_server) -> None:
    async def scenario():
        async with AsyncNLIClient(tiny_server.url, max_concurrency=4) as client:
            results = await client.batch_predict(PAIRS)
            single = await client.predict(*PAIRS[5])
            zero = await client.zero_shot("A dog runs.", ["animal", "music"])
            with pytest.raises(NLIHTTPError):
                await client.predict("x", " ")
            return results, single, zero

    results, single, zero = asyncio.run(scenario())
    assert len(results) == 12 and results[5].label == single.label and len(zero.labels) == 2


def test_async_health_and_model_info_are_typed(tiny_server) -> None:
    async def scenario():
        async with AsyncNLIClient(tiny_server.url) as client:
            return await client.health(), await client.model_info()

    health, info = asyncio.run(scenario())
    assert health.status == "ok" and info.max_pairs == 4 and info.id == health.model


# -- backoff ----------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = RetryPolicy(retries=10, backoff=0.5, max_backoff=20)
    monkeypatch.setattr("nli_service.client.random.uniform", lambda low, high: high)
    assert [policy.delay(n, None) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 20, 20]
    monkeypatch.setattr("nli_service.client.random.uniform", lambda low, high: low)
    assert [policy.delay(n, None) for n in range(8)] == [0.25, 0.5, 1, 2, 4, 8, 10, 10]


@pytest.mark.parametrize(("attempt", "base"), [(0, 0.5), (2, 2.0), (9, 20.0)])
def test_backoff_jitter_is_half_to_all_of_the_capped_backoff(attempt: int, base: float) -> None:
    policy = RetryPolicy(backoff=0.5, max_backoff=20)
    busy = httpx.Response(503)  # no Retry-After: backoff
    delays = [policy.delay(attempt, busy) for _ in range(500)]
    assert all(base / 2 <= d <= base for d in delays)
    assert max(delays) - min(delays) > base / 4  # spread out, not one value


def test_retry_after_wins_over_backoff_and_is_capped() -> None:
    policy = RetryPolicy(backoff=10, max_backoff=20)
    assert policy.delay(3, httpx.Response(429, headers={"Retry-After": "0.3"})) == 0.3
    assert policy.delay(0, httpx.Response(503, headers={"Retry-After": "0"})) == 0
    assert policy.delay(0, httpx.Response(503, headers={"Retry-After": "3600"})) == 20
    assert 5 <= policy.delay(0, httpx.Response(503, headers={"Retry-After": "soon"})) <= 10  # unreadable: backoff


def test_retry_after_as_an_http_date() -> None:
    policy = RetryPolicy(backoff=10, max_backoff=20)
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    assert 3.9 <= policy.delay(0, httpx.Response(503, headers={"Retry-After": later})) <= 5
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert policy.delay(0, httpx.Response(503, headers={"Retry-After": past})) == 0
    far = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    assert policy.delay(0, httpx.Response(503, headers={"Retry-After": far})) == 20


# -- retries, against a stub ------------------------------------------------------------------


HEALTHY = {"status": "ok", "model": "stub", "uptime_seconds": 1.0, "pid": 1}


class _Stub(http.server.BaseHTTPRequestHandler):
    """Answers GET with the next scripted (status, headers, body) or 200 ``HEALTHY``; records
    when each request came, its Authorization header, and the most requests it held at once."""

    script: list[tuple[int, dict[str, str], bytes | None]] = []  # body None: a JSON error, or HEALTHY
    seen: list[float] = []
    headers: list[dict[str, str]] = []  # of each request
    delay = 0.0
    active = peak = 0
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802
        with _Stub.lock:
            _Stub.seen.append(time.monotonic())
            _Stub.headers.append(dict(self.headers))
            _Stub.active += 1
            _Stub.peak = max(_Stub.peak, _Stub.active)
        try:
            time.sleep(_Stub.delay)
            status, headers, body = _Stub.script.pop(0) if _Stub.script else (200, {}, None)
            if body is None:
                body = json.dumps(HEALTHY if status == 200 else {"error": "busy", "status": status}).encode()
                headers = {"Content-Type": "application/json", **headers}
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with _Stub.lock:
                _Stub.active -= 1

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> str:
    """The stub's URL, with a fresh script and records."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Stub.script, _Stub.seen, _Stub.headers, _Stub.delay, _Stub.peak = [], [], [], 0.0, 0
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _gaps() -> list[float]:
    return [b - a for a, b in zip(_Stub.seen, _Stub.seen[1:], strict=False)]


def test_503_and_429_are_retried_honouring_retry_after(stub) -> None:
    _Stub.script = [(503, {"Retry-After": "0.3"}, None), (429, {"Retry-After": "0.2"}, None)]
    with NLIClient(stub, retries=3, backoff=5) as client:
        assert client.health().status == "ok"
    gaps = _gaps()
    assert len(_Stub.seen) == 3 and gaps[0] >= 0.28 and gaps[1] >= 0.18 and max(gaps) < 2


def test_the_async_client_retries_503_and_429_honouring_retry_after(stub) -> None:
    _Stub.script = [(503, {"Retry-After": "0.3"}, None), (429, {"Retry-After": "0.2"}, None)]

    async def scenario() -> Health:
        async with AsyncNLIClient(stub, retries=3, backoff=5) as client:
            return await client.health()

    assert asyncio.run(scenario()).status == "ok"
    gaps = _gaps()
    assert len(_Stub.seen) == 3 and gaps[0] >= 0.28 and gaps[1] >= 0.18 and max(gaps) < 2


def test_the_async_client_gives_up_with_the_last_status(stub) -> None:
    _Stub.script = [(503, {"Retry-After": "0"}, None)] * 2

    async def scenario() -> None:
        async with AsyncNLIClient(stub, retries=1) as client:
            await client.health()

    with pytest.raises(NLIHTTPError) as raised:
        asyncio.run(scenario())
    assert raised.value.status == 503 and raised.value.message == "busy" and len(_Stub.seen) == 2


def test_retries_give_up_with_the_last_status(stub) -> None:
    _Stub.script = [(503, {"Retry-After": "0"}, None)] * 3
    with NLIClient(stub, retries=2) as client, pytest.raises(NLIHTTPError) as raised:
        client.health()
    assert raised.value.status == 503 and len(_Stub.seen) == 3


def test_an_unreachable_service_is_a_connection_error_after_backoff() -> None:
    started = time.monotonic()
    with NLIClient("http://127.0.0.1:9", retries=2, backoff=0.1) as client, pytest.raises(NLIConnectionError):
        client.health()
    assert 0.1 <= time.monotonic() - started < 2


# -- bounded concurrency, odd answers, headers ------------------------------------------------------


def test_submit_runs_at_most_max_concurrency_calls_at_once(stub) -> None:
    _Stub.delay = 0.2
    with NLIClient(stub, max_concurrency=3) as client:
        started = time.monotonic()
        futures = [client.submit("health") for _ in range(10)]
        assert all(future.result().status == "ok" for future in futures)
        elapsed = time.monotonic() - started
    assert len(_Stub.seen) == 10 and 1 < _Stub.peak <= 3
    assert elapsed >= 0.75  # 4 rounds of 0.2 s: at most 3 at once


def test_the_async_client_holds_at_most_max_concurrency_requests(stub) -> None:
    _Stub.delay = 0.2

    async def scenario() -> list[Health]:
        async with AsyncNLIClient(stub, max_concurrency=3) as client:
            return await asyncio.gather(*(client.health() for _ in range(10)))

    assert [h.status for h in asyncio.run(scenario())] == ["ok"] * 10
    assert len(_Stub.seen) == 10 and 1 < _Stub.peak <= 3


@pytest.mark.parametrize(
    ("status", "content_type", "body", "message"),
    [
        (502, "text/html", b"<html><body>Bad gateway</body></html>", "<html><body>Bad gateway</body></html>"),
        (502, "text/plain", b"", "Bad Gateway"),
        (500, "application/json", b"[1, 2]", "[1, 2]"),
        (400, "application/json", b'{"error": {"code": 7}}', '{"error": {"code": 7}}'),
        (404, "application/json", b"not json", "not json"),
    ],
)
def test_error_answers_that_are_not_a_json_object_are_http_errors(stub, status, content_type, body, message) -> None:
    _Stub.script = [(status, {"Content-Type": content_type, "X-Request-ID": "rid-1"}, body)]
    with NLIClient(stub, retries=0) as client, pytest.raises(NLIHTTPError) as raised:
        client.health()
    assert raised.value.status == status and raised.value.message == message and raised.value.request_id == "rid-1"


def test_a_success_that_is_not_json_is_a_response_error(stub) -> None:
    _Stub.script = [(200, {"Content-Type": "text/html"}, b"<html>a captive portal</html>")] * 2
    with NLIClient(stub) as client, pytest.raises(NLIResponseError, match="captive portal"):
        client.health()

    async def scenario() -> None:
        async with AsyncNLIClient(stub) as client:
            await client.health()

    with pytest.raises(NLIResponseError) as raised:
        asyncio.run(scenario())
    assert isinstance(raised.value, NLIError) and len(_Stub.seen) == 2  # not retried


def test_the_api_key_is_sent_as_a_bearer_token(stub) -> None:
    with NLIClient(stub, api_key="s3cret") as client:
        client.health()
    with NLIClient(stub) as client:
        client.health()

    async def scenario() -> None:
        async with AsyncNLIClient(stub, api_key="other") as client:
            await client.health()

    asyncio.run(scenario())
    assert [headers.get("Authorization") for headers in _Stub.headers] == ["Bearer s3cret", None, "Bearer other"]


def test_the_client_tells_the_server_how_long_it_waits(stub) -> None:
    with NLIClient(stub, timeout=7.5) as client:
        client.health()

    async def scenario() -> None:
        async with AsyncNLIClient(stub, timeout=3) as client:
            await client.health()

    asyncio.run(scenario())
    assert [headers.get("X-Request-Timeout") for headers in _Stub.headers] == ["7.5", "3"]


@pytest.mark.parametrize("options", [{"max_concurrency": 0}, {"rate": 0}, {"rate": 5, "burst": 0}])
def test_invalid_client_options_are_refused(options: dict) -> None:
    with pytest.raises(ValueError):
        NLIClient("http://127.0.0.1:9", **options)
    with pytest.raises(ValueError):
        AsyncNLIClient("http://127.0.0.1:9", **options)
