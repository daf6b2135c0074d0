"""Fuzz a running Gunicorn service with schemathesis, then check that it came through whole.

After the requests: the master has the same workers as before (none died and was replaced),
``/health`` answers 200, and the service's output since the start of the run shows no traceback,
no worker time-out, no killed or exited worker and no worker booted anew.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import requests

from fuzz import api

DEATH_MARKERS = ("Traceback", "WORKER TIMEOUT", "was sent SIG", "exited with code", "Booting worker")


def workers_of(master: int) -> set[int]:
    """The pids of the master's children (its workers)."""
    children = Path(f"/proc/{master}/task/{master}/children")
    return {int(pid) for pid in children.read_text().split()} if children.exists() else set()


def wait_for_workers(master: int, count: int, timeout: float = 60) -> set[int]:
    deadline = time.monotonic() + timeout
    while len(workers := workers_of(master)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(workers)} of {count} workers after {timeout} s")
        time.sleep(0.1)
    time.sleep(1)  # the last worker's warm-up
    return workers_of(master)


def fuzz_service(
    url: str,
    master: int,
    workers: int,
    output: Callable[[], str],
    examples: int,
    get_examples: int | None = None,
    secrets: Iterable[str] = (),
    seed: int | None = None,
    on_found: Callable[[api.Found], None] | None = None,
) -> tuple[api.Report, list[str]]:
    """The schemathesis report, and what went wrong with the service itself during the run."""
    before = wait_for_workers(master, workers)
    seen = len(output())
    report = api.run(url, examples, secrets=secrets, seed=seed, get_examples=get_examples, on_found=on_found)
    problems = []
    after = workers_of(master)
    if after != before:
        problems.append(f"workers changed: {sorted(before)} before, {sorted(after)} after")
    try:
        health = requests.get(f"{url}/health", timeout=10)
        if health.status_code != 200:
            problems.append(f"/health answered {health.status_code} after the run")
    except requests.RequestException as error:
        problems.append(f"/health did not answer after the run: {error!r}")
    for line in output()[seen:].splitlines():
        if any(marker in line for marker in DEATH_MARKERS):
            problems.append(f"service output: {line[:300]}")
    return report, problems
