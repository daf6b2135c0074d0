"""Start the real service for the benchmark, and measure its memory (PSS)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """A Gunicorn (or ``python app.py``) process group serving on a free loopback port."""

    def __init__(self, settings: dict[str, str], dev_server: bool = False) -> None:
        self.port = free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith(("NLI_", "PROMETHEUS_"))}
        env.update(NLI_HOST="127.0.0.1", NLI_PORT=str(self.port), NLI_METRICS_PORT="0", NLI_LOG_LEVEL="WARNING")
        env.update(settings)
        command = (
            [sys.executable, "app.py"]
            if dev_server
            else [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
        )
        self.process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{env['NLI_METRICS_PORT']}/metrics"  # port 0: none

    def wait_ready(self, workers: int, timeout: float = 180) -> None:
        """Until /ready answers and every worker has forked and warmed up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited: {self.process.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=2) as response:
                    if response.status == 200 and len(self.pids()) >= workers:
                        time.sleep(2)  # the other workers' warm-up
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("service not ready")

    def pids(self) -> list[int]:
        """The master (or single process) first, then its children."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        kids = [int(pid) for pid in children.read_text().split()] if children.exists() else []
        return [self.process.pid, *kids]

    def pss_mib(self) -> dict[str, float]:
        per_process = {pid: pss_mib(pid) for pid in self.pids()}
        return {"total": round(sum(per_process.values()), 1), "processes": len(per_process)}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0
