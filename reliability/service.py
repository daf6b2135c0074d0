"""A real Gunicorn service for the reliability runs, and what /proc says about its workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = PROJECT_ROOT / "nli_service" / "models" / "nli-minilm-l6"
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def service_env(**settings: object) -> dict[str, str]:
    """The environment without any NLI_*/PROMETHEUS_* setting of the caller, on free loopback ports."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("NLI_", "PROMETHEUS_"))}
    env.update({"NLI_HOST": "127.0.0.1", "NLI_PORT": str(free_port()), "NLI_METRICS_PORT": str(free_port())})
    env.update({key: str(value) for key, value in settings.items()})
    return env


class Service:
    """Gunicorn as ``make run`` starts it (``gunicorn -c gunicorn.conf.py wsgi:app``), output in a file.

    Has the attributes the chaos scenarios use (``process``, ``env``, ``url``, ``metrics_url``,
    ``output()``), as tests/serving.py's ``RunningService`` does.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.output_file = tempfile.NamedTemporaryFile("w+", prefix="nli-reliability-", suffix=".out")  # noqa: SIM115
        self.process = subprocess.Popen(
            GUNICORN, cwd=PROJECT_ROOT, env=env, stdout=self.output_file, stderr=subprocess.STDOUT
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['NLI_PORT']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.env['NLI_METRICS_PORT']}/metrics"

    def wait_ready(self, workers: int, timeout: float = 180) -> None:
        """Until /ready answers 200 and all ``workers`` are forked (then a moment for their warm-up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}: {self.output()[-3000:]}")
            try:
                ready = requests.get(f"{self.url}/ready", timeout=2).status_code == 200
            except requests.RequestException:
                ready = False
            if ready and len(worker_pids(self.process.pid)) >= workers:
                time.sleep(2)
                return
            time.sleep(0.2)
        raise TimeoutError(f"service not ready after {timeout} s")

    def output(self) -> str:
        self.output_file.flush()
        return Path(self.output_file.name).read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def worker_pids(master_pid: int) -> set[int]:
    """The Gunicorn master's child processes (its workers)."""
    try:
        return {int(pid) for pid in Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()}
    except OSError:
        return set()


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (VmRSS), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def established_connections(pid: int, port: int) -> int:
    """Accepted TCP connections on local ``port`` that ``pid`` holds open (its requests in flight)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return 0
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] != "0A" and fields[9] in inodes:  # 0A: LISTEN
                count += 1
    return count


def scrape(metrics_url: str) -> dict[str, float]:
    """Prometheus text format as {'name{labels}': value}."""
    samples: dict[str, float] = {}
    for line in requests.get(metrics_url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        base, _, label_text = key.partition("{")
        if base == name and all(f'{label}="{wanted}"' in label_text for label, wanted in labels.items()):
            total += value
    return total
