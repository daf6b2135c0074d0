"""The shipped nginx config in front of two Gunicorn replicas: ``kill -9`` one under load (issue 17 §2).

Each replica runs in a process group of its own, and the whole group is killed at once (the
master and its workers, as when a host or container dies). Which replica answered a request
is read from the replicas' own access records (each logs to its own NLI_LOG_DIR, keyed by the
X-Request-ID the client sent) and from nginx's access log (``$upstream_addr``).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from model_factory import SAMPLE_PAIRS
from nginx import access_records, nginx_in_front
from serving import GUNICORN, RunningService, Services, service_env, wait_for

from reliability.service import worker_pids

# Closed loop: each client sends its next request as soon as the last is answered, so ~CLIENTS
# requests are always open, about half of them on each replica (least_conn), when one dies.
CLIENTS = 6
PAIRS_PER_REQUEST = 128  # work enough that a run is a few hundred requests, not thousands
ANSWERED_BEFORE_THE_KILL = 100
# Load goes on this long after the kill: past nginx's fail_timeout (10 s), when nginx tries the
# dead replica again, so that retry is under load too.
SECONDS_AFTER_THE_KILL = 12
MAX_REQUESTS = 3000  # a bound, whatever the timing
PAIRS = [
    {"premise": premise, "hypothesis": hypothesis}
    for premise, hypothesis in itertools.islice(itertools.cycle(SAMPLE_PAIRS), PAIRS_PER_REQUEST)
]


@dataclass
class Outcome:
    request_id: str
    started: float
    finished: float
    status: int | None  # None: no HTTP answer at all (connection error, timeout)


def _replica(services: Services, model_dir: Path, logs: Path) -> RunningService:
    # No result cache: every request computes (a cached answer would leave nothing in flight).
    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=2, NLI_THREADS=4, NLI_CACHE_SIZE=0, NLI_LOG_DIR=logs)
    return services.start(GUNICORN, env, own_process_group=True)


def _answered_ids(replica: RunningService) -> set[str]:
    """Request ids of the requests this replica answered with 200 (its own access records)."""
    log = Path(replica.env["NLI_LOG_DIR"]) / "nli_service.log"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return {r["request_id"] for r in records if r.get("path") == "/batch-predict" and r.get("status") == 200}


class Load:
    """Clients sending /batch-predict through nginx, each request with its own X-Request-ID, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: list[Outcome] = []
        self.stopped = threading.Event()
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def answered(self) -> int:
        with self._lock:
            return sum(outcome.status == 200 for outcome in self.outcomes)

    def client(self) -> None:
        with requests.Session() as session:
            while not self.stopped.is_set():
                with self._lock:
                    number = next(self._numbers)
                if number >= MAX_REQUESTS:
                    return
                request_id = f"lb-{number}"
                started = time.monotonic()
                try:
                    response = session.post(
                        f"{self.url}/batch-predict",
                        json={"pairs": PAIRS},
                        headers={"X-Request-ID": request_id},
                        timeout=30,
                    )
                    status: int | None = response.status_code
                except requests.RequestException:
                    status = None
                with self._lock:
                    self.outcomes.append(Outcome(request_id, started, time.monotonic(), status))


def test_kill_9_of_a_replica_under_load_fails_no_request_after_those_in_flight(
    services: Services, model_dir: Path, tmp_path: Path
) -> None:
    victim, survivor = (_replica(services, model_dir, tmp_path / name) for name in ("victim", "survivor"))
    for replica in (victim, survivor):
        replica.wait_ready()
    victim_port, survivor_port = (int(replica.env["NLI_PORT"]) for replica in (victim, survivor))
    wait_for(lambda: len(worker_pids(victim.process.pid)) == 2, 30, "the victim's two workers")
    victim_workers = worker_pids(victim.process.pid)

    with nginx_in_front([victim_port, survivor_port], tmp_path / "nginx") as url:
        load = Load(url)
        with ThreadPoolExecutor(CLIENTS) as pool:
            clients = [pool.submit(load.client) for _ in range(CLIENTS)]
            try:
                wait_for(lambda: load.answered() >= ANSWERED_BEFORE_THE_KILL, 60, "the load before the kill")
                killed_at = time.monotonic()
                os.killpg(victim.process.pid, signal.SIGKILL)  # the master and its workers at once
                time.sleep(SECONDS_AFTER_THE_KILL)
            finally:
                load.stopped.set()
            for client in clients:
                client.result(timeout=60)
        nginx_log = {record["request_id"]: record for record in access_records(tmp_path / "nginx")}

    assert victim.process.wait(10) == -signal.SIGKILL
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in victim_workers), 10, "the workers gone")

    before = [o for o in load.outcomes if o.finished < killed_at]
    in_flight = [o for o in load.outcomes if o.started <= killed_at <= o.finished]
    after = [o for o in load.outcomes if o.started > killed_at]
    failed = [o for o in load.outcomes if o.status != 200]
    victim_answered, survivor_answered = _answered_ids(victim), _answered_ids(survivor)

    # Both replicas shared the load before the kill (else the kill would prove nothing).
    assert {o.request_id for o in before} & victim_answered and {o.request_id for o in before} & survivor_answered
    # Requests were in flight on the victim when it died; a failure can only be one of those.
    victim_address = f"127.0.0.1:{victim_port}"
    on_the_victim = [o for o in in_flight if nginx_log[o.request_id]["upstream_addr"].startswith(victim_address)]
    assert on_the_victim, "no request was in flight on the victim: the kill tested nothing in flight"
    assert all(o in on_the_victim for o in failed), [o for o in failed if o not in on_the_victim]
    # After the kill: every request answered, and by the survivor (its own record says so).
    assert len(after) >= 50, len(after)
    assert [o for o in after if o.status != 200] == []
    assert {o.request_id for o in after} <= survivor_answered
    survivor_address = f"127.0.0.1:{survivor_port}"
    assert all(nginx_log[o.request_id]["upstream_addr"].endswith(survivor_address) for o in after)
    retried = [r for r in nginx_log.values() if "," in r["upstream_addr"]]
    latency = sorted(o.finished - o.started for o in load.outcomes)[len(load.outcomes) // 2]
    print(
        f"kill -9 under load: {len(load.outcomes)} requests (median {latency * 1000:.0f} ms), "
        f"{len(in_flight)} in flight at the kill ({len(on_the_victim)} on the victim), "
        f"{len(failed)} failed, {len(after)} sent after it (all 200, all by the survivor); "
        f"nginx passed {len(retried)} on from the dead replica"
    )
