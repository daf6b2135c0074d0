"""Overload (issue 14 §3): the deadline counts from the request's arrival, and work nobody waits for
is never computed."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import engine_of
from model_factory import SAMPLE_PAIRS
from serving import GUNICORN, metric_sum, scrape, service_env, wait_for
from test_gunicorn import long_pairs

from nli_service.api.arrival import epoch_seconds
from nli_service.inference.engine import NLIEngine
from nli_service.inference.types import Pair
from nli_service.serving.batcher import MicroBatcher
from nli_service.serving.deadline import Deadline
from nli_service.serving.errors import ClientGone

PAIR = {"premise": SAMPLE_PAIRS[0][0], "hypothesis": SAMPLE_PAIRS[0][1]}


def _counting_forwards(engine, monkeypatch, seconds: float = 0.0) -> list[int]:
    forwarded: list[int] = []
    original = engine.forward

    def forward(encoded, chunk):
        forwarded.append(len(chunk))
        time.sleep(seconds)
        return original(encoded, chunk)

    monkeypatch.setattr(engine, "forward", forward)
    return forwarded


@pytest.mark.parametrize("unit", [1, 1e3, 1e6])
def test_a_request_that_arrived_before_its_deadline_passed_is_408_uncomputed(make_app, monkeypatch, unit) -> None:
    app = make_app(NLI_REQUEST_TIMEOUT=1)
    forwarded = _counting_forwards(engine_of(app), monkeypatch)
    arrived = f"t={(time.time() - 2) * unit:.3f}"
    response = app.test_client().post("/predict", json=PAIR, headers={"X-Request-Start": arrived})
    assert response.status_code == 408 and forwarded == []


def test_the_deadline_counts_from_x_request_start(make_app, monkeypatch) -> None:
    app = make_app(NLI_REQUEST_TIMEOUT=1.5, NLI_BATCH_SIZE=1)
    forwarded = _counting_forwards(engine_of(app), monkeypatch, seconds=0.5)
    client = app.test_client()
    pairs = {"pairs": [PAIR, PAIR]}  # two passes of 0.5 s: 1 s of work
    late = client.post("/batch-predict", json=pairs, headers={"X-Request-Start": f"t={time.time() - 1.2:.3f}"})
    assert late.status_code == 408 and len(forwarded) == 1, "stopped in its first pass, 0.3 s after arriving here"
    assert client.post("/batch-predict", json=pairs).status_code == 200


def test_the_clients_x_request_timeout_shortens_the_deadline_never_lengthens_it(make_app, monkeypatch) -> None:
    app = make_app(NLI_REQUEST_TIMEOUT=1.5, NLI_BATCH_SIZE=1, NLI_CACHE_SIZE=0)  # PAIR computed in every request
    forwarded = _counting_forwards(engine_of(app), monkeypatch, seconds=0.4)
    client = app.test_client()
    pairs = {"pairs": [PAIR] * 3}  # three passes of 0.4 s
    short = client.post("/batch-predict", json=pairs, headers={"X-Request-Timeout": "0.5"})
    assert short.status_code == 408 and "0.5 s" in short.get_json()["error"]
    assert len(forwarded) <= 2, "stopped within the client's 0.5 s"
    assert client.post("/batch-predict", json=pairs, headers={"X-Request-Timeout": "60"}).status_code == 200
    forwarded.clear()
    longer = client.post("/batch-predict", json={"pairs": [PAIR] * 5}, headers={"X-Request-Timeout": "60"})
    assert longer.status_code == 408 and "1.5 s" in longer.get_json()["error"], "NLI_REQUEST_TIMEOUT still bounds it"


@pytest.mark.parametrize("raw", ["soon", "0", "-1", "nan", "inf", ""])
def test_an_unreadable_x_request_timeout_is_a_400_naming_it(make_app, raw: str) -> None:
    response = make_app().test_client().post("/predict", json=PAIR, headers={"X-Request-Timeout": raw})
    assert response.status_code == 400 and "X-Request-Timeout" in response.get_json()["error"]


@pytest.mark.parametrize("raw", ["t=abc", "", "t=-5", "nan", f"t={time.time() + 3600:.3f}", "t=1"])
def test_a_request_start_from_the_future_or_unreadable_is_ignored(make_app, raw: str) -> None:
    app = make_app(NLI_REQUEST_TIMEOUT=5)
    assert app.test_client().post("/predict", json=PAIR, headers={"X-Request-Start": raw}).status_code == 200


def test_request_start_formats() -> None:
    assert epoch_seconds("t=1733100000.5") == 1733100000.5
    assert epoch_seconds("1733100000500") == 1733100000.5
    assert epoch_seconds("t=1733100000500000") == 1733100000.5
    assert epoch_seconds("soon") is None


def test_a_request_whose_client_has_gone_is_499_and_never_computed(make_app, monkeypatch) -> None:
    app = make_app()
    forwarded = _counting_forwards(engine_of(app), monkeypatch)
    ours, theirs = socket.socketpair()
    theirs.close()  # the client hung up after sending its request
    try:
        response = app.test_client().post("/predict", json=PAIR, environ_overrides={"gunicorn.socket": ours})
    finally:
        ours.close()
    assert response.status_code == 499 and forwarded == []
    ours, theirs = socket.socketpair()
    with ours, theirs:  # a client still connected is served
        response = app.test_client().post("/predict", json=PAIR, environ_overrides={"gunicorn.socket": ours})
    assert response.status_code == 200 and len(forwarded) == 1


def test_the_batcher_drops_a_queued_request_whose_client_has_gone(model_dir: Path) -> None:
    engine = NLIEngine.from_pretrained(str(model_dir), batch_size=1)
    started, release = threading.Event(), threading.Event()
    original = engine.forward
    forwarded: list[int] = []

    def forward(encoded, chunk):
        forwarded.append(len(chunk))
        started.set()
        release.wait(10)
        return original(encoded, chunk)

    engine.forward = forward
    batcher = MicroBatcher(engine, max_pairs=1, max_wait=0.001)
    first = threading.Thread(target=lambda: batcher.predict([Pair(*SAMPLE_PAIRS[0])]))
    first.start()
    assert started.wait(10)
    gone = threading.Event()
    outcome: list[BaseException] = []

    def queued() -> None:
        try:
            batcher.predict([Pair(*SAMPLE_PAIRS[1])], Deadline(30, client_gone=gone.is_set))
        except BaseException as error:  # noqa: BLE001 - the outcome is what the test checks
            outcome.append(error)

    second = threading.Thread(target=queued)
    second.start()
    wait_for(lambda: batcher._queued_pairs == 1, timeout=10, what="the second request queued")
    gone.set()
    release.set()
    first.join(10)
    second.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], ClientGone)
    assert forwarded == [1], "the gone client's pair was never forwarded"


@pytest.fixture(scope="module")
def slow_model_dir(models_root: Path) -> Path:
    """Big enough that 48 pairs of 500 tokens keep a worker busy for a while."""
    from model_factory import build_model

    return build_model(models_root / "slow-overload", hidden_size=256, layers=6, max_positions=512)


def test_over_real_gunicorn_a_client_that_hangs_up_while_queued_is_not_computed(
    services, slow_model_dir: Path, tmp_path: Path
) -> None:
    env = service_env(NLI_MODEL=slow_model_dir, NLI_WORKERS=1, NLI_THREADS=4, NLI_BATCH_SIZE=8, NLI_LOG_DIR=tmp_path)
    with services.running(GUNICORN, env) as service:
        busy = threading.Thread(
            target=lambda: requests.post(f"{service.url}/batch-predict", json={"pairs": long_pairs(48)}, timeout=60)
        )
        busy.start()
        wait_for(lambda: metric_sum(scrape(service.metrics_url), "nli_batch_pairs_count") > 0, what="busy")
        three = [{"premise": premise, "hypothesis": hypothesis} for premise, hypothesis in SAMPLE_PAIRS[:3]]
        body = json.dumps({"pairs": three}).encode()  # three different pairs: the cache computes a pair once
        head = (
            f"POST /batch-predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        )
        with socket.create_connection(("127.0.0.1", int(env["NLI_PORT"]))) as hangs_up:
            hangs_up.sendall(head.encode() + b"\r\n\r\n" + body)
            wait_for(  # the request waits in the batcher's queue; then the client hangs up
                lambda: metric_sum(scrape(service.metrics_url), "nli_queued_pairs") == 3, what="the request queued"
            )
        busy.join(60)
        wait_for(
            lambda: metric_sum(scrape(service.metrics_url), "nli_requests_dropped_total", reason="client_gone") == 1,
            what="the hung-up request dropped",
        )
        assert metric_sum(scrape(service.metrics_url), "nli_pairs_total") == 48, "its 3 pairs were never computed"


def test_a_sync_worker_refuses_at_once_what_its_queue_would_make_miss_the_deadline(
    services, slow_model_dir: Path, tmp_path: Path
) -> None:
    """One sync worker, requests of a few hundred ms, a deadline of 2 s and 12 clients at once: the
    backlog would make the last ones wait past it, so they get 503 + Retry-After when picked up,
    rather than 408 after computing or waiting."""
    env = service_env(
        NLI_MODEL=slow_model_dir, NLI_WORKERS=1, NLI_WORKER_CLASS="sync", NLI_REQUEST_TIMEOUT=2, NLI_LOG_DIR=tmp_path,
        NLI_CACHE_SIZE=0,  # every request the same body, computed each time
    )  # fmt: skip
    with services.running(GUNICORN, env) as service:
        body = {"pairs": long_pairs(16, words=400)}
        took = []
        for _ in range(3):  # the worker learns its time per request; so does the test
            started = time.monotonic()
            assert requests.post(f"{service.url}/batch-predict", json=body, timeout=60).status_code == 200
            took.append(time.monotonic() - started)
        # enough clients that the last would wait three deadlines, whatever this machine's speed
        clients_count = min(max(math.ceil(3 * 2 / min(took)) + 2, 4), 40)
        answers: list[requests.Response] = []
        lock = threading.Lock()

        def client() -> None:
            answer = requests.post(f"{service.url}/batch-predict", json=body, timeout=120)
            with lock:
                answers.append(answer)

        clients = [threading.Thread(target=client, daemon=True) for _ in range(clients_count)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(180)
        statuses = sorted(answer.status_code for answer in answers)
        refused = [answer for answer in answers if answer.status_code == 503]
        assert refused and 200 in statuses and set(statuses) <= {200, 503, 408}, statuses
        assert statuses.count(408) <= 1, "the queue is refused, not left to time out"
        assert all(int(answer.headers["Retry-After"]) >= 1 for answer in refused)
        assert all("overloaded" in answer.json()["error"] for answer in refused)
        samples = scrape(service.metrics_url)
        assert metric_sum(samples, "nli_requests_dropped_total", reason="queue_too_long") == len(refused)
