"""Load generator, run as its own process: ``python -m bench.loadgen URL PATH BODIES.json``.

``concurrency`` threads each send the request bodies in turn (keep-alive where the
server allows it) until ``duration`` seconds or ``max_requests`` have passed (with ``--once``:
or every body was sent, none twice), then one JSON line of results is printed: requests,
errors, pairs/s, latency percentiles, and each request's latency with the index of its body.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
from urllib.parse import urlsplit


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class _Client:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.connection: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes) -> int:
        for attempt in range(2):  # a server that closed the kept-alive connection gets one retry
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
            try:
                self.connection.request("POST", path, body, {"Content-Type": "application/json"})
                response = self.connection.getresponse()
                response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.connection.close()
                    self.connection = None
                return response.status
            except (http.client.HTTPException, ConnectionError):
                self.connection.close()
                self.connection = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def run(
    url: str, path: str, bodies: list[dict], concurrency: int, duration: float, max_requests: int, once: bool = False
) -> dict:
    encoded = [json.dumps(body).encode() for body in bodies]
    if once:  # body i is request i, whichever thread sends it
        max_requests = min(max_requests, len(bodies))
    pairs_per_body = [len(body.get("pairs", [None])) for body in bodies]
    latencies: list[float] = []
    body_indices: list[int] = []  # which body each latency is for
    errors = 0
    pairs_done = 0
    sent = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def worker(offset: int) -> None:
        nonlocal errors, pairs_done, sent
        client = _Client(url)
        index = offset
        while time.monotonic() < stop_at:
            with lock:
                if sent >= max_requests:
                    return
                if once:
                    index = sent
                sent += 1
            started = time.perf_counter()
            try:
                status = client.post(path, encoded[index % len(encoded)])
            except Exception:  # noqa: BLE001 - counted as an error
                status = 0
            elapsed = time.perf_counter() - started
            with lock:
                if status == 200:
                    latencies.append(elapsed)
                    body_indices.append(index % len(encoded))
                    pairs_done += pairs_per_body[index % len(encoded)]
                else:
                    errors += 1
            index += concurrency

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    return {
        "requests": len(latencies),
        "pairs": pairs_done,
        "errors": errors,
        "seconds": round(wall, 3),
        "pairs_per_second": round(pairs_done / wall, 2),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 95) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else float("nan"),
        "latencies_ms": [round(latency * 1000, 2) for latency in latencies],
        "body_indices": body_indices,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("path")
    parser.add_argument("bodies", help="JSON file holding a list of request bodies")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--once", action="store_true", help="send each body at most once, in order")
    args = parser.parse_args()
    with open(args.bodies) as file:
        bodies = json.load(file)
    result = run(args.url, args.path, bodies, args.concurrency, args.duration, args.max_requests, args.once)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
