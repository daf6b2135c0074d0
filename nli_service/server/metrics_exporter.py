"""Serve ``/metrics`` from the Gunicorn master (or the dev server): every worker's values, summed.

Each worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
multiprocess mode); the master reads them all. One exporter per server, never one per worker.

Two things keep a long-running master healthy:

* a dead worker's files are folded into one "archive" file per kind (:func:`archive_dead_worker`,
  from Gunicorn's ``child_exit``), so worker recycling leaves a bounded number of files and a
  bounded scrape time while the totals stay exact;
* the HTTP side (:class:`MetricsServer`) holds a fixed number of threads and a bounded number of
  connections, each given a few seconds to send its request: idle or slow sockets to the metrics
  port cannot pile up threads or file descriptors in the master.
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import os
import re
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.mmap_dict import MmapedDict

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ARCHIVE = "archive"  # in place of the pid in an archive file's name
# prometheus_client's file names: <type>_<pid>.db, gauge_<mode>_<pid>.db (see its values.py).
OWN_FILE = re.compile(r"^(?:counter|histogram|summary|gauge_[a-z]+)_(?:[0-9]+|archive)\.db$")
_MODE_OF = re.compile(r"^(?P<kind>counter|histogram|summary|gauge_(?P<mode>[a-z]+))_(?P<pid>[0-9]+|archive)\.db$")

log = logging.getLogger("nli_service.metrics_exporter")

# Held while a scrape reads the files and while a dead worker's files move into the archive:
# a scrape never sees a worker's counts both in its own file and in the archive (or in neither).
_files_lock = threading.Lock()


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def clear_own_files(path: str) -> int:
    """Remove the service's own metric files (``counter_123.db``, ``histogram_archive.db``, ...)
    from ``path``, creating it if needed; anything else in it is left alone. Returns how many."""
    os.makedirs(path, exist_ok=True)
    removed = 0
    for name in os.listdir(path):
        if OWN_FILE.match(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(path, name))
                removed += 1
    return removed


def reset_multiprocess_dir(path: str) -> None:
    """Drop old counts so a restart does not add them up (only the service's own files go)."""
    clear_own_files(path)


class _MultiProcessFiles:
    """prometheus_client's ``MultiProcessCollector``, minus the files still empty: a worker
    creates its file, then sizes it; reading it in between failed the whole scrape (500)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self):
        with _files_lock:
            files = []
            for file in glob.glob(os.path.join(self.path, "*.db")):
                with contextlib.suppress(FileNotFoundError):  # a dead worker's live gauge, just dropped
                    if os.path.getsize(file) > 0:
                        files.append(file)
            return multiprocess.MultiProcessCollector.merge(files, accumulate=True)


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def resident_memory_bytes(pid: int) -> int | None:
    """Resident set size of process ``pid`` (Linux ``/proc``); None if it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return None


class WorkerProcesses:
    """The serving processes, looked at when scraped: how many are alive, and each one's resident
    memory. prometheus-client's multiprocess mode exports no ``process_*`` metrics, and a worker
    cannot report while it is busy or gone, so the exporter reads ``/proc`` itself."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self.pids = pids

    def collect(self):
        memory = GaugeMetricFamily(
            "nli_worker_resident_memory_bytes", "Resident memory of each worker process", labels=["pid"]
        )
        alive = 0
        for pid in sorted(self.pids()):
            size = resident_memory_bytes(pid)
            if size is not None:
                alive += 1
                memory.add_metric([str(pid)], size)
        workers = GaugeMetricFamily("nli_workers", "Worker processes alive (serving or warming up)")
        workers.add_metric([], alive)
        return [workers, memory]


def export_registry(worker_pids: Callable[[], Iterable[int]] | None = None) -> CollectorRegistry:
    """The registry to serve: all processes' files in multiprocess mode, else this process's registry;
    with ``worker_pids``, the workers' count and memory too."""
    path = multiprocess_dir()
    if path is None and worker_pids is None:
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(REGISTRY if path is None else _MultiProcessFiles(path))
    if worker_pids is not None:
        registry.register(WorkerProcesses(worker_pids))
    return registry


# -- dead workers ------------------------------------------------------------------------


def _values(file: str) -> list[tuple[str, float, float]]:
    if os.path.getsize(file) == 0:  # created, never sized: nothing counted yet
        return []
    return [(key, value, timestamp) for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(file)]


def _combine(mode: str | None, entries: Iterable[tuple[str, float, float]]) -> dict[str, tuple[float, float]]:
    """Fold (key, value, timestamp) entries by key the way a scrape would across processes.

    Counters, histograms (their files hold per-bucket counts, not cumulative ones), summaries and
    ``sum`` gauges add up; ``max``/``min`` gauges keep the extreme; ``mostrecent`` keeps the value
    with the latest timestamp.
    """
    merged: dict[str, tuple[float, float]] = {}
    for key, value, timestamp in entries:
        if key not in merged:
            merged[key] = (value, timestamp)
            continue
        old, old_timestamp = merged[key]
        if mode == "max":
            merged[key] = (max(old, value), max(old_timestamp, timestamp))
        elif mode == "min":
            merged[key] = (min(old, value), max(old_timestamp, timestamp))
        elif mode == "mostrecent":
            if timestamp > old_timestamp:
                merged[key] = (value, timestamp)
        else:  # counter, histogram, summary, gauge sum
            merged[key] = (old + value, max(old_timestamp, timestamp))
    return merged


def _write_archive(path: str, values: dict[str, tuple[float, float]]) -> None:
    """Write ``values`` to the archive file ``path``, replacing it in one step (a new file, renamed)."""
    temporary = f"{path}.{os.getpid()}.tmp"  # not *.db: never read by a scrape
    with contextlib.suppress(FileNotFoundError):
        os.remove(temporary)
    table = MmapedDict(temporary)
    try:
        for key, (value, timestamp) in values.items():
            table.write_value(key, value, timestamp)
    finally:
        table.close()
    os.replace(temporary, path)


def archive_dead_worker(pid: int, path: str | None = None) -> None:
    """Fold dead worker ``pid``'s files into the archive files, then delete them.

    Its live gauges (``live*`` modes) are dropped, as ``mark_process_dead`` does; its counters,
    histograms, summaries and ``sum``/``max``/``min``/``mostrecent`` gauges go into
    ``<kind>_archive.db``, so a scrape's totals do not change. Its ``all`` gauges (one series per
    process, dead or alive) are dropped too: kept, every recycled worker would leave a series for ever.
    """
    path = path or multiprocess_dir()
    if path is None:
        return
    with _files_lock:
        for file in glob.glob(os.path.join(path, f"*_{pid}.db")):
            match = _MODE_OF.match(os.path.basename(file))
            if match is None:
                continue
            kind, mode = match["kind"], match["mode"]
            if mode is not None and (mode.startswith("live") or mode == "all"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(file)
                continue
            archive = os.path.join(path, f"{kind}_{ARCHIVE}.db")
            try:
                entries = _values(file)
                if entries:
                    old = _values(archive) if os.path.exists(archive) else []
                    _write_archive(archive, _combine(mode, [*old, *entries]))
            except (OSError, RuntimeError, ValueError, struct.error) as error:  # damaged: kept as it is
                log.warning("cannot archive %s: %s", file, error)
                continue
            os.remove(file)


def mark_worker_dead(pid: int) -> None:
    """A worker died: drop its live gauges and move its counts into the archive files."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid, path)
        archive_dead_worker(pid, path)


# -- the HTTP side -----------------------------------------------------------------------

MAX_REQUEST_BYTES = 16 * 1024


class MetricsServer:
    """``/metrics`` over HTTP/1.0 with bounded threads, connections and time per connection.

    One thread accepts connections and reads their request heads without blocking (a selector);
    a connection whose head is not complete within ``request_timeout`` seconds is closed, and when
    ``max_connections`` are open the longest-waiting one is closed for a new one. A complete request
    goes to one of ``threads`` threads, which answer with prometheus_client's ``make_wsgi_app``
    (content negotiation, gzip, ``name[]``) and have ``request_timeout`` seconds to send it.
    """

    def __init__(
        self,
        port: int,
        host: str = "0.0.0.0",
        registry=REGISTRY,
        threads: int = 2,
        max_connections: int = 128,
        request_timeout: float = 5.0,
    ) -> None:
        self.app = make_wsgi_app(registry)
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(address)
            self.listener.listen(512)
            self.listener.setblocking(False)
        except OSError:
            self.listener.close()
            raise
        self.port = self.listener.getsockname()[1]
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nli-metrics")
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.waiting: dict[socket.socket, tuple[float, bytearray]] = {}  # insertion order: oldest first
        self.answering = 0  # connections handed to the pool, not yet closed
        self.answering_lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="nli-metrics-accept", daemon=True)

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.pool.shutdown(wait=True)

    # the accepting thread

    def _loop(self) -> None:
        try:
            while not self.stopping:
                for key, _ in self.selector.select(timeout=0.25):
                    if key.fileobj is self.listener:
                        self._accept()
                    else:
                        self._read(key.fileobj)
                self._expire()
        finally:
            for conn in list(self.waiting):
                self._drop(conn)
            self.selector.close()
            self.listener.close()

    def _accept(self) -> None:
        for _ in range(64):  # a burst at a time, then the other sockets get a turn
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # e.g. out of file descriptors: shed the oldest and go on
                log.warning("metrics exporter cannot accept: %s", error)
                if self.waiting:
                    self._drop(next(iter(self.waiting)))
                return
            while self.waiting and len(self.waiting) + self.answering >= self.max_connections:
                self._drop(next(iter(self.waiting)))
            if self.answering >= self.max_connections:
                conn.close()
                continue
            conn.setblocking(False)
            self.waiting[conn] = (time.monotonic(), bytearray())
            self.selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        if conn not in self.waiting:  # dropped earlier in this round
            return
        _, received = self.waiting[conn]
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        received += data
        if b"\r\n\r\n" in received or b"\n\n" in received:
            self.selector.unregister(conn)
            del self.waiting[conn]
            with self.answering_lock:
                self.answering += 1
            self.pool.submit(self._answer, conn, bytes(received))
        elif len(received) > MAX_REQUEST_BYTES:
            self._drop(conn)

    def _expire(self) -> None:
        limit = time.monotonic() - self.request_timeout
        while self.waiting:
            conn, (accepted, _) = next(iter(self.waiting.items()))
            if accepted > limit:
                return
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self.waiting.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        conn.close()

    # the answering threads

    def _answer(self, conn: socket.socket, request: bytes) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(self.request_timeout)  # for the whole sendall, since Python 3.5
            conn.sendall(self._response(request))
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client went away or would not read
        except Exception:  # noqa: BLE001 - never let one request take a pool thread down
            log.exception("metrics exporter failed a request")
        finally:
            conn.close()
            with self.answering_lock:
                self.answering -= 1

    def _response(self, request: bytes) -> bytes:
        head = request.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("latin-1")
        lines = head.splitlines()
        parts = lines[0].split() if lines else []
        if len(parts) < 2:
            return b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        method, target = parts[0], parts[1]
        path, _, query = target.partition("?")
        environ = {"REQUEST_METHOD": method, "PATH_INFO": unquote(path), "QUERY_STRING": query}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            environ["HTTP_" + name.strip().upper().replace("-", "_")] = value.strip()
        answer: dict[str, object] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None) -> None:
            answer["status"], answer["headers"] = status, headers

        environ.update({"wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr})
        body = b"".join(self.app(environ, start_response))
        lines_out = [f"HTTP/1.0 {answer['status']}"]
        lines_out += [f"{name}: {value}" for name, value in answer["headers"]]  # type: ignore[union-attr]
        lines_out += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
        return "\r\n".join(lines_out).encode("latin-1") + body


def start_exporter(
    port: int, host: str = "0.0.0.0", worker_pids: Callable[[], Iterable[int]] | None = None
) -> MetricsServer:
    """Serve ``/metrics`` on ``port`` from background threads of this process (OSError if it cannot);
    ``worker_pids`` tells which processes serve requests (their count and memory are exported)."""
    return MetricsServer(port, host, registry=export_registry(worker_pids)).start()
