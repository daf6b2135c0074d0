"""Drain on SIGTERM (issue 14 §6): /ready turns 503 at once, accepted requests are all answered,
and the default stop fits Kubernetes' 30 s termination grace."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from serving import GUNICORN, service_env, wait_for

from nli_service.config import Settings
from nli_service.server.hooks import graceful_timeout

PAIR_BODY = b'{"premise": "A man plays a guitar.", "hypothesis": "A person plays music."}'
KUBERNETES_DEFAULT_GRACE = 30


def test_the_default_stop_fits_kubernetes_default_termination_grace() -> None:
    settings = Settings.from_env({})
    assert settings.drain_seconds > 0, "load balancers get time to see /ready turn 503"
    assert graceful_timeout(settings) >= settings.request_timeout, "in-flight requests may run to their deadline"
    assert settings.drain_seconds + graceful_timeout(settings) < KUBERNETES_DEFAULT_GRACE


def _one_request(port: int) -> str:
    """One request on a fresh connection: its status, or how it failed."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    except ConnectionRefusedError:
        return "refused"  # never accepted: the server had stopped listening
    with sock:
        head = (
            f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(PAIR_BODY)}"
        )
        try:
            sock.sendall(head.encode() + b"\r\nConnection: close\r\n\r\n" + PAIR_BODY)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1") else "no answer"


@pytest.mark.parametrize("worker_class", ["gthread", "sync"])
def test_sigterm_under_load_answers_every_accepted_request(
    services, model_dir: Path, tmp_path: Path, worker_class: str
) -> None:
    env = service_env(
        NLI_MODEL=model_dir,
        NLI_WORKERS=2,
        NLI_WORKER_CLASS=worker_class,
        NLI_THREADS=4,
        NLI_DRAIN_SECONDS=1.5,
        NLI_LOG_DIR=tmp_path,
    )
    service = services.start(GUNICORN, env)
    service.wait_ready()
    expected = {"gthread": "BalancedThreadWorker", "sync": "BoundedSyncWorker"}[worker_class]
    assert "Using worker: nli_service.server." in service.output() and expected in service.output()
    port = int(env["NLI_PORT"])
    outcomes: Counter[str] = Counter()
    lock, stop = threading.Lock(), threading.Event()

    def client() -> None:
        while not stop.is_set():
            outcome = _one_request(port)
            with lock:
                outcomes[outcome] += 1
            if outcome == "refused":
                return

    clients = [threading.Thread(target=client, daemon=True) for _ in range(8)]  # daemon: never outlive a failure
    for thread in clients:
        thread.start()
    time.sleep(1.0)  # load for a second: the test's workload, not a synchronisation
    service.process.send_signal(signal.SIGTERM)
    # The master handles the signal in its own loop: under load its first answer can still be 200.
    # "At once" is well within the 1.5 s drain.
    wait_for(lambda: requests.get(f"{service.url}/ready", timeout=5).status_code == 503, 1.0, "/ready 503")
    ready = requests.get(f"{service.url}/ready", timeout=5)
    assert ready.status_code == 503 and "stopping" in ready.json()["error"]
    assert requests.get(f"{service.url}/health", timeout=5).status_code == 200, "still alive while draining"
    assert service.process.wait(30) == 0
    stop.set()
    for thread in clients:
        thread.join(30)
    answered = outcomes["200"]
    failures = {outcome: count for outcome, count in outcomes.items() if outcome not in ("200", "refused")}
    assert answered > 20 and not failures, f"{outcomes}"
