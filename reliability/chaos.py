"""``make chaos``: faults and attacks against a real 4-worker Gunicorn service under load.

1. **Attacks while serving**: a flood of stalled clients (connections that send part of their
   headers and stop) and the zero-shot template attacks (``{{}}{.AAAA}``, ``{{}}{:>3000000}``,
   ``{:>300000000}``). Every attack gets its 4xx (400 at once; the stalled ones 408 after
   ``NLI_CLIENT_TIMEOUT``), ``/health`` answers in < 1 s throughout, the legitimate clients get
   only 200s, and no worker dies.
2. **kill -9 of one of the 4 workers**: only the requests in flight on it fail (counted from its
   open connections, with the worker stopped by SIGSTOP just before the SIGKILL), and full
   capacity is back in < 10 s: 4 live workers, the new one answering, and throughput back to
   ≥ 90 % of what it was before.
3. **SIGTERM to the master**: every accepted request is answered (connection refused once the
   listener is closed is fine; a reset or a closed connection without an answer is not), and
   the master exits 0.

Then the goodput run (``reliability/goodput.py``) unless ``--no-goodput``. Prints a table,
writes the ``## Chaos`` section of docs/reliability.md (``--no-write``: not), exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

from reliability.report import table, write_section
from reliability.service import BUNDLED_MODEL, Service, established_connections, service_env, worker_pids

PAIR_BODY = b'{"premise": "A man plays a guitar on the street.", "hypothesis": "A person plays music."}'
STALLED_HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
TEMPLATE_ATTACKS = ("{{}}{.AAAA}", "{{}}{:>3000000}", "{:>300000000}")
HEALTH_LIMIT = 1.0
ATTACK_ANSWER_LIMIT = 1.0  # seconds for a template attack's 400
RECOVERY_LIMIT = 10.0
CAPACITY_SHARE = 0.9


class ServiceLike(Protocol):
    """What a scenario needs of a service: reliability.service.Service or tests/serving.py's RunningService."""

    process: Any
    env: dict[str, str]

    @property
    def url(self) -> str: ...


def _port(service: ServiceLike) -> int:
    return int(service.env["NLI_PORT"])


def one_request(port: int, body: bytes = PAIR_BODY, path: str = "/predict", timeout: float = 30) -> str:
    """One request on a fresh connection: its status, or how it failed (refused, reset, no answer)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionRefusedError:
        return "refused"
    except OSError as error:
        return f"connect: {type(error).__name__}"
    with sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        try:
            sock.sendall(head.encode() + b"\r\nConnection: close\r\n\r\n" + body)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except TimeoutError:
            return "timeout"
        return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "no answer"


@dataclass
class Load:
    """``clients`` threads sending /predict on fresh connections until stopped; (time, outcome) of each."""

    port: int
    clients: int = 8
    events: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            outcome = one_request(self.port)
            with self._lock:
                self.events.append((time.monotonic(), outcome))
            if outcome == "refused":
                self.stop.wait(0.05)  # the listener is gone: do not spin

    def outcomes(self, start: float = 0.0, end: float = float("inf")) -> Counter[str]:
        with self._lock:
            return Counter(outcome for at, outcome in self.events if start <= at < end)

    def rate(self, start: float, end: float) -> float:
        """200s answered per second in [start, end)."""
        return self.outcomes(start, end)["200"] / max(end - start, 1e-6)

    def finish(self) -> Counter[str]:
        self.stop.set()
        for thread in self._threads:
            thread.join(40)
        return self.outcomes()


def _health_seconds(url: str) -> float:
    started = time.monotonic()
    try:
        ok = requests.get(f"{url}/health", timeout=10).status_code == 200
    except requests.RequestException:
        ok = False
    return time.monotonic() - started if ok else float("inf")


def _stall(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(STALLED_HEAD)
    return sock


def _template_attack(url: str, template: str) -> tuple[int, float]:
    body = {"text": "The new phone has a great camera.", "labels": ["tech", "sport"], "hypothesis_template": template}
    started = time.monotonic()
    status = requests.post(f"{url}/zero-shot", json=body, timeout=30).status_code
    return status, time.monotonic() - started


def attacks(service: ServiceLike, stalled: int = 300, client_timeout: float = 5.0, clients: int = 8) -> dict:
    """Stalled-client flood and template attacks while ``clients`` legitimate clients are served."""
    port, master = _port(service), service.process.pid
    workers_before = worker_pids(master)
    load = Load(port, clients)
    time.sleep(1.0)  # the legitimate load runs before the attacks start
    started = time.monotonic()
    sockets = [_stall(port) for _ in range(stalled)]
    flood_open = time.monotonic() - started
    health: list[float] = []
    with ThreadPoolExecutor(len(TEMPLATE_ATTACKS) * 3) as pool:
        answers = list(pool.map(lambda t: _template_attack(service.url, t), TEMPLATE_ATTACKS * 3))
    while time.monotonic() - started < client_timeout + 1.0:
        health.append(_health_seconds(service.url))
        time.sleep(0.2)
    stalled_answers: Counter[str] = Counter()
    stalled_latest = 0.0
    for sock in sockets:
        sock.settimeout(max(0.1, started + client_timeout + 5.0 - time.monotonic()))
        try:
            answer = sock.recv(65536)
            stalled_latest = max(stalled_latest, time.monotonic() - started)
            stalled_answers[answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"] += 1
        except TimeoutError:
            stalled_answers["no answer in time"] += 1
        except OSError as error:
            stalled_answers[type(error).__name__] += 1
        finally:
            sock.close()
    ended = time.monotonic()
    health.append(_health_seconds(service.url))
    legitimate = load.outcomes(started, ended)
    load.finish()
    workers_after = worker_pids(master)
    failures = []
    attack_statuses = Counter(str(status) for status, _ in answers)
    slowest_attack = max(seconds for _, seconds in answers)
    if set(attack_statuses) != {"400"}:
        failures.append(f"template attacks answered {dict(attack_statuses)}, expected only 400")
    if slowest_attack >= ATTACK_ANSWER_LIMIT:
        failures.append(f"a template attack took {slowest_attack:.2f} s")
    if set(stalled_answers) != {"408"}:
        failures.append(f"stalled clients got {dict(stalled_answers)}, expected only 408")
    if stalled_latest > client_timeout + 3.0:
        failures.append(f"the last stalled client got its answer after {stalled_latest:.1f} s")
    if max(health) >= HEALTH_LIMIT:
        failures.append(f"/health took {max(health):.2f} s during the flood")
    if legitimate["200"] == 0 or set(legitimate) != {"200"}:
        failures.append(f"legitimate clients got {dict(legitimate)} during the attacks")
    if workers_after != workers_before:
        failures.append(f"workers changed: {sorted(workers_before)} -> {sorted(workers_after)}")
    rows = [
        ("stalled clients (partial headers)", f"{stalled} opened in {flood_open:.2f} s",
         _counts(stalled_answers),
         f"last answer {stalled_latest:.1f} s after the flood began (NLI_CLIENT_TIMEOUT {client_timeout:g} s)"),
        ("template attacks " + ", ".join(f"`{t}`" for t in TEMPLATE_ATTACKS), f"{len(answers)} requests",
         _counts(attack_statuses), f"slowest answer {slowest_attack * 1000:.0f} ms"),
        ("`/health` during the flood", f"{len(health)} probes", "all 200" if max(health) < float("inf") else "failed",
         f"max {max(health) * 1000:.0f} ms (limit {HEALTH_LIMIT * 1000:.0f} ms)"),
        (f"legitimate clients ({clients} threads, /predict)", f"{sum(legitimate.values())} requests",
         _counts(legitimate),
         f"workers before/after: {len(workers_before)}/{len(workers_after)}, "
         f"same pids: {workers_after == workers_before}"),
    ]  # fmt: skip
    return {"name": "attacks while serving", "failures": failures, "rows": rows}


def kill_worker(service: ServiceLike, clients: int = 8, workers: int = 4, measure: float = 5.0) -> dict:
    """kill -9 one worker under load: failures ≤ its requests in flight; capacity back in < 10 s."""
    port, master = _port(service), service.process.pid
    load = Load(port, clients)
    time.sleep(1.0)
    before_from = time.monotonic()
    time.sleep(measure)
    baseline = load.rate(before_from, time.monotonic())
    before = worker_pids(master)
    victim = max(before)
    os.kill(victim, signal.SIGSTOP)  # it takes no more connections while its own are counted
    in_flight = established_connections(victim, port)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    back_at = answered_at = None
    new_pid = None
    recovered_at = None
    window = min(3.0, measure)
    while time.monotonic() - killed_at < 30:
        now = time.monotonic()
        pids = worker_pids(master)
        if back_at is None and len(pids) == workers and victim not in pids:
            back_at, new_pid = now, max(pids - before)
        if new_pid is not None and answered_at is None and _answers_from(service.url, new_pid):
            answered_at = time.monotonic()
        if (
            answered_at is not None
            and now - killed_at >= window
            and load.rate(now - window, now) >= CAPACITY_SHARE * baseline
        ):
            recovered_at = now
            break
        time.sleep(0.1)
    settle = time.monotonic()
    time.sleep(measure)
    after = load.rate(settle, time.monotonic())
    load.finish()
    failed = {k: v for k, v in load.outcomes(killed_at - 1.0).items() if k != "200"}
    failures = []
    if sum(failed.values()) > in_flight:
        failures.append(f"{sum(failed.values())} requests failed, but only {in_flight} were in flight on the worker")
    if recovered_at is None or recovered_at - killed_at >= RECOVERY_LIMIT:
        seconds = "never" if recovered_at is None else f"{recovered_at - killed_at:.1f} s"
        failures.append(f"full capacity back after {seconds} (limit {RECOVERY_LIMIT:g} s)")
    if len(worker_pids(master)) != workers:
        failures.append(f"{len(worker_pids(master))} workers at the end")
    rows = [
        ("kill -9 of 1 of 4 workers", f"{clients} clients, fresh connections",
         f"{in_flight} in flight on it; {sum(failed.values())} failed ({_counts(Counter(failed)) or 'none'})",
         f"4 workers again {_after(back_at, killed_at)}, new worker answering {_after(answered_at, killed_at)}, "
         f"≥ 90 % throughput {_after(recovered_at, killed_at)}; {baseline:.1f} req/s before, {after:.1f} after"),
    ]  # fmt: skip
    figures = {"in_flight": in_flight, "failed": failed, "baseline": baseline, "after": after}
    figures["recovery_s"] = None if recovered_at is None else recovered_at - killed_at
    return {"name": "kill -9 a worker", "failures": failures, "rows": rows, "figures": figures}


def _answers_from(url: str, pid: int, tries: int = 8) -> bool:
    """Whether ``pid`` answers /health (fresh connections: the least loaded worker, a new one, takes them)."""
    for _ in range(tries):
        try:
            response = requests.get(f"{url}/health", timeout=2, headers={"Connection": "close"})
            if response.json().get("pid") == pid and requests.get(f"{url}/ready", timeout=2).status_code == 200:
                return True
        except (requests.RequestException, ValueError):
            pass
    return False


def wait_for_workers(service: ServiceLike, workers: int, timeout: float = 60) -> None:
    """Until the master has ``workers`` workers and they have had a moment to warm up."""
    deadline = time.monotonic() + timeout
    while len(worker_pids(service.process.pid)) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {workers} workers after {timeout} s")
        time.sleep(0.1)
    time.sleep(2.0)


def _after(at: float | None, since: float) -> str:
    return "never" if at is None else f"after {at - since:.1f} s"


def sigterm_master(service: ServiceLike, clients: int = 8, drain_seconds: float = 5.0) -> dict:
    """SIGTERM to the master under load: every accepted request answered, exit 0."""
    port = _port(service)
    load = Load(port, clients)
    time.sleep(2.0)
    signalled = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    try:
        code = service.process.wait(drain_seconds + 60)
    except Exception:  # noqa: BLE001 - reported below
        code = None
    stopped = time.monotonic()
    time.sleep(0.5)
    outcomes = load.finish()
    during = load.outcomes(signalled, stopped)
    lost = {k: v for k, v in outcomes.items() if k not in ("200", "refused")}
    failures = []
    if lost:
        failures.append(f"accepted requests without an answer: {lost}")
    if code != 0:
        failures.append(f"master exited with {code}")
    if during["200"] == 0:
        failures.append("no request was served after the SIGTERM")
    rows = [
        ("SIGTERM to the master", f"{clients} clients, fresh connections",
         f"{_counts(outcomes)}; lost: {sum(lost.values())}",
         f"{during['200']} answered 200 after the signal; stopped in {stopped - signalled:.1f} s "
         f"(drain {drain_seconds:g} s), exit {code}"),
    ]  # fmt: skip
    return {"name": "SIGTERM the master", "failures": failures, "rows": rows}


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in sorted(counter.items()))


HEADER = ("scenario", "load / attack", "outcomes", "figures")


def run(args: argparse.Namespace) -> int:
    work = tempfile.mkdtemp(prefix="nli-chaos-")
    # The result cache off: the clients repeat their pairs, and capacity means the model's.
    env = service_env(NLI_MODEL=args.model, NLI_WORKERS=4, NLI_LOG_DIR=os.path.join(work, "logs"), NLI_CACHE_SIZE=0)
    env["NLI_CLIENT_TIMEOUT"] = str(args.client_timeout)
    results = []
    service = Service(env)
    try:
        service.wait_ready(workers=4)
        print(f"service ready: 4 workers {sorted(worker_pids(service.process.pid))}", flush=True)
        for scenario in (
            lambda: attacks(service, args.stalled, args.client_timeout, args.clients),
            lambda: kill_worker(service, args.clients),
            lambda: sigterm_master(service, args.clients, drain_seconds=5.0),
        ):
            result = scenario()
            print(table(HEADER, result["rows"]), flush=True)
            for failure in result["failures"]:
                print(f"  FAILED: {failure}", flush=True)
            results.append(result)
    finally:
        service.stop()
    rows = [row for result in results for row in result["rows"]]
    failures = [f"{result['name']}: {failure}" for result in results for failure in result["failures"]]
    goodput_result = None
    if args.goodput:
        from reliability import goodput

        goodput_result = goodput.run(goodput.parse([f"--seconds={args.goodput_seconds}", "--no-write"]))
        failures += [f"goodput: {failure}" for failure in goodput_result["failures"]]
    print("\n" + table(HEADER, rows))
    if args.write:
        write_section("Chaos", chaos_section(rows, failures, args))
        if goodput_result is not None:
            write_section("Goodput", goodput.section(goodput_result))
        print("wrote docs/reliability.md (## Chaos" + (", ## Goodput)" if goodput_result else ")"))
    if failures:
        print("CHAOS FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("CHAOS PASSED")
    return 0


def chaos_section(rows: list[tuple], failures: list[str], args: argparse.Namespace) -> str:
    verdict = "**passed**" if not failures else "**failed**: " + "; ".join(failures)
    model = "the bundled model" if str(args.model) == str(BUNDLED_MODEL) else f"`{args.model}`"
    return "\n".join([
        f"`make chaos` (`python -m reliability.chaos`): a real Gunicorn service with 4 workers (gthread, "
        f"16 threads each, result cache off) serving {model}, {args.clients} client threads sending "
        "`/predict` on fresh connections throughout, and in turn: a flood of stalled clients with the "
        "zero-shot template attacks; `kill -9` of one worker (stopped with SIGSTOP first, so its open connections, the "
        "requests in flight on it, can be counted); SIGTERM to the master (default 5 s drain). Rules: "
        "each attack gets its 4xx (template: 400 in < 1 s; stalled: 408 at NLI_CLIENT_TIMEOUT), "
        "`/health` < 1 s throughout, legitimate clients only 200, no worker dies; after the kill no more "
        "failures than requests in flight on the killed worker, and in < 10 s 4 workers again, the new "
        "one answering `/health` and `/ready`, and throughput over 3 s back to ≥ 90 % of the 5 s before (so "
        "3.1 s is the soonest it can show); "
        "after SIGTERM no accepted request reset or closed unanswered (refused after the listener "
        "closed is fine) and exit 0.",
        "",
        f"Result: {verdict}.",
        "",
        table(HEADER, rows),
        "",
        "`tests/test_chaos.py` runs the same three scenarios (smaller: 40 stalled clients, 2 s client "
        "timeout, the tiny test model) in `make test`.",
    ])  # fmt: skip


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(BUNDLED_MODEL), help="NLI_MODEL (default: the bundled model)")
    parser.add_argument("--clients", type=int, default=8, help="legitimate client threads")
    parser.add_argument("--stalled", type=int, default=300, help="stalled connections in the flood")
    parser.add_argument("--client-timeout", type=float, default=5.0, help="NLI_CLIENT_TIMEOUT")
    parser.add_argument("--no-goodput", dest="goodput", action="store_false", help="skip the goodput run")
    parser.add_argument("--goodput-seconds", type=float, default=60.0)
    parser.add_argument("--no-write", dest="write", action="store_false", help="do not write docs/reliability.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run(parse(argv))


if __name__ == "__main__":
    sys.exit(main())
