"""Faults (issue 14 §4): a worker that cannot start rebuilds what it needs or is replaced later; the
master keeps serving with the others, and stops only when no worker has ever started."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from model_factory import SAMPLE_PAIRS
from serving import GUNICORN, service_env, wait_for
from test_operations import worker_pids

PAIR = {"premise": SAMPLE_PAIRS[0][0], "hypothesis": SAMPLE_PAIRS[0][1]}

FAILING_START_CONF = """\
from nli_service.server.gunicorn_conf import *  # noqa: F403 -- the real settings and hooks
import os
from pathlib import Path
from nli_service.inference.engine import NLIEngine

_warm_up = NLIEngine.warm_up


def _warm_up_unless_broken(self):
    if Path(os.environ["BREAK_STARTS"]).exists():
        raise RuntimeError("this worker cannot start (test fault)")
    _warm_up(self)


NLIEngine.warm_up = _warm_up_unless_broken
"""


class Load:
    """Clients sending /predict on fresh connections until stopped; their statuses."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url, self.outcomes, self.stop = url, Counter(), threading.Event()
        # daemon: a test failing before finish() must not leave them running past the session
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                status = str(requests.post(f"{self.url}/predict", json=PAIR, timeout=60).status_code)
            except requests.RequestException as error:
                status = type(error).__name__
                self.stop.wait(0.05)  # a refused connection comes back at once: do not spin
            self.outcomes[status] += 1

    def finish(self) -> Counter:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        return self.outcomes

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()  # also when the test failed


def _workers_serving(service, log_dir: Path) -> set[int]:
    """The workers that answered a burst of concurrent /health requests, by the access log."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: requests.get(f"{service.url}/health", timeout=10), range(16)))
    records = [json.loads(line) for line in (log_dir / "nli_service.log").read_text().splitlines()]
    return {record["worker_pid"] for record in records if record.get("path") == "/health"}


def _failing_start_service(services, model_dir: Path, tmp_path: Path, broken: bool):
    config = tmp_path / "failing_start_conf.py"
    config.write_text(FAILING_START_CONF)
    marker = tmp_path / "break-starts"
    if broken:
        marker.touch()
    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=2, NLI_THREADS=2, NLI_LOG_DIR=tmp_path, BREAK_STARTS=marker)
    return [sys.executable, "-m", "gunicorn", "-c", str(config), "wsgi:app"], env, marker


def test_a_worker_that_cannot_start_is_replaced_later_and_the_others_serve(
    services, model_dir: Path, tmp_path: Path
) -> None:
    command, env, marker = _failing_start_service(services, model_dir, tmp_path, broken=False)
    service = services.start(command, env)
    service.wait_ready()
    master = service.process.pid
    wait_for(lambda: len(worker_pids(master)) == 2, what="two workers")
    # Both started (warmed up and serving), not just forked: a worker still warming up when the
    # marker appears would fail too, and killing the other would leave none.
    wait_for(lambda: _workers_serving(service, tmp_path) == worker_pids(master), what="both workers serving")
    with Load(service.url) as load:
        marker.touch()  # from now on a new worker fails its warm-up
        doomed = min(worker_pids(master))
        os.kill(doomed, signal.SIGKILL)
        wait_for(lambda: "failed to start" in service.output(), what="a replacement failing to start")
        for _ in range(3):  # while replacements keep failing, the other worker serves
            assert requests.post(f"{service.url}/predict", json=PAIR, timeout=20).status_code == 200
        assert service.process.poll() is None, "the master keeps serving with the other worker"
        marker.unlink()  # the fault is gone: the next replacement starts
        wait_for(lambda: len(worker_pids(master)) == 2 and doomed not in worker_pids(master), what="two workers again")
        outcomes = load.finish()
    assert service.process.poll() is None
    assert outcomes["200"] > 0 and set(outcomes) <= {"200", "ConnectionError"}, outcomes
    assert outcomes["ConnectionError"] <= 4, "only requests in flight on the killed worker may fail"
    assert requests.post(f"{service.url}/predict", json=PAIR, timeout=10).status_code == 200


def test_when_no_worker_ever_starts_the_server_stops_with_the_reason(services, model_dir: Path, tmp_path: Path) -> None:
    command, env, _ = _failing_start_service(services, model_dir, tmp_path, broken=True)
    code, stderr, seconds = services.run_to_exit(command, env, timeout=60)
    assert code != 0 and "cannot start (test fault)" in stderr and seconds < 30


@pytest.fixture
def onnx_cache(tmp_path: Path) -> Path:
    return tmp_path / "onnx-cache"


def test_a_worker_started_after_its_onnx_cache_was_corrupted_rebuilds_it(
    services, model_dir: Path, tmp_path: Path, onnx_cache: Path
) -> None:
    env = service_env(
        NLI_MODEL=model_dir,
        NLI_BACKEND="onnx",
        NLI_WORKERS=2,
        NLI_THREADS=2,
        NLI_LOG_DIR=tmp_path,
        NLI_ONNX_CACHE=onnx_cache,
    )
    service = services.start(GUNICORN, env)
    service.wait_ready(timeout=180)
    master = service.process.pid
    wait_for(lambda: len(worker_pids(master)) == 2, what="two workers")
    [exported] = list(onnx_cache.rglob("model.onnx"))
    exported.write_bytes(b"not an ONNX model")  # the cache damaged while the server runs
    with Load(service.url, clients=2) as load:
        doomed = min(worker_pids(master))
        os.kill(doomed, signal.SIGKILL)
        wait_for(lambda: len(worker_pids(master)) == 2 and doomed not in worker_pids(master), what="a replacement")
        wait_for(lambda: "rebuilding" in service.output(), timeout=60, what="the replacement rebuilding the export")
        # the export runs on every core meanwhile, so answers are slow, but they come
        health = f"{service.url}/health"
        wait_for(lambda: requests.get(health, timeout=60).status_code == 200, timeout=90, what="health")
        outcomes = load.finish()
    assert outcomes["200"] > 0 and set(outcomes) <= {"200", "ConnectionError"}, outcomes
    assert outcomes["ConnectionError"] <= 4, "only requests in flight on the killed worker may fail"
    wait_for(
        lambda: any(path.read_bytes() != b"not an ONNX model" for path in onnx_cache.rglob("model.onnx")),
        timeout=120,
        what="the export rebuilt by the replacement worker",
    )
    assert service.process.poll() is None
