"""The shipped nginx configuration in front of real Gunicorn replicas (issue 14 §2)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import requests
from model_factory import SAMPLE_PAIRS
from nginx import nginx_in_front, render
from serving import GUNICORN, free_port, service_env

PAIR = {"premise": SAMPLE_PAIRS[0][0], "hypothesis": SAMPLE_PAIRS[0][1]}


@pytest.fixture(scope="module")
def front(module_services, model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One Gunicorn replica (1 worker, 2 threads) behind the shipped nginx config; yields nginx's URL."""
    work = tmp_path_factory.mktemp("front")
    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=1, NLI_THREADS=2, NLI_LOG_DIR=work / "logs")
    with module_services.running(GUNICORN, env), nginx_in_front([int(env["NLI_PORT"])], work / "nginx") as url:
        yield url


def test_the_shipped_config_renders_for_several_replicas() -> None:
    text = render([5001, 5002], 9000)
    assert text.count("server 127.0.0.1:500") == 2 and "least_conn;" in text and "listen 127.0.0.1:9000;" in text


def test_200_stalled_clients_through_nginx_leave_health_answering(front: str) -> None:
    port = int(front.rsplit(":", 1)[1])
    stalled = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            stalled.append(sock)
        started = time.monotonic()
        health = requests.get(f"{front}/health", timeout=5)
        assert health.status_code == 200 and time.monotonic() - started < 1.0
        answer = requests.post(f"{front}/predict", json=PAIR, headers={"X-Request-ID": "through-nginx"}, timeout=10)
        assert answer.status_code == 200 and answer.headers["X-Request-ID"] == "through-nginx"
    finally:
        for sock in stalled:
            sock.close()


def test_nginx_refuses_an_oversized_body_itself(front: str) -> None:
    too_big = b'{"premise": "' + b"a" * (2 * 1024 * 1024) + b'", "hypothesis": "b"}'
    response = requests.post(f"{front}/predict", data=too_big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"error": response.json()["error"], "status": 413}
    assert "1 MiB" in response.json()["error"]


def test_with_no_replica_answering_nginx_says_so_in_json_with_retry_after(tmp_path: Path) -> None:
    with nginx_in_front([free_port()], tmp_path / "nginx") as url:  # nothing listens on the replica's port
        response = requests.post(f"{url}/predict", json=PAIR, timeout=10)
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Retry-After"] == "1"
    assert response.json()["status"] == 503 and "no replica" in response.json()["error"]
