"""The Python clients against the real service (and a stub for 429/503 sequences)."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from pathlib import Path

import pytest
from model_factory import SAMPLE_PAIRS

from nli_service.client import AsyncNLIClient, NLIClient, NLIConnectionError, NLIHTTPError, TokenBucket

PAIRS = [(p, h) for p, h in SAMPLE_PAIRS] * 3  # 12 pairs; the server takes 4 per request


def access_records(server, path: str) -> list[dict]:
    log = Path(server.env["NLI_LOG_DIR"]) / "nli_service.log"
    return [r for r in map(json.loads, log.read_text().splitlines()) if r.get("path") == path]


def test_batch_predict_splits_by_the_server_limit_and_keeps_order(tiny_server) -> None:
    with NLIClient(tiny_server.url) as client:
        assert client.model_info()["max_pairs"] == 4 and client.health()["status"] == "ok"
        batched = client.batch_predict(PAIRS)
        singles = [client.predict(p, h) for p, h in PAIRS]
    assert [r.label for r in batched] == [r.label for r in singles]
    assert all(abs(a.scores[k] - b.scores[k]) < 1e-5 for a, b in zip(batched, singles, strict=True) for k in a.scores)


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
    time.sleep(0.2)
    assert len([r for r in access_records(tiny_server, "/predict") if r["status"] == 400]) == before + 1


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


# -- retries, against a stub ------------------------------------------------------------------


class _Stub(http.server.BaseHTTPRequestHandler):
    script: list[tuple[int, dict[str, str]]] = []
    seen: list[float] = []

    def do_GET(self) -> None:  # noqa: N802
        _Stub.seen.append(time.monotonic())
        status, headers = _Stub.script.pop(0) if _Stub.script else (200, {})
        body = json.dumps({"status": "ok"} if status == 200 else {"error": "busy", "status": status}).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Stub.seen = []
    yield server
    server.shutdown()


def test_503_and_429_are_retried_honouring_retry_after(stub) -> None:
    _Stub.script = [(503, {"Retry-After": "0.3"}), (429, {"Retry-After": "0.2"})]
    with NLIClient(f"http://127.0.0.1:{stub.server_port}", retries=3, backoff=5) as client:
        assert client.health()["status"] == "ok"
    gaps = [b - a for a, b in zip(_Stub.seen, _Stub.seen[1:], strict=False)]
    assert len(_Stub.seen) == 3 and gaps[0] >= 0.28 and gaps[1] >= 0.18 and max(gaps) < 2


def test_retries_give_up_with_the_last_status(stub) -> None:
    _Stub.script = [(503, {"Retry-After": "0"})] * 3
    with NLIClient(f"http://127.0.0.1:{stub.server_port}", retries=2) as client, pytest.raises(NLIHTTPError) as raised:
        client.health()
    assert raised.value.status == 503 and len(_Stub.seen) == 3


def test_an_unreachable_service_is_a_connection_error_after_backoff() -> None:
    started = time.monotonic()
    with NLIClient("http://127.0.0.1:9", retries=2, backoff=0.1) as client, pytest.raises(NLIConnectionError):
        client.health()
    assert 0.1 <= time.monotonic() - started < 2
