"""The metrics directory and the metrics exporter under long-running, hostile conditions.

* an operator's PROMETHEUS_MULTIPROC_DIR is never deleted, only the service's own files in it;
* 100 recycled workers leave a bounded number of files (their counts folded into archive
  files by ``child_exit``), exact totals and a bounded scrape time;
* hundreds of idle connections to the metrics port neither delay a scrape nor add threads.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, Counter, generate_latest

from nli_service.server import hooks, metrics_exporter

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- an operator's directory -------------------------------------------------------------


def test_a_given_directory_keeps_everything_but_the_services_own_files(tmp_path: Path, monkeypatch) -> None:
    given = tmp_path / "prometheus"
    given.mkdir()
    own = ["counter_123.db", "gauge_livesum_123.db", "gauge_max_77.db", "histogram_9.db", "counter_archive.db"]
    theirs = ["notes.txt", "counter.db", "counter_abc.db", "my_counter_1.db", "counter_1.db.bak"]
    for name in own + theirs:
        (given / name).write_bytes(b"x")
    (given / "sub").mkdir()
    (given / "sub" / "counter_5.db").write_bytes(b"x")
    monkeypatch.setattr(hooks, "_metrics_dir_prepared", False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))

    assert hooks.prepare_metrics_dir() == str(given)

    assert given.is_dir()
    left = sorted(path.name for path in given.iterdir())
    assert left == sorted([*theirs, "sub"])
    assert (given / "sub" / "counter_5.db").exists()


def test_a_missing_given_directory_is_made(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hooks, "_metrics_dir_prepared", False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "a" / "b"))
    hooks.prepare_metrics_dir()
    assert (tmp_path / "a" / "b").is_dir()


def test_an_unusable_given_directory_stops_the_start_with_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setattr(hooks, "_metrics_dir_prepared", False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "file" / "metrics"))
    with pytest.raises(SystemExit) as stopped:
        hooks.prepare_metrics_dir()
    assert stopped.value.code == 4
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "PROMETHEUS_MULTIPROC_DIR" in lines[0]


# -- 100 recycled workers ----------------------------------------------------------------

RECYCLES = 100

# A Gunicorn master in miniature: it forks 100 workers one after the other (each counts, observes,
# sets gauges, then exits) and runs the real child_exit hook for each, scraping after every one.
MASTER = r"""
import json, os, sys, time
from types import SimpleNamespace
from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from nli_service.server import hooks, metrics_exporter

requests_ = Counter("t_requests", "requests", ["status"])
latency = Histogram("t_latency_seconds", "latency", buckets=(0.1, 1, 10))
in_flight = Gauge("t_in_flight", "in flight", multiprocess_mode="livesum")
peak = Gauge("t_peak", "peak", multiprocess_mode="max")
low = Gauge("t_low", "low", multiprocess_mode="min")
total = Gauge("t_total", "total", multiprocess_mode="sum")
latest = Gauge("t_latest", "latest", multiprocess_mode="mostrecent")
each = Gauge("t_each", "each", multiprocess_mode="all")
registry = metrics_exporter.export_registry()
server = SimpleNamespace(log=SimpleNamespace(warning=lambda *args: print(*args, file=sys.stderr)))

def scrape():
    started = time.perf_counter()
    text = generate_latest(registry).decode()
    seconds = time.perf_counter() - started
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
    return samples, seconds

report = {"files": [], "seconds": [], "ok": [], "bad": []}
for n in range(1, %(recycles)d + 1):
    pid = os.fork()
    if pid == 0:
        requests_.labels(status="200").inc(n)
        requests_.labels(status="500").inc()
        latency.observe(0.05)
        latency.observe(5)
        in_flight.inc(2)  # left "in flight" by a worker that died
        peak.set(n)
        low.set(-n)
        total.set(1)
        latest.set(n)
        each.set(n)
        os._exit(0)
    os.waitpid(pid, 0)
    hooks.child_exit(server, SimpleNamespace(pid=pid))
    samples, seconds = scrape()
    expected = {
        't_requests_total{"status": "200"}': n * (n + 1) / 2,
        't_requests_total{"status": "500"}': n,
        't_latency_seconds_count{}': 2 * n,
        't_latency_seconds_bucket{"le": "0.1"}': n,
        't_latency_seconds_bucket{"le": "1.0"}': n,
        't_latency_seconds_bucket{"le": "10.0"}': 2 * n,
        't_latency_seconds_bucket{"le": "+Inf"}': 2 * n,
        't_latency_seconds_sum{}': n * 5.05,
        't_peak{}': n,
        't_low{}': -n,
        't_total{}': n,
        't_latest{}': n,
    }
    wrong = {k: (samples.get(k), v) for k, v in expected.items() if abs(samples.get(k, -1) - v) > 1e-6}
    each_pids = {k for k in samples if k.startswith("t_each")}  # the master's own series only
    if samples.get('t_in_flight{}', 0) != 0 or each_pids != {'t_each{"pid": "%%d"}' %% os.getpid()}:
        wrong["gauges of dead workers"] = [samples.get('t_in_flight{}'), sorted(each_pids)]
    (report["bad"] if wrong else report["ok"]).append(wrong or n)
    report["files"].append(len(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])))
    report["seconds"].append(seconds)
print(json.dumps(report))
"""


def test_a_hundred_recycled_workers_leave_bounded_files_and_exact_totals(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "operator-notes.txt").write_text("not ours")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", MASTER % {"recycles": RECYCLES}],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bad"] == [], report["bad"][:3]
    assert len(report["ok"]) == RECYCLES
    # counter, histogram and the sum/max/min/mostrecent gauges: one archive file each, plus the
    # master's own files (it made the metrics before forking: 6 gauges, 1 histogram; child_exit's
    # count of worker exits: 1 counter) and the note
    assert set(report["files"]) == {15}, report["files"]
    assert sorted(name for name in os.listdir(metrics_dir) if "_archive" in name or name.endswith(".txt")) == [
        "counter_archive.db",
        "gauge_max_archive.db",
        "gauge_min_archive.db",
        "gauge_mostrecent_archive.db",
        "gauge_sum_archive.db",
        "histogram_archive.db",
        "operator-notes.txt",
    ]
    # the scrape reads the same few files after 100 recycles as after 10
    early, late = sorted(report["seconds"][5:15])[5], sorted(report["seconds"][-10:])[5]
    assert late < max(3 * early, 0.05), (early, late)


def test_a_damaged_dead_workers_file_is_kept_and_the_hook_does_not_raise(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    damaged = tmp_path / "counter_4242.db"
    damaged.write_bytes((10**6).to_bytes(4, "little") + b"\0" * 60)  # says it holds more than it does
    empty = tmp_path / "histogram_4242.db"
    empty.touch()  # created, never sized
    metrics_exporter.mark_worker_dead(4242)
    assert damaged.exists()
    assert not empty.exists()


# -- idle connections to the exporter ----------------------------------------------------


def test_five_hundred_idle_connections_neither_delay_a_scrape_nor_add_threads() -> None:
    registry = CollectorRegistry()
    Counter("t_scraped", "scrapes", registry=registry).inc(3)
    threads_before = threading.active_count()
    server = metrics_exporter.MetricsServer(_free_port(), "127.0.0.1", registry=registry, request_timeout=1.0).start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    idle: list[socket.socket] = []
    try:
        for _ in range(500):  # well inside a 1024 descriptor limit, with the server's side
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        half_open = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        half_open.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
        idle.append(half_open)
        time.sleep(0.2)
        started = time.monotonic()
        answer = requests.get(url, timeout=5)
        seconds = time.monotonic() - started
        assert answer.status_code == 200
        assert "t_scraped_total 3.0" in answer.text
        assert seconds < 1.0, seconds
        assert threading.active_count() <= threads_before + 1 + 2  # the accepting thread and the pool
        # gzip and the name[] filter: still prometheus_client's exposition
        gzipped = requests.get(url, params={"name[]": "t_scraped_total"}, headers={"Accept-Encoding": "gzip"})
        assert gzipped.headers.get("Content-Encoding") == "gzip" and "t_scraped_total 3.0" in gzipped.text
        # an idle connection is closed after request_timeout (or sooner, to make room for new ones)
        last = idle[-2]
        last.settimeout(5)
        started = time.monotonic()
        assert last.recv(1) == b""
        assert time.monotonic() - started < 4
    finally:
        for sock in idle:
            sock.close()
        server.stop()
    assert threading.active_count() <= threads_before


def test_the_exporter_reports_a_taken_port_as_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            metrics_exporter.MetricsServer(taken.getsockname()[1], "127.0.0.1")


def test_a_scrape_of_the_real_exporter_serves_the_registry(tmp_path: Path, monkeypatch) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    server = metrics_exporter.start_exporter(_free_port(), "127.0.0.1")
    try:
        text = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
        names = {family.name for family in text_string_to_metric_families(text)}
        assert text == generate_latest(metrics_exporter.REGISTRY).decode() or names
    finally:
        server.stop()


@pytest.mark.slow  # ~10 s: five workers boot one after the other
def test_gunicorn_recycling_workers_keeps_the_metrics_directory_small_and_the_counts_exact(
    model_dir: Path, tmp_path: Path, services
) -> None:
    import serving

    metrics_dir = tmp_path / "prometheus"
    env = serving.service_env(NLI_MODEL=model_dir, NLI_WORKERS=1, NLI_MAX_REQUESTS=3, NLI_LOG_DIR=tmp_path)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    with services.running(serving.GUNICORN, env) as service:
        answered = 0
        for _ in range(15):  # ~5 workers come and go
            try:
                status = requests.post(service.url + "/predict", json={"premise": "a", "hypothesis": "b"}, timeout=10)
            except requests.ConnectionError:  # the worker was just recycling
                continue
            answered += status.status_code == 200
        # the master's own file (it made the unlabelled counters at preload) and the live worker's
        counters = lambda: sorted(path.name for path in metrics_dir.glob("counter_[0-9]*.db"))  # noqa: E731
        serving.wait_for(lambda: len(counters()) <= 2, what=f"old workers archived: {counters()}")
        samples = serving.scrape(service.metrics_url)
        assert serving.metric_sum(samples, "nli_pairs_total") == answered >= 12
        assert serving.metric_sum(samples, "nli_request_total", endpoint="/predict", status="200") == answered
        files = sorted(path.name for path in metrics_dir.iterdir())
        assert len(files) <= 12, files  # archives and the live worker's (and master's) files only
        assert "counter_archive.db" in files and "histogram_archive.db" in files
