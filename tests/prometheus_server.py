"""A real Prometheus (Debian's package) on a free loopback port in a temporary directory, and promtool."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
import yaml
from serving import free_port


def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; RuntimeError naming the package when missing."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: apt-get install prometheus (make test-services does)")
    return found


def promtool(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``promtool args...``; its exit code and output, whatever they are."""
    return subprocess.run(
        [binary("promtool"), *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
    )


class PrometheusServer:
    """One Prometheus process on ``config`` (a parsed prometheus.yml), storing under ``work``."""

    def __init__(self, work: Path, config: dict[str, Any]) -> None:
        self.work = work
        self.config = config
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> PrometheusServer:
        self.work.mkdir(parents=True, exist_ok=True)
        config_file = self.work / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config))
        log = (self.work / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config_file}", f"--storage.tsdb.path={self.work / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"prometheus did not start: {(self.work / 'prometheus.log').read_text()}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful answer of the HTTP API at ``/api/v1/<path>``."""
        answer = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` evaluates to now."""
        return self.api("query", query=promql)["result"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
