"""The soak's load (``make soak`` runs it with locust, headless, in a process of its own).

Mixed traffic at full load (no wait between requests): /predict, /batch-predict (8-32 pairs),
/zero-shot (1-2 texts, 3-6 labels), and invalid bodies that must get their 400 or 413
(malformed JSON, a missing field, a forbidden template, 257 pairs, a body over 1 MiB).
A request counts as failed when its status is not the one expected. Every 10 s a line of
JSON is appended to ``$SOAK_SAMPLES``: the window's requests by status, and the latency in
ms of each answered request by endpoint (the soak driver computes throughput and p99 from it).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter, defaultdict

import gevent
from locust import FastHttpUser, constant, events, task

from bench.workloads import snli_pairs

WINDOW_SECONDS = 10.0
PAIRS = [{"premise": pair.premise, "hypothesis": pair.hypothesis} for pair in snli_pairs(2000, seed=14)]
LABELS = ["sports", "politics", "technology", "food", "music", "travel", "science", "health"]
JSON = {"Content-Type": "application/json"}
INVALID = [  # (name, body, expected status)
    ("malformed-json", b'{"premise": "A dog runs.", "hypothesis": ', 400),
    ("missing-field", b'{"premise": "A dog runs."}', 400),
    ("wrong-type", b'{"premise": 3, "hypothesis": "An animal moves."}', 400),
    ("bad-template", json.dumps({"text": "x", "labels": ["a"], "hypothesis_template": "{:>300}"}).encode(), 400),
    ("too-many-pairs", json.dumps({"pairs": PAIRS[:257]}).encode(), 413),
    ("body-over-1mib", json.dumps({"premise": "a " * 600_000, "hypothesis": "b"}).encode(), 413),
]
INVALID_PATHS = {"bad-template": "/zero-shot", "too-many-pairs": "/batch-predict"}


class _Window:
    """Requests answered in the current window, flushed to ``$SOAK_SAMPLES``."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.started = time.time()
        self.statuses: Counter[str] = Counter()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.no_answer: Counter[str] = Counter()  # "endpoint: exception" of the requests that got no status

    def record(self, name: str, status: int, milliseconds: float, exception: BaseException | None) -> None:
        self.statuses[str(status)] += 1
        if status == 0:
            self.no_answer[f"{name}: {type(exception).__name__} {exception}"[:200]] += 1
        if 200 <= status < 500:
            self.latencies[name].append(round(milliseconds, 1))

    def flush(self) -> None:
        now = time.time()
        line = {"start": self.started, "end": now, "statuses": dict(self.statuses), "latencies_ms": self.latencies}
        line["no_answer"] = dict(self.no_answer)
        self.started, self.statuses, self.latencies, self.no_answer = now, Counter(), defaultdict(list), Counter()
        if self.path:
            with open(self.path, "a") as file:
                file.write(json.dumps(line) + "\n")


WINDOW = _Window(os.environ.get("SOAK_SAMPLES"))


@events.request.add_listener
def _on_request(request_type, name, response_time, response_length, response=None, exception=None, **kwargs):
    status = getattr(response, "status_code", 0) or 0  # 0: no answer (connection refused, reset, timeout)
    WINDOW.record(name, status, response_time, exception)


@events.init.add_listener
def _on_init(environment, **kwargs):
    def flush_forever() -> None:
        while True:
            gevent.sleep(WINDOW_SECONDS)
            WINDOW.flush()

    gevent.spawn(flush_forever)


@events.quitting.add_listener
def _on_quitting(environment, **kwargs):
    WINDOW.flush()


class NLIUser(FastHttpUser):
    wait_time = constant(0)  # full load: the next request as soon as the last is answered
    network_timeout = 60.0
    connection_timeout = 60.0

    def _post(self, path: str, body: bytes, expected: int, name: str) -> None:
        # A body over NLI_MAX_BODY_BYTES goes on a connection of its own: the service answers its 413
        # with "Connection: keep-alive" but closes the connection when the unread body is over
        # Gunicorn's 64 KiB drain, so a request sent next on it fails (docs/reliability.md, Soak).
        headers = {**JSON, "Connection": "close"} if name == "invalid:body-over-1mib" else JSON
        with self.client.post(path, data=body, headers=headers, name=name, catch_response=True) as response:
            if response.status_code == expected:
                response.success()
            else:
                error = f" ({response.error!r})" if response.status_code == 0 else ""
                response.failure(f"{name}: {response.status_code}{error}, expected {expected}")

    @task(6)
    def predict(self) -> None:
        self._post("/predict", json.dumps(random.choice(PAIRS)).encode(), 200, "predict")

    @task(2)
    def batch_predict(self) -> None:
        start = random.randrange(len(PAIRS) - 32)
        pairs = PAIRS[start : start + random.randint(8, 32)]
        self._post("/batch-predict", json.dumps({"pairs": pairs}).encode(), 200, "batch-predict")

    @task(2)
    def zero_shot(self) -> None:
        texts = [random.choice(PAIRS)["premise"] for _ in range(random.randint(1, 2))]
        body = {"texts": texts, "labels": random.sample(LABELS, random.randint(3, 6)), "multi_label": True}
        self._post("/zero-shot", json.dumps(body).encode(), 200, "zero-shot")

    @task(1)
    def invalid(self) -> None:
        name, body, expected = random.choice(INVALID)
        self._post(INVALID_PATHS.get(name, "/predict"), body, expected, f"invalid:{name}")
