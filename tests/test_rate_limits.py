"""Rate limits (issue 15 §2): per key or address, in requests and pairs, shared by workers and replicas
through a real Redis, and what happens while Redis is away."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from model_factory import SAMPLE_PAIRS
from serving import GUNICORN, metric_sum, scrape, service_env

from nli_service.api.rate_limit import STORE_RETRY_SECONDS

PAIR = {"premise": SAMPLE_PAIRS[0][0], "hypothesis": SAMPLE_PAIRS[0][1]}
KEYS = {"alice": "alice-5f0c2d8e9b1a4c7d", "bob": "bob-92d1e0aa3b7c44e1"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text("".join(f"{name}:{key}\n" for name, key in KEYS.items()))
    return path


def _as(name: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[name]}


def test_a_client_over_its_request_limit_gets_429_with_retry_after_and_ratelimit_headers(make_app) -> None:
    client = make_app(NLI_RATE_LIMIT="3/minute").test_client()
    answers = [client.post("/predict", json=PAIR) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429, 429]
    assert [answer.headers["RateLimit-Remaining"] for answer in answers[:3]] == ["2", "1", "0"]
    refused = answers[3]
    assert refused.get_json()["status"] == 429 and "3 requests per 60 s" in refused.get_json()["error"]
    assert 50 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Limit"] == "3" and refused.headers["RateLimit-Policy"] == "3;w=60"
    assert client.get("/health").status_code == 200, "/health is never limited"


def test_the_retry_after_of_a_429_is_when_a_request_passes_again(make_app) -> None:
    client = make_app(NLI_RATE_LIMIT="2 per 2 seconds").test_client()
    assert [client.post("/predict", json=PAIR).status_code for _ in range(3)] == [200, 200, 429]
    refused = client.post("/predict", json=PAIR)
    wait = int(refused.headers["Retry-After"])
    assert 1 <= wait <= 2
    time.sleep(wait)
    assert client.post("/predict", json=PAIR).status_code == 200


def test_pairs_are_counted_so_a_batch_is_not_one_unit(make_app) -> None:
    client = make_app(NLI_PAIR_RATE_LIMIT="10/minute").test_client()
    assert client.post("/batch-predict", json={"pairs": [PAIR] * 8}).status_code == 200
    refused = client.post("/batch-predict", json={"pairs": [PAIR] * 4})
    assert refused.status_code == 429 and "10 pairs per 60 s" in refused.get_json()["error"]
    zero_shot = {"text": "A man plays a guitar.", "labels": ["music", "sport", "food"]}
    assert client.post("/zero-shot", json=zero_shot).status_code == 429, "3 labels are 3 pairs"
    assert client.post("/predict", json=PAIR).status_code == 200, "the one pair left"


def test_two_keys_do_not_share_a_budget(make_app, keys_file: Path) -> None:
    client = make_app(NLI_RATE_LIMIT="2/minute", NLI_API_KEYS_FILE=keys_file).test_client()
    alice = [client.post("/predict", json=PAIR, headers=_as("alice")).status_code for _ in range(3)]
    bob = [client.post("/predict", json=PAIR, headers=_as("bob")).status_code for _ in range(3)]
    assert alice == bob == [200, 200, 429]


def test_an_address_is_read_through_the_proxies_in_front(make_app) -> None:
    client = make_app(NLI_RATE_LIMIT="1/minute", NLI_PROXIES=1).test_client()
    forwarded = [
        client.post("/predict", json=PAIR, headers={"X-Forwarded-For": address}).status_code
        for address in ("10.0.0.1", "10.0.0.2", "10.0.0.1")
    ]
    assert forwarded == [200, 200, 429]


def _burst(url: str, count: int, headers: dict[str, str]) -> list[int]:
    def one(_: int) -> int:
        return requests.post(f"{url}/predict", json=PAIR, headers=headers, timeout=20).status_code

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(count)))


def _limited_service(services, model_dir: Path, logs: Path, keys_file: Path, redis_url: str, **settings):
    env = service_env(
        NLI_MODEL=model_dir, NLI_WORKERS=4, NLI_API_KEYS_FILE=keys_file, NLI_REDIS_URL=redis_url,
        NLI_LOG_DIR=logs, **settings,
    )  # fmt: skip
    service = services.start(GUNICORN, env)
    service.wait_ready()
    return service


def _workers_that_answered(logs: Path) -> set[int]:
    records = [json.loads(line) for line in (logs / "nli_service.log").read_text().splitlines()]
    return {record["worker_pid"] for record in records if record.get("path") == "/predict"}


def test_exactly_n_of_a_burst_of_3n_pass_across_workers_and_instances_sharing_redis(
    services, model_dir: Path, tmp_path: Path, keys_file: Path, redis_server
) -> None:
    limit = 10
    one, two = (
        _limited_service(
            services, model_dir, tmp_path / name, keys_file, redis_server.url, NLI_RATE_LIMIT=f"{limit}/minute"
        )
        for name in ("one", "two")
    )
    alice = _burst(one.url, 3 * limit, _as("alice"))
    assert alice.count(200) == limit and alice.count(429) == 2 * limit
    assert len(_workers_that_answered(tmp_path / "one")) >= 2, "the burst was spread over the workers"
    # bob's budget is his own, and one budget across both instances
    bob = _burst(one.url, 3 * limit // 2, _as("bob")) + _burst(two.url, 3 * limit // 2, _as("bob"))
    assert bob.count(200) == limit and bob.count(429) == 2 * limit
    assert _burst(two.url, 3, _as("alice")) == [429] * 3, "alice's budget is spent on the other instance too"
    assert metric_sum(scrape(one.metrics_url), "nli_rate_limited_total", limit="requests") >= 2 * limit


@pytest.mark.parametrize("fail_closed", [False, True])
def test_while_redis_is_away_the_service_serves_or_refuses_as_told_and_recovers(
    services, model_dir: Path, tmp_path: Path, keys_file: Path, redis_server, fail_closed: bool
) -> None:
    service = _limited_service(
        services, model_dir, tmp_path / "logs", keys_file, redis_server.url,
        NLI_RATE_LIMIT="5/minute", NLI_RATE_LIMIT_FAIL_CLOSED=str(fail_closed).lower(),
    )  # fmt: skip
    assert _burst(service.url, 8, _as("alice")).count(429) == 3
    redis_server.stop()
    started = time.monotonic()
    away = _burst(service.url, 24, _as("alice"))
    assert time.monotonic() - started < 10, "a check waits at most the store timeout"
    if fail_closed:
        assert away == [503] * 24
    else:
        assert away == [200] * 24, "fail-open: served without limits, no 5xx"
    outcome = "refused" if fail_closed else "served"
    assert metric_sum(scrape(service.metrics_url), "nli_rate_limit_store_errors_total", outcome=outcome) == 24
    assert "rate-limit store unreachable" in (tmp_path / "logs" / "nli_service.log").read_text()
    redis_server.start()  # empty: the counts went with the process
    time.sleep(STORE_RETRY_SECONDS + 0.2)  # each worker leaves the store alone this long after a failure
    back = _burst(service.url, 8, _as("bob"))
    assert back.count(200) == 5 and back.count(429) == 3, "limits apply again within seconds of Redis returning"
