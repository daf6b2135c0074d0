"""Slow and idle clients hold no worker past NLI_CLIENT_TIMEOUT (issue 14 §2), over real Gunicorn."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import requests
from model_factory import SAMPLE_PAIRS
from serving import GUNICORN, service_env

from nli_service.server.slow_clients import RequestBuffer

PAIR = {"premise": SAMPLE_PAIRS[0][0], "hypothesis": SAMPLE_PAIRS[0][1]}
STALLED_HEADERS = b"POST /predict HTTP/1.1\r\nHost: x\r\n"


def _stall(port: int, payload: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(payload)
    return sock


def _stalled_body(port: int) -> socket.socket:
    body = json.dumps(PAIR).encode()
    return _stall(port, _head(len(body)) + body[:10])


def _head(length: int) -> bytes:
    head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {length}\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("worker_class", "workers", "threads"),
    [("gthread", 2, 4), ("sync", 2, 1)],
)
def test_stalled_connections_do_not_stop_health_and_get_408(
    services, model_dir: Path, tmp_path: Path, worker_class: str, workers: int, threads: int
) -> None:
    client_timeout = 1.5
    env = service_env(
        NLI_MODEL=model_dir,
        NLI_WORKERS=workers,
        NLI_THREADS=threads,
        NLI_WORKER_CLASS=worker_class,
        NLI_CLIENT_TIMEOUT=client_timeout,
        NLI_LOG_DIR=tmp_path,
    )
    with services.running(GUNICORN, env) as service:
        port = int(env["NLI_PORT"])
        stalled_count = 2 * workers * threads
        stalled = [_stall(port, STALLED_HEADERS) if i % 2 else _stalled_body(port) for i in range(stalled_count)]
        try:
            started = time.monotonic()
            health = requests.get(f"{service.url}/health", timeout=10)
            waited = time.monotonic() - started
            assert health.status_code == 200
            # Both worker classes read requests in an event loop: stalled ones hold no thread or worker.
            assert waited < 1.0, f"/health took {waited:.2f} s with {stalled_count} stalled connections"
            answers = []
            for sock in stalled:
                sock.settimeout(client_timeout + 10)
                answers.append(sock.recv(65536))
            assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[:2]
            assert b'"status": 408' in answers[0]
        finally:
            for sock in stalled:
                sock.close()
        assert requests.post(f"{service.url}/predict", json=PAIR, timeout=10).status_code == 200


def test_a_request_that_arrives_in_pieces_within_the_time_is_served(services, model_dir: Path, tmp_path: Path) -> None:
    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=1, NLI_THREADS=2, NLI_CLIENT_TIMEOUT=3, NLI_LOG_DIR=tmp_path)
    with services.running(GUNICORN, env):
        body = json.dumps(PAIR).encode()
        raw = _head(len(body)) + body
        sock = socket.create_connection(("127.0.0.1", int(env["NLI_PORT"])), timeout=10)
        with sock:
            for start in range(0, len(raw), 7):
                sock.sendall(raw[start : start + 7])
                time.sleep(0.005)  # a slow network, not synchronisation
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_the_request_buffer_knows_when_a_request_is_whole() -> None:
    buffer = RequestBuffer(seconds=5, max_body_bytes=100)
    assert not buffer.add(b"POST /predict HTTP/1.1\r\nContent-Length: 5\r\n")
    assert not buffer.add(b"\r\nab")
    assert buffer.add(b"cde")
    too_big = RequestBuffer(seconds=5, max_body_bytes=4)
    assert too_big.add(b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n"), "a body over the limit is not waited for"
    chunked = RequestBuffer(seconds=5, max_body_bytes=100)
    assert chunked.add(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    no_body = RequestBuffer(seconds=5, max_body_bytes=100)
    assert no_body.add(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    expired = RequestBuffer(seconds=0, max_body_bytes=100)
    assert expired.expired()
