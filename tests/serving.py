"""Start the real service (Gunicorn or ``python app.py``) in a subprocess for tests.

Every service started here is recorded (:func:`services_started`): conftest.py fails a
test that starts one without carrying the ``server`` marker. Tests get the marker by
requesting the ``services`` (or module-scoped ``module_services``) fixture, whose
methods are :func:`start`, :func:`running` and :func:`run_to_exit`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests

from reliability.service import free_port, metric_sum, scrape  # noqa: F401 - shared with the reliability runs
from reliability.service import service_env as reliability_service_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
DEV_SERVER = [sys.executable, "app.py"]

_started: list[str] = []  # every service command started in this test process, in order


def services_started() -> list[str]:
    """The commands of every service started so far (a copy)."""
    return list(_started)


def _record(command: list[str]) -> None:
    _started.append(" ".join(str(part) for part in command))


def wait_for(condition: Callable[[], object], timeout: float = 20, what: str = "condition") -> None:
    """Poll ``condition`` until it is true; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {timeout} s")
        time.sleep(0.02)


def service_env(**settings: object) -> dict[str, str]:
    """The test process's environment without NLI_* leftovers, on free loopback ports, plus ``settings``;
    services stop at once (``NLI_DRAIN_SECONDS=0``) unless a test sets it (tests/test_drain.py)."""
    return reliability_service_env(**{"NLI_DRAIN_SECONDS": 0, **settings})


@dataclass
class RunningService:
    process: subprocess.Popen
    env: dict[str, str]
    output_file: IO[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['NLI_PORT']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.env['NLI_METRICS_PORT']}/metrics"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}: {self.output()}")
            try:
                if requests.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or busy booting (read timeout)
                pass
            time.sleep(0.1)
        raise TimeoutError(f"service not ready after {timeout} s")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        """What the service has written to stdout and stderr so far."""
        self.output_file.flush()
        return Path(self.output_file.name).read_text(errors="replace")


def start(
    command: list[str], env: dict[str, str], cwd: Path = PROJECT_ROOT, own_process_group: bool = False
) -> RunningService:
    """Start ``command``; ``own_process_group``: in a process group of its own, so ``os.killpg`` takes the
    Gunicorn master and its workers at once, as a crashed host would."""
    # A file, not a pipe: nobody reads a pipe while the service runs, and a full one
    # (every request logs a line to stdout) would block the workers.
    _record(command)
    output_file = tempfile.NamedTemporaryFile("w+", prefix="nli-service-", suffix=".out")  # noqa: SIM115
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=output_file,
        stderr=subprocess.STDOUT,
        process_group=0 if own_process_group else None,
    )
    return RunningService(process=process, env=env, output_file=output_file)


def run_to_exit(command: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str, float]:
    """Run a service that should fail to start: (exit code, stderr, seconds)."""
    _record(command)
    started = time.monotonic()
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stderr, time.monotonic() - started


@contextmanager
def running(command: list[str], env: dict[str, str], cwd: Path = PROJECT_ROOT) -> Iterator[RunningService]:
    """A started, ready service, stopped on exit."""
    service = start(command, env, cwd)
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


class Services:
    """What the ``services`` fixtures hand a test: start services, all stopped at teardown."""

    def __init__(self) -> None:
        self._services: list[RunningService] = []

    def start(
        self, command: list[str], env: dict[str, str], cwd: Path = PROJECT_ROOT, own_process_group: bool = False
    ) -> RunningService:
        service = start(command, env, cwd, own_process_group)
        self._services.append(service)
        return service

    @contextmanager
    def running(self, command: list[str], env: dict[str, str], cwd: Path = PROJECT_ROOT) -> Iterator[RunningService]:
        with running(command, env, cwd) as service:
            self._services.append(service)
            yield service

    def run_to_exit(self, command: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str, float]:
        return run_to_exit(command, env, timeout)

    def stop_all(self) -> None:
        for service in self._services:
            service.stop()
        self._services.clear()
