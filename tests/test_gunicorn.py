"""The real service under multi-worker Gunicorn (and ``python app.py``), over HTTP."""

from __future__ import annotations

import json
import random
import signal
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch
from model_factory import SAMPLE_PAIRS, WORDS, build_model
from serving import DEV_SERVER, GUNICORN, free_port, metric_sum, scrape, service_env, wait_for

from nli_service.config import available_cores

PAIR = {"premise": SAMPLE_PAIRS[0][0], "hypothesis": SAMPLE_PAIRS[0][1]}


def _numbered(i: int) -> dict[str, str]:
    """PAIR made unique, so each request is computed (not answered from the result cache)."""
    return {**PAIR, "premise": f"{PAIR['premise']} ({i})"}


def long_pairs(count: int, words: int = 500) -> list[dict[str, str]]:
    rng = random.Random(0)
    return [{"premise": " ".join(rng.choice(WORDS) for _ in range(words)), "hypothesis": "a dog"} for _ in range(count)]


@pytest.fixture(scope="module")
def slow_model_dir(models_root: Path) -> Path:
    """Big enough that 8 pairs of 500 tokens take a noticeable fraction of a second."""
    return build_model(models_root / "slow", hidden_size=256, layers=6, max_positions=512)


@pytest.fixture(scope="module")
def server(slow_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, module_services):
    log_dir = tmp_path_factory.mktemp("gunicorn-logs")
    # Sync workers: their request deadline is SIGALRM, which interrupts even a forward pass (gthread
    # workers stop between chunks: test_gthread_workers_time_out_cooperatively). No result cache:
    # these tests send the same pairs again and count what the workers compute.
    env = service_env(
        NLI_MODEL=slow_model_dir, NLI_WORKERS=2, NLI_WORKER_CLASS="sync", NLI_LOG_DIR=log_dir, NLI_REQUEST_TIMEOUT=1,
        NLI_CACHE_SIZE=0,
    )  # fmt: skip
    with module_services.running(GUNICORN, env) as service:
        yield service


def log_records(service) -> list[dict]:
    return [
        json.loads(line) for line in (Path(service.env["NLI_LOG_DIR"]) / "nli_service.log").read_text().splitlines()
    ]


def test_counters_add_up_exactly_across_workers(server) -> None:
    before = scrape(server.metrics_url)
    sent, pids = 0, set()
    with ThreadPoolExecutor(8) as pool:
        while len(pids) < 2 and sent < 400:  # until both workers have answered
            futures = [pool.submit(requests.post, f"{server.url}/predict", json=PAIR, timeout=30) for _ in range(20)]
            sent += len(futures)
            assert all(f.result().status_code == 200 for f in futures)
            pids = {r["worker_pid"] for r in log_records(server) if r.get("path") == "/predict"}
    batch = requests.post(f"{server.url}/batch-predict", json={"pairs": [PAIR] * 7}, timeout=30)
    assert batch.status_code == 200
    after = scrape(server.metrics_url)
    assert len(pids) == 2, "both workers served"

    def delta(name: str, **labels: str) -> float:
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    assert delta("nli_request_total", endpoint="/predict", status="200", method="POST") == sent
    assert delta("nli_pairs_total") == sent + 7
    assert (
        sum(delta("nli_predicted_label_total", label=label) for label in ("entailment", "neutral", "contradiction"))
        == sent + 7
    )
    assert delta("nli_request_latency_seconds_count", endpoint="/predict") == sent
    assert delta("nli_batch_pairs_sum") == sent + 7
    assert metric_sum(after, "nli_requests_in_flight") == 0
    assert metric_sum(after, "nli_model_load_seconds") > 0


def test_logs_are_json_lines_with_one_access_record_per_request(server) -> None:
    requests.get(f"{server.url}/health", headers={"X-Request-ID": "log-check-1"}, timeout=10)
    records = log_records(server)  # every line parses as JSON
    access = [r for r in records if r.get("request_id") == "log-check-1" and r["message"] == "request"]
    assert len(access) == 1
    record = access[0]
    for field in (
        "time",
        "level",
        "request_id",
        "worker_pid",
        "method",
        "path",
        "status",
        "latency_ms",
        "pairs",
        "input_chars",
    ):
        assert field in record
    assert {r["message"] for r in records} >= {"model loaded", "request"}


def test_gunicorns_own_messages_are_json_on_stderr_and_in_the_log_file(server) -> None:
    def booted() -> list[dict]:
        return [r for r in log_records(server) if r["logger"] == "gunicorn.error" and "Booting worker" in r["message"]]

    # /ready answered once one worker was up; the other may still boot
    wait_for(lambda: len(booted()) >= 2, timeout=30, what="both workers booted")
    assert all(r["level"] == "INFO" and r["pid"] for r in booted())
    stderr_lines = [line for line in server.output().splitlines() if '"gunicorn.error"' in line]
    assert stderr_lines and all(json.loads(line)["logger"] == "gunicorn.error" for line in stderr_lines)
    assert not [line for line in server.output().splitlines() if line.startswith("[")], "no plain-text Gunicorn lines"


def gunicorn_messages(service, text: str) -> list[dict]:
    return [r for r in log_records(service) if r["logger"] == "gunicorn.error" and text in r["message"]]


def test_a_slow_request_is_408_and_the_worker_keeps_serving(server) -> None:
    """Gunicorn's own worker timeout is longer than the 1 s request deadline: the request's
    worker answers 408 itself and lives on (it is not killed and re-booted by the master)."""
    wait_for(lambda: len(gunicorn_messages(server, "Booting worker")) >= 2, timeout=30, what="both workers booted")
    booted_before = len(gunicorn_messages(server, "Booting worker"))
    before = scrape(server.metrics_url)
    started = time.monotonic()
    response = requests.post(f"{server.url}/batch-predict", json={"pairs": long_pairs(64)}, timeout=60)
    elapsed = time.monotonic() - started
    assert response.status_code == 408, response.text
    assert response.json()["status"] == 408
    assert elapsed < 4, f"answered after {elapsed:.1f} s; the deadline is 1 s"
    # Both workers still answer. On a loaded machine a small request can itself pass a 1 s
    # deadline, so 408s may come between the 200s; a dead or stuck worker would give neither.
    answers: list[int] = []
    predict = lambda: answers.append(requests.post(f"{server.url}/predict", json=PAIR, timeout=30).status_code)  # noqa: E731
    wait_for(lambda: predict() or answers.count(200) >= 6, timeout=60, what="six 200s after the 408")
    assert set(answers) <= {200, 408}, answers
    timeouts = 1 + answers.count(408)
    after = scrape(server.metrics_url)
    assert (
        metric_sum(after, "nli_request_timeouts_total") - metric_sum(before, "nli_request_timeouts_total") == timeouts
    )
    assert (
        metric_sum(after, "nli_request_total", status="408") - metric_sum(before, "nli_request_total", status="408")
        == timeouts
    )
    assert not gunicorn_messages(server, "WORKER TIMEOUT"), "the master killed a worker"
    assert len(gunicorn_messages(server, "Booting worker")) == booted_before, "no worker was replaced"


def test_errors_are_json_over_real_http(server) -> None:
    assert (
        requests.post(
            f"{server.url}/predict", data="{", headers={"Content-Type": "application/json"}, timeout=10
        ).status_code
        == 400
    )
    assert (
        requests.post(f"{server.url}/predict", data="x", headers={"Content-Type": "text/plain"}, timeout=10).status_code
        == 415
    )
    too_big = requests.post(
        f"{server.url}/predict", json={"premise": "a" * (2 * 1024 * 1024), "hypothesis": "b"}, timeout=30
    )
    assert too_big.status_code == 413 and too_big.json()["status"] == 413
    wrong_method = requests.get(f"{server.url}/batch-predict", timeout=10)
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"]
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200


def test_sigterm_lets_in_flight_requests_finish(slow_model_dir: Path, tmp_path: Path, services) -> None:
    service = services.start(GUNICORN, service_env(NLI_MODEL=slow_model_dir, NLI_WORKERS=1, NLI_LOG_DIR=tmp_path))
    service.wait_ready()
    result: list[requests.Response] = []
    request = threading.Thread(
        target=lambda: result.append(
            requests.post(f"{service.url}/batch-predict", json={"pairs": long_pairs(24)}, timeout=60)
        )
    )
    request.start()
    in_flight = lambda: metric_sum(scrape(service.metrics_url), "nli_requests_in_flight") == 1  # noqa: E731
    wait_for(in_flight, what="the request in flight")
    service.process.send_signal(signal.SIGTERM)
    request.join()
    assert result[0].status_code == 200 and len(result[0].json()["results"]) == 24
    assert service.process.wait(30) == 0


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"NLI_MODEL": "/nonexistent/model"}, "does not exist"),
        ({"NLI_MODEL": "acme/not-cached", "HF_HUB_OFFLINE": "1"}, "not in the Hugging Face cache"),
        ({"NLI_MODEL": "acme/not-cached"}, "hub is unreachable"),  # HF_ENDPOINT below
        ({"NLI_DEVICE": "cuda"}, "CUDA is not available"),  # no preload: the workers fail, the master stops
        ({"NLI_BATCH_SIZE": "zero"}, "NLI_BATCH_SIZE"),
        ({"NLI_LOG_DIR": "/dev/null/logs"}, "NLI_LOG_DIR='/dev/null/logs' cannot hold the log file"),
    ],
)
def test_a_service_that_cannot_start_exits_non_zero_with_the_reason(
    settings: dict[str, str], expected: str, model_dir: Path, tmp_path: Path, services
) -> None:
    defaults = {
        "NLI_MODEL": model_dir,
        "NLI_WORKERS": 2,
        "NLI_LOG_DIR": tmp_path,
        "HF_HOME": tmp_path / "hf",  # an empty cache
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # nothing listens: the hub is unreachable
    }
    env = service_env(**{**defaults, **settings})
    code, stderr, seconds = services.run_to_exit(GUNICORN, env)
    assert code != 0
    assert "nli-service cannot start: " in stderr and expected in stderr
    assert stderr.count("cannot start") <= 2, "no worker re-spawn loop"
    assert seconds < 60  # importing torch alone takes 15 s on this 2-core machine when it is busy


def test_a_half_precision_checkpoint_is_served_in_float32_by_every_worker(
    models_root: Path, tmp_path: Path, services
) -> None:
    """The master loads fp16 weights without casting them; each worker casts after the fork."""
    folder = build_model(models_root / "fp16-served", dtype=torch.float16)
    service = services.start(GUNICORN, service_env(NLI_MODEL=folder, NLI_WORKERS=2, NLI_LOG_DIR=tmp_path))
    try:
        service.wait_ready()
        assert requests.get(f"{service.url}/model", timeout=10).json()["dtype"] == "float32"
        served_by: set[int] = set()
        with ThreadPoolExecutor(8) as pool:
            for start in range(0, 320, 32):  # until both have answered: one fast worker may take a whole round
                answers = list(
                    pool.map(
                        lambda i: requests.post(f"{service.url}/predict", json=_numbered(i), timeout=20),
                        range(start, start + 32),
                    )
                )
                assert all(answer.status_code == 200 for answer in answers)
                records = log_records(service)
                served_by = {r["worker_pid"] for r in records if r.get("path") == "/predict" and r.get("status") == 200}
                if len(served_by) == 2:
                    break
        assert len(served_by) == 2, "both workers answer (neither hangs after the fork)"
    finally:
        assert service.stop() == 0


@pytest.mark.parametrize("command", [GUNICORN, DEV_SERVER], ids=["gunicorn", "app.py"])
def test_a_taken_metrics_port_stops_start_up_with_the_reason(
    command, model_dir: Path, tmp_path: Path, services
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=2, NLI_LOG_DIR=tmp_path, NLI_METRICS_PORT=port)
        code, stderr, _ = services.run_to_exit(command, env)
    assert code == 4
    assert f"nli-service cannot start: NLI_METRICS_PORT={port} cannot be served" in stderr
    assert "Traceback" not in stderr


def test_python_app_py_serves_times_out_and_reports_metrics(slow_model_dir: Path, tmp_path: Path, services) -> None:
    service = services.start(
        DEV_SERVER, service_env(NLI_MODEL=slow_model_dir, NLI_LOG_DIR=tmp_path, NLI_REQUEST_TIMEOUT=1)
    )
    try:
        service.wait_ready()
        assert requests.post(f"{service.url}/predict", json=PAIR, timeout=10).json()["label"]
        slow = requests.post(f"{service.url}/batch-predict", json={"pairs": long_pairs(64)}, timeout=60)
        assert slow.status_code == 408
        assert requests.post(f"{service.url}/predict", json=PAIR, timeout=10).status_code == 200
        samples = scrape(service.metrics_url)
        assert metric_sum(samples, "nli_request_total", endpoint="/predict", status="200") == 2
        assert metric_sum(samples, "nli_request_timeouts_total") == 1
    finally:
        assert service.stop() == 0


def test_gthread_workers_time_out_cooperatively(slow_model_dir: Path, tmp_path: Path, services) -> None:
    env = service_env(
        NLI_MODEL=slow_model_dir,
        NLI_WORKERS=1,
        NLI_WORKER_CLASS="gthread",
        NLI_THREADS=2,
        NLI_LOG_DIR=tmp_path,
        NLI_REQUEST_TIMEOUT=1,
    )
    service = services.start(GUNICORN, env)
    try:
        service.wait_ready()
        slow = requests.post(f"{service.url}/batch-predict", json={"pairs": long_pairs(64)}, timeout=60)
        assert slow.status_code == 408
        # The batcher leaves the abandoned batch after the chunk it is in; a request queued behind
        # that chunk may itself pass its 1 s deadline (408), so the worker must serve again soon, not at once.
        answers: list[int] = []
        predict = lambda: answers.append(requests.post(f"{service.url}/predict", json=PAIR, timeout=30).status_code)  # noqa: E731
        wait_for(lambda: predict() or answers[-1] == 200, timeout=30, what="a 200 after the 408")
        assert set(answers) <= {200, 408}, answers
    finally:
        assert service.stop() == 0


def _pid_over_new_connection(session: requests.Session, url: str) -> int:
    return session.get(f"{url}/health", timeout=30).json()["pid"]


def test_gthread_workers_share_keep_alive_connections_evenly(model_dir: Path, tmp_path: Path, services) -> None:
    """Gunicorn leaves the choice to the kernel, which can put every connection on one worker;
    here each new connection goes to the worker with the fewest open ones."""
    env = service_env(
        NLI_MODEL=model_dir, NLI_WORKERS=2, NLI_WORKER_CLASS="gthread", NLI_THREADS=4, NLI_LOG_DIR=tmp_path
    )
    service = services.start(GUNICORN, env)
    try:
        service.wait_ready()
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:  # both workers up (closed connections)
            with requests.Session() as probe:
                seen.add(_pid_over_new_connection(probe, service.url))
        assert len(seen) == 2, "the second worker never answered"
        sessions = [requests.Session() for _ in range(6)]
        pids = [_pid_over_new_connection(session, service.url) for session in sessions]  # each stays open
        assert sorted(Counter(pids).values()) == [3, 3], f"connections per worker: {Counter(pids)}"
        assert [_pid_over_new_connection(s, service.url) for s in sessions] == pids  # kept alive
        for session in sessions:
            session.close()
    finally:
        assert service.stop() == 0


@pytest.mark.skipif(available_cores() < 2, reason="lending cores needs two")
def test_a_lone_request_borrows_the_idle_workers_core(model_dir: Path, tmp_path: Path, services) -> None:
    env = service_env(
        NLI_MODEL=model_dir, NLI_WORKERS=2, NLI_WORKER_CLASS="gthread", NLI_THREADS=4, NLI_LOG_DIR=tmp_path,
        NLI_CACHE_SIZE=0,  # the same pair three times: computed three times
    )  # fmt: skip
    with services.running(GUNICORN, env) as service, requests.Session() as client:
        for _ in range(3):
            assert client.post(f"{service.url}/predict", json=PAIR, timeout=30).status_code == 200
        assert metric_sum(scrape(service.metrics_url), "nli_borrowed_cores_passes_total") == 3


@pytest.mark.parametrize("worker_class", ["gthread", "sync"])
def test_after_a_413_for_a_body_too_big_a_keep_alive_client_carries_on(
    model_dir: Path, tmp_path: Path, services, worker_class: str
) -> None:
    """The unread body is more than Gunicorn drains (64 KiB): the 413 says Connection: close, so
    the client opens a new connection for its next request instead of meeting a closed one."""
    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=1, NLI_WORKER_CLASS=worker_class, NLI_LOG_DIR=tmp_path)
    too_big = json.dumps({"pairs": [PAIR] * 16000}).encode()
    assert len(too_big) > 1024 * 1024, "over the 1 MiB default NLI_MAX_BODY_BYTES"
    with services.running(GUNICORN, env) as service, requests.Session() as client:
        for _ in range(8):
            refused = client.post(
                f"{service.url}/batch-predict", data=too_big, headers={"Content-Type": "application/json"}, timeout=30
            )
            assert refused.status_code == 413 and refused.headers["Connection"] == "close"
            assert client.post(f"{service.url}/predict", json=PAIR, timeout=30).status_code == 200
