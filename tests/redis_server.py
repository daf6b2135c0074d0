"""A real redis-server (Debian's package) on a free port in a temporary directory, for the tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis
from serving import free_port


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server (make test does)")
    return found


class RedisServer:
    """One redis-server process; :meth:`stop` and :meth:`start` again on the same port (a restart)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.work.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.work),
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.work / "redis.log")],
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError as error:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    log = (self.work / "redis.log").read_text()
                    raise RuntimeError(f"redis-server did not start: {log}") from error
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
