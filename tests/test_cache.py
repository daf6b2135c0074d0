"""The result cache: pairs answered before are not computed again, and come back byte for byte.

Work is counted where it happens, in the engine's forward passes; Redis is a real
redis-server (the ``redis_server`` fixture), stopped, paused and restarted for real.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from conftest import engine_of
from model_factory import WORDS
from prometheus_client import REGISTRY
from serving import GUNICORN, metric_sum, scrape, service_env, wait_for

from nli_service.inference.engine import NLIEngine
from nli_service.inference.types import Pair
from nli_service.serving.cache import KEY_PREFIX, REDIS_PAUSE, REDIS_TIMEOUT, ResultKeys


def _pairs(count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {"premise": " ".join(rng.choices(WORDS, k=rng.randint(3, 20))), "hypothesis": " ".join(rng.choices(WORDS, k=4))}
        for _ in range(count)
    ]


def _computed(app, monkeypatch) -> list[int]:
    """Pairs per forward pass of ``app``'s engine, from now on."""
    engine = engine_of(app)
    forwarded: list[int] = []
    original = engine.forward

    def forward(encoded, chunk):
        forwarded.append(len(chunk))
        return original(encoded, chunk)

    monkeypatch.setattr(engine, "forward", forward)
    return forwarded


def _count(name: str, store: str) -> float:
    return REGISTRY.get_sample_value(f"nli_cache_{name}_total", {"store": store}) or 0.0


def _counts(store: str) -> dict[str, float]:
    return {name: _count(name, store) for name in ("hits", "misses", "evictions", "errors")}


def _delta(before: dict[str, float], store: str) -> dict[str, float]:
    return {name: value - before[name] for name, value in _counts(store).items()}


def _batch(client, pairs: list[dict[str, str]]):
    response = client.post("/batch-predict", json={"pairs": pairs})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


# -- the in-process LRU (the default) ----------------------------------------------------


def test_a_repeated_pair_is_answered_from_the_cache_and_counted(make_app, monkeypatch) -> None:
    app = make_app()
    computed = _computed(app, monkeypatch)
    client = app.test_client()
    pair = _pairs(1, seed=1)[0]
    before = _counts("memory")
    first = client.post("/predict", json=pair)
    again = client.post("/predict", json=pair)
    assert first.status_code == again.status_code == 200
    assert sum(computed) == 1, "the repeat was computed again"
    assert again.data == first.data
    assert _delta(before, "memory") == {"hits": 1, "misses": 1, "evictions": 0, "errors": 0}
    assert client.get("/model").get_json()["cache"] == {"store": "memory", "size": 10000, "ttl_seconds": None}


def test_a_batch_half_seen_computes_only_the_other_half_and_keeps_input_order(make_app, monkeypatch) -> None:
    app = make_app(NLI_BATCH_SIZE=64)
    computed = _computed(app, monkeypatch)
    client = app.test_client()
    seen, new = _pairs(8, seed=2), _pairs(8, seed=3)
    first = _batch(client, seen).get_json()["results"]
    assert sum(computed) == 8
    computed.clear()
    mixed = [pair for both in zip(new, seen, strict=True) for pair in both] + new[:3]  # new ones repeated too
    before = _counts("memory")
    results = _batch(client, mixed).get_json()["results"]
    assert sum(computed) == 8, "only the 8 new pairs, each once"
    assert _delta(before, "memory") == {"hits": 8, "misses": 8, "evictions": 0, "errors": 0}
    assert results[1::2][:8] == first, "the seen pairs' answers, each at its own place"
    assert results[16:] == results[0:6:2], "a pair repeated in one request gets one answer"
    # the new pairs' answers are theirs, not a neighbour's
    expected = make_app(NLI_CACHE_SIZE=0, NLI_BATCH_SIZE=1).test_client()
    alone = [_batch(expected, [pair]).get_json()["results"][0] for pair in new]
    for got, want in zip(results[0:16:2], alone, strict=True):
        assert got["label"] == want["label"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)


def test_zero_shot_computes_only_the_label_pairs_not_seen(make_app, monkeypatch) -> None:
    app = make_app()
    computed = _computed(app, monkeypatch)
    client = app.test_client()
    labels = ["music", "sport", "food"]
    texts = [pair["premise"] for pair in _pairs(2, seed=4)]
    one = client.post("/zero-shot", json={"text": texts[0], "labels": labels})
    assert one.status_code == 200 and sum(computed) == 3
    both = client.post("/zero-shot", json={"texts": texts, "labels": labels})
    assert both.status_code == 200 and sum(computed) == 6, "the first text's three pairs came from the cache"
    assert both.get_json()["results"][0] == {k: v for k, v in one.get_json().items() if k != "model"}
    # /predict shares the entries: a zero-shot pair asked directly is a hit
    hypothesis = "This example is sport."
    assert client.post("/predict", json={"premise": texts[1], "hypothesis": hypothesis}).status_code == 200
    assert sum(computed) == 6


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/batch-predict", {"pairs": _pairs(12, seed=5)}),
        ("/zero-shot", {"texts": ["a dog plays with a red ball", "the woman is eating"], "labels": ["pets", "food"]}),
        ("/zero-shot", {"text": "a man is driving a car", "labels": ["travel", "music"], "multi_label": True}),
    ],
)
def test_a_cached_response_is_byte_identical_to_the_computed_one(make_app, monkeypatch, path: str, body: dict) -> None:
    app = make_app()
    computed = _computed(app, monkeypatch)
    client = app.test_client()
    first = client.post(path, json=body)
    work = sum(computed)
    again = client.post(path, json=body)
    assert first.status_code == again.status_code == 200
    assert work > 0 and sum(computed) == work, "the second answer came from the cache"
    assert again.data == first.data


def test_the_lru_evicts_the_least_recently_used_and_counts_it(make_app, monkeypatch) -> None:
    app = make_app(NLI_CACHE_SIZE=2)
    computed = _computed(app, monkeypatch)
    client = app.test_client()
    a, b, c = _pairs(3, seed=6)
    before = _counts("memory")
    for pair in (a, b, a, c):  # a used again after b: c evicts b
        assert client.post("/predict", json=pair).status_code == 200
    assert sum(computed) == 3 and _delta(before, "memory")["evictions"] == 1
    assert client.post("/predict", json=a).status_code == 200 and sum(computed) == 3
    assert client.post("/predict", json=b).status_code == 200 and sum(computed) == 4


def test_cache_size_0_turns_the_cache_off(make_app, monkeypatch) -> None:
    app = make_app(NLI_CACHE_SIZE=0)
    computed = _computed(app, monkeypatch)
    client = app.test_client()
    pair = _pairs(1, seed=7)[0]
    before = _counts("memory")
    for _ in range(2):
        assert client.post("/predict", json=pair).status_code == 200
    assert sum(computed) == 2
    assert _delta(before, "memory") == {"hits": 0, "misses": 0, "evictions": 0, "errors": 0}
    assert client.get("/model").get_json()["cache"] == {"store": None, "size": 0, "ttl_seconds": None}


def test_keys_differ_by_model_version_dtype_max_length_and_field_boundary(model_dir: Path, tmp_path: Path) -> None:
    engine = NLIEngine.from_pretrained(str(model_dir))
    keys = ResultKeys(engine)
    pair = Pair("a man plays", "music")
    assert keys(pair) == ResultKeys(NLIEngine.from_pretrained(str(model_dir)))(pair)
    assert keys(Pair("ab", "c")) != keys(Pair("a", "bc"))
    assert keys(pair) != ResultKeys(NLIEngine.from_pretrained(str(model_dir), max_length=64))(pair)
    assert keys(pair) != ResultKeys(NLIEngine.from_pretrained(str(model_dir), dtype="bfloat16"))(pair)
    # the same id, other files: another version, another key
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)

    def key_at(folder: Path) -> str:
        served = NLIEngine.from_pretrained(str(folder))
        served.source = replace(served.source, name=engine.model_id)
        return ResultKeys(served)(pair)

    assert key_at(copy) == keys(pair)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "classifier_dropout": 0.5}))
    assert key_at(copy) != keys(pair)


# -- Redis ------------------------------------------------------------------------------


def test_two_apps_on_one_redis_share_results_with_a_ttl(make_app, monkeypatch, redis_server) -> None:
    pairs = _pairs(6, seed=8)
    one = make_app(NLI_REDIS_URL=redis_server.url, NLI_CACHE_TTL=60)
    computed = _computed(one, monkeypatch)
    before = _counts("redis")
    first = _batch(one.test_client(), pairs)
    assert sum(computed) == 6
    # another service (other settings, so its own cache object): the same Redis answers it
    other = make_app(NLI_REDIS_URL=redis_server.url, NLI_CACHE_TTL=60, NLI_REQUEST_TIMEOUT=19)
    assert _batch(other.test_client(), pairs).data == first.data
    assert sum(computed) == 6, "the second app computed nothing"
    assert _delta(before, "redis") == {"hits": 6, "misses": 6, "evictions": 0, "errors": 0}
    client = redis_server.client()
    keys = client.keys(f"{KEY_PREFIX}*")
    assert len(keys) == 6 and all(0 < client.ttl(key) <= 60 for key in keys)
    assert other.test_client().get("/model").get_json()["cache"] == {
        "store": "redis",
        "size": None,
        "ttl_seconds": 60.0,
    }
    client.flushdb()  # the results were in Redis, nowhere else
    _batch(other.test_client(), pairs)
    assert sum(computed) == 12


def test_another_max_length_or_model_does_not_share_results(
    make_app, monkeypatch, redis_server, reordered_model_dir: Path
) -> None:
    pair = _pairs(1, seed=9)[0]
    for number, settings in enumerate(({}, {"NLI_MAX_LENGTH": 64}, {"NLI_MODEL": str(reordered_model_dir)})):
        app = make_app(NLI_REDIS_URL=redis_server.url, **settings)
        computed = _computed(app, monkeypatch)
        assert app.test_client().post("/predict", json=pair).status_code == 200
        assert sum(computed) == 1, f"settings {settings} found a result computed with other settings"
        assert len(redis_server.client().keys(f"{KEY_PREFIX}*")) == number + 1


def test_while_redis_is_away_requests_are_computed_and_the_cache_returns_with_it(
    make_app, monkeypatch, redis_server
) -> None:
    app = make_app(NLI_REDIS_URL=redis_server.url)
    computed = _computed(app, monkeypatch)
    client = app.test_client()
    pair = _pairs(1, seed=10)[0]
    assert client.post("/predict", json=pair).status_code == 200 and sum(computed) == 1
    redis_server.stop()
    before = _counts("redis")
    for _ in range(3):
        assert client.post("/predict", json=pair).status_code == 200
    assert sum(computed) == 4, "served, computed"
    assert _delta(before, "redis")["errors"] >= 1
    redis_server.start()  # empty: nothing survived
    started = time.monotonic()

    def answered_from_redis() -> bool:
        work = sum(computed)
        assert client.post("/predict", json=pair).status_code == 200
        return sum(computed) == work

    wait_for(answered_from_redis, timeout=REDIS_PAUSE + 4, what="a cache hit after Redis returned")
    assert time.monotonic() - started < REDIS_PAUSE + 4


def test_a_hung_redis_costs_one_timeout_per_pause_not_one_per_request(make_app, redis_server) -> None:
    app = make_app(NLI_REDIS_URL=redis_server.url)
    client = app.test_client()
    pairs = _pairs(8, seed=11)
    assert client.post("/predict", json=pairs[0]).status_code == 200  # connected
    before = _counts("redis")
    redis_server.process.send_signal(signal.SIGSTOP)  # accepts connections, never answers
    try:
        started = time.monotonic()
        for pair in pairs[1:]:
            assert client.post("/predict", json=pair).status_code == 200
        seconds = time.monotonic() - started
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert _delta(before, "redis")["errors"] == 1
    assert REDIS_TIMEOUT <= seconds < REDIS_TIMEOUT + 1.0, f"7 requests took {seconds:.2f} s"


def test_gunicorn_workers_share_results_through_redis(services, model_dir: Path, tmp_path: Path, redis_server) -> None:
    logs = tmp_path / "logs"
    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=2, NLI_REDIS_URL=redis_server.url, NLI_LOG_DIR=logs)
    body = {"pairs": _pairs(4, seed=12)}
    with services.running(GUNICORN, env) as service:
        answers: set[bytes] = set()

        def both_workers_answered() -> bool:
            response = requests.post(f"{service.url}/batch-predict", json=body, timeout=10)  # a new connection
            assert response.status_code == 200
            answers.add(response.content)
            lines = [json.loads(line) for line in (logs / "nli_service.log").read_text().splitlines()]
            return len({line["worker_pid"] for line in lines if line.get("path") == "/batch-predict"}) == 2

        wait_for(both_workers_answered, timeout=30, what="requests on both workers")
        samples = scrape(service.metrics_url)
        model = requests.get(f"{service.url}/model", timeout=10).json()
    assert metric_sum(samples, "nli_batch_pairs_sum") == 4, "each pair computed once, by one worker"
    assert metric_sum(samples, "nli_cache_misses_total", store="redis") == 4
    assert metric_sum(samples, "nli_cache_hits_total", store="redis") >= 4
    assert len(answers) == 1 and model["cache"]["store"] == "redis"
