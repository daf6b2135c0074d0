"""Operational promises of the service: the metrics directory, worker deaths, the metrics
port, the guide's command line, and the timeouts Gunicorn is given."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import engine_of
from model_factory import SAMPLE_PAIRS
from serving import GUNICORN, PROJECT_ROOT, free_port, metric_sum, scrape, service_env, wait_for

PAIR = {"premise": SAMPLE_PAIRS[0][0], "hypothesis": SAMPLE_PAIRS[0][1]}


def worker_pids(master_pid: int) -> set[int]:
    """The Gunicorn master's child processes (its workers)."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return {int(pid) for pid in children}


def listening_ports(pids: set[int]) -> set[int]:
    """TCP ports on which any of ``pids`` holds a listening socket."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_address, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                ports.add(int(local_address.rpartition(":")[2], 16))
    return ports


def service_ports(service) -> set[int]:
    master = service.process.pid
    return listening_ports({master} | worker_pids(master))


def in_flight(service) -> float:
    return metric_sum(scrape(service.metrics_url), "nli_requests_in_flight")


def predict_count(service) -> float:
    return metric_sum(scrape(service.metrics_url), "nli_request_total", endpoint="/predict", status="200")


HELD_CONF = """\
from nli_service.server.gunicorn_conf import *  # noqa: F403 -- the real settings and hooks
import os
import time
from pathlib import Path
from nli_service.inference.engine import NLIEngine

_encode = NLIEngine.encode


def _held_encode(self, pairs):
    for pair in pairs:  # a premise "HOLD <name>" waits until the test creates GATES_DIR/<name>
        if pair.premise.startswith("HOLD "):
            gate, give_up = Path(os.environ["GATES_DIR"]) / pair.premise.split()[1], time.monotonic() + 15
            while not gate.exists() and time.monotonic() < give_up:
                time.sleep(0.01)
    return _encode(self, pairs)


NLIEngine.encode = _held_encode
"""


class HeldRequest:
    """A /predict that stays in flight inside a worker until :meth:`finish` releases it."""

    def __init__(self, service, name: str) -> None:
        self.gate = Path(service.env["GATES_DIR"]) / name
        body = json.dumps({"premise": f"HOLD {name}", "hypothesis": "A person plays music."}).encode()
        head = (
            "POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        self.sock = socket.create_connection(("127.0.0.1", int(service.env["NLI_PORT"])), timeout=20)
        self.sock.sendall(head + body)

    def finish(self) -> bytes:
        self.gate.touch()
        return self.read()

    def read(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        received = b""
        try:
            while chunk := self.sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received

    def close(self) -> None:
        self.gate.touch()
        self.sock.close()


def seeded_metrics_dir(metrics_dir: Path) -> Path:
    """A PROMETHEUS_MULTIPROC_DIR in which another process counted 7 /predict answers and
    7 pairs, and left 3 requests in flight."""
    metrics_dir.mkdir()
    seed = (
        "from nli_service import metrics\n"
        "metrics.REQUESTS.labels(method='POST', endpoint='/predict', status='200').inc(7)\n"
        "metrics.PAIRS.inc(7)\n"
        "metrics.IN_FLIGHT.inc(3)\n"
    )
    seed_env = {**service_env(), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    subprocess.run([sys.executable, "-c", seed], env=seed_env, check=True, timeout=60)
    return metrics_dir


# -- the metrics directory -------------------------------------------------------------


def test_a_given_metrics_directory_is_emptied_at_start(model_dir: Path, tmp_path: Path, services) -> None:
    metrics_dir = seeded_metrics_dir(tmp_path / "prometheus")
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    assert registry.get_sample_value("nli_pairs_total") == 7, "the stale files would be added in"
    assert registry.get_sample_value("nli_requests_in_flight") == 3

    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=1, NLI_LOG_DIR=tmp_path, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    with services.running(GUNICORN, env) as service:
        samples = scrape(service.metrics_url)
        assert metric_sum(samples, "nli_request_total", endpoint="/predict") == 0
        assert metric_sum(samples, "nli_pairs_total") == 0
        assert metric_sum(samples, "nli_requests_in_flight") == 0
        for _ in range(3):
            assert requests.post(f"{service.url}/predict", json=PAIR, timeout=10).status_code == 200
        assert predict_count(service) == 3
        assert metric_sum(scrape(service.metrics_url), "nli_pairs_total") == 3
        assert any(metrics_dir.glob("counter_*.db")), "the service counts in the directory it was given"


def test_a_scrape_racing_a_starting_workers_new_metrics_file_still_succeeds(tmp_path: Path, monkeypatch) -> None:
    """A worker's first count creates its file empty, then sizes it: a scrape in between must
    not fail (it used to: struct.error, a 500 from /metrics)."""
    from prometheus_client import generate_latest

    from nli_service.server import metrics_exporter

    metrics_dir = seeded_metrics_dir(tmp_path / "prometheus")
    (metrics_dir / "counter_4194000.db").touch()  # just created by a starting worker
    (metrics_dir / "gauge_livesum_4194000.db").touch()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    exposition = generate_latest(metrics_exporter.export_registry()).decode()
    assert "nli_pairs_total 7.0" in exposition.splitlines()
    assert "nli_requests_in_flight 3.0" in exposition.splitlines()


# -- a worker that dies --------------------------------------------------------------


@pytest.fixture(scope="module")
def sync_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory, module_services):
    """2 sync workers (one request each at a time) whose requests can be held in flight (HELD_CONF)."""
    work = tmp_path_factory.mktemp("sync-held")
    (work / "gates").mkdir()
    (work / "held_conf.py").write_text(HELD_CONF)
    env = service_env(
        NLI_MODEL=model_dir, NLI_WORKERS=2, NLI_WORKER_CLASS="sync", NLI_LOG_DIR=work, GATES_DIR=work / "gates"
    )
    command = [sys.executable, "-m", "gunicorn", "-c", str(work / "held_conf.py"), "wsgi:app"]
    with module_services.running(command, env) as service:
        yield service


def test_a_worker_killed_in_flight_leaves_no_live_gauge_and_its_counts_stay(sync_server) -> None:
    service = sync_server  # 2 workers
    master = service.process.pid
    wait_for(lambda: len(worker_pids(master)) == 2, what="two workers")
    assert in_flight(service) == 0
    predicted_before = predict_count(service)
    first = HeldRequest(service, "first")  # occupies one worker, X
    second = None
    try:
        wait_for(lambda: in_flight(service) == 1, what="the first request in flight")
        # X is busy, so the other worker, Y, answers all of these.
        doomed = requests.get(f"{service.url}/health", timeout=10).json()["pid"]
        for _ in range(3):
            assert requests.post(f"{service.url}/predict", json=PAIR, timeout=10).status_code == 200
        second = HeldRequest(service, "second")  # only Y accepts: Y is now in flight
        wait_for(lambda: in_flight(service) == 2, what="both requests in flight")
        assert b" 200 " in first.finish().split(b"\r\n", 1)[0]  # X answers and is idle again
        wait_for(lambda: in_flight(service) == 1, what="only the second request in flight")
        assert requests.get(f"{service.url}/health", timeout=10).json()["pid"] != doomed, "Y is the busy one"
        assert predict_count(service) - predicted_before == 4

        os.kill(doomed, signal.SIGKILL)
        assert second.read() == b"", "the request in flight died with its worker"
        wait_for(
            lambda: doomed not in worker_pids(master) and len(worker_pids(master)) == 2,
            what="a replacement worker",
        )
    finally:
        first.close()
        if second is not None:
            second.close()

    for _ in range(4):
        assert requests.post(f"{service.url}/predict", json=PAIR, timeout=10).status_code == 200
    assert in_flight(service) == 0, "the dead worker's live gauge is dropped"
    assert predict_count(service) - predicted_before == 8, "the dead worker's counts stay counted"


SLOW_WARM_UP_CONF = """\
from nli_service.server.gunicorn_conf import *  # noqa: F403 -- the real settings and hooks
import os
import time
from pathlib import Path
from nli_service.inference.engine import NLIEngine

_warm_up = NLIEngine.warm_up


def _slow_warm_up(self):
    Path(os.environ["WARMING_UP_FILE"]).touch()  # tells the test the worker is in its warm-up
    time.sleep({seconds})
    _warm_up(self)


NLIEngine.warm_up = _slow_warm_up
"""


def test_a_sigterm_while_a_worker_warms_up_stops_the_server_promptly(model_dir: Path, tmp_path: Path, services) -> None:
    """Gunicorn installs a worker's own signal handlers only after ``post_fork``: a SIGTERM
    that reaches a worker still warming up there is lost, and stopping waits out graceful_timeout."""
    config = tmp_path / "slow_warm_up_conf.py"
    config.write_text(SLOW_WARM_UP_CONF.format(seconds=2))
    warming_up = tmp_path / "warming-up"
    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=1, NLI_LOG_DIR=tmp_path, WARMING_UP_FILE=warming_up)
    service = services.start([sys.executable, "-m", "gunicorn", "-c", str(config), "wsgi:app"], env)  # graceful: 35 s
    try:
        wait_for(
            lambda: service.process.poll() is not None or warming_up.exists(), timeout=90, what="a worker warming up"
        )
        assert service.process.poll() is None, service.output()
        service.process.send_signal(signal.SIGTERM)  # the worker is in its 2 s warm-up
        try:
            code = service.process.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail("still stopping 15 s after SIGTERM: the warming-up worker missed it")
        assert code == 0, service.output()
    finally:
        service.stop()


# -- the metrics port ----------------------------------------------------------------


def test_metrics_port_zero_serves_without_any_metrics_port(model_dir: Path, tmp_path: Path, services) -> None:
    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=1, NLI_LOG_DIR=tmp_path)
    would_be_metrics_port = env["NLI_METRICS_PORT"]  # free, and what the service would otherwise use
    env["NLI_METRICS_PORT"] = "0"
    with services.running(GUNICORN, env) as service:  # /ready answered 200
        assert requests.post(f"{service.url}/predict", json=PAIR, timeout=10).status_code == 200
        assert service_ports(service) == {int(env["NLI_PORT"])}, "no port besides the HTTP one, not even a random one"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{would_be_metrics_port}/metrics", timeout=2)


def test_inference_seconds_counts_every_forward_pass(tiny_server) -> None:
    # pairs no other test sends: the result cache cannot answer them
    single, *four = [{**PAIR, "hypothesis": f"{PAIR['hypothesis']} {n}"} for n in range(5)]
    before = scrape(tiny_server.metrics_url)
    assert requests.post(f"{tiny_server.url}/predict", json=single, timeout=10).status_code == 200
    batch = requests.post(f"{tiny_server.url}/batch-predict", json={"pairs": four}, timeout=10)
    assert batch.status_code == 200
    after = scrape(tiny_server.metrics_url)

    def delta(name: str, **labels: str) -> float:
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    assert delta("nli_inference_seconds_count") == 2, "one forward pass each (4 pairs fit one batch)"
    assert delta("nli_inference_seconds_bucket", le="+Inf") == 2
    assert delta("nli_inference_seconds_sum") > 0
    assert delta("nli_batch_pairs_sum") == 5


# -- the request deadline in-process -------------------------------------------------


@pytest.mark.parametrize("status", [200, 500])
def test_the_alarm_is_disarmed_after_a_200_and_a_500_and_the_services_handler_stays(
    make_app, monkeypatch, status: int
) -> None:
    from nli_service.serving.deadline import ALARM

    app = make_app()
    engine = engine_of(app)
    original = engine.forward
    during: list[tuple[object, float]] = []

    def forward(encoded, chunk):
        during.append((signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)[0]))
        if status == 500:
            raise RuntimeError("the forward pass failed")
        return original(encoded, chunk)

    def previous_handler(signum, frame):  # stands for whatever handler the process had
        raise AssertionError("the request's alarm reached the previous handler")

    monkeypatch.setattr(engine, "forward", forward)
    handler_at_start = signal.signal(signal.SIGALRM, previous_handler)
    try:
        response = app.test_client().post("/predict", json=PAIR)
        assert response.status_code == status, response.get_data(as_text=True)
        assert response.get_json().get("status", 200) == status
        handler_after, timer_after = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, handler_at_start)
    assert len(during) == 1
    handler_during, timer_during = during[0]
    assert handler_during == ALARM.on_alarm and 0 < timer_during <= 30, "the request ran under SIGALRM"
    # One handler for the worker's life: an alarm arriving late finds it, not the default action (which kills).
    assert handler_after == ALARM.on_alarm
    assert timer_after == (0.0, 0.0)
    monkeypatch.undo()
    assert app.test_client().post("/predict", json=PAIR).status_code == 200


# -- the guide's command line ----------------------------------------------------------


def test_the_guides_command_line_reads_gunicorn_conf_py_and_gets_the_hooks(
    model_dir: Path, tmp_path: Path, services
) -> None:
    env = service_env(NLI_MODEL=model_dir, NLI_LOG_DIR=tmp_path)  # NLI_WORKERS, NLI_PORT: overridden by -w, -b
    bind_port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{bind_port}", "app:app"]
    service = services.start(command, env)  # from the project root, where ./gunicorn.conf.py is
    service.env = {**env, "NLI_PORT": str(bind_port)}
    try:
        service.wait_ready()
        wait_for(lambda: len(worker_pids(service.process.pid)) == 2, what="two workers (-w 2)")
        assert service_ports(service) == {bind_port, int(env["NLI_METRICS_PORT"])}, "the when_ready hook ran"
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda _: requests.post(f"{service.url}/predict", json=PAIR, timeout=20), range(12))
            )
        assert all(answer.status_code == 200 for answer in answers)
        samples = scrape(service.metrics_url)
        assert metric_sum(samples, "nli_request_total", endpoint="/predict", status="200") == 12
        assert metric_sum(samples, "nli_model_load_seconds") > 0
    finally:
        assert service.stop() == 0


# -- Gunicorn's timeouts ---------------------------------------------------------------


GUNICORN_CONFIG_PROBE = """\
import json, os, sys
from gunicorn.app.base import Application


class Probe(Application):  # reads a config file the way `gunicorn -c` does; loads no app
    def load_config(self):
        self.load_config_from_file("gunicorn.conf.py")

    def load(self):
        raise AssertionError("not served")


seen = {}
for request_timeout in sys.argv[1:]:
    os.environ["NLI_REQUEST_TIMEOUT"] = request_timeout
    sys.modules.pop("nli_service.server.gunicorn_conf", None)  # gunicorn.conf.py re-exports it
    cfg = Probe().cfg
    seen[request_timeout] = [cfg.timeout, cfg.graceful_timeout]
print(json.dumps(seen))
"""


def test_gunicorn_is_configured_to_wait_longer_than_the_request_deadline(tmp_path: Path) -> None:
    """What Gunicorn itself reads from gunicorn.conf.py: its worker timeout (after which it kills
    a busy worker) exceeds the request deadline, and SIGTERM waits out a whole deadline. The
    behaviour itself: test_gunicorn.py::test_a_slow_request_is_408_and_the_worker_keeps_serving."""
    deadlines = ["0.2", "1", "29.5", "30", "600"]
    env = {**service_env(PROMETHEUS_MULTIPROC_DIR=tmp_path / "prometheus"), "PYTHONPATH": str(PROJECT_ROOT)}
    probe = [sys.executable, "-c", GUNICORN_CONFIG_PROBE, *deadlines]
    result = subprocess.run(probe, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    for deadline in deadlines:
        worker_timeout, graceful_timeout = seen[deadline]
        assert worker_timeout > float(deadline) + 5, f"NLI_REQUEST_TIMEOUT={deadline}: timeout {worker_timeout}"
        assert graceful_timeout >= float(deadline), f"NLI_REQUEST_TIMEOUT={deadline}: graceful {graceful_timeout}"
    assert seen["0.2"] != seen["600"], "the timeouts follow NLI_REQUEST_TIMEOUT"
