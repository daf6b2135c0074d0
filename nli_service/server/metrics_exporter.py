"""Serve ``/metrics`` from the Gunicorn master (or the dev server): every worker's values, summed.

Each worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
multiprocess mode); the master reads them all. One exporter per server, never one per worker.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def reset_multiprocess_dir(path: str) -> None:
    """Empty the metrics directory so a restart does not add up old counts."""
    directory = Path(path)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)


class _MultiProcessFiles:
    """prometheus_client's ``MultiProcessCollector``, minus the files still empty: a worker
    creates its file, then sizes it; reading it in between failed the whole scrape (500)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self):
        files = []
        for file in glob.glob(os.path.join(self.path, "*.db")):
            with contextlib.suppress(FileNotFoundError):  # a dead worker's live gauge, just dropped
                if os.path.getsize(file) > 0:
                    files.append(file)
        return multiprocess.MultiProcessCollector.merge(files, accumulate=True)


def export_registry() -> CollectorRegistry:
    """The registry to serve: all processes' files in multiprocess mode, else this process."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(_MultiProcessFiles(path))
    return registry


def start_exporter(port: int, host: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``port`` from a background thread of this process."""
    start_http_server(port, addr=host, registry=export_registry())


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay counted)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)
