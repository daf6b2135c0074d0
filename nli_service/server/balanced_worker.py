"""Gunicorn's gthread worker, taking new connections least-connections first and reading
each request whole before a thread runs it (``slow_clients``).

Gunicorn leaves the choice of worker to the kernel: every worker waits on the shared
listening socket and whichever wakes first takes the connection, busy or not
(benoitc/gunicorn#2817, #3071). With keep-alive clients a connection stays with its
worker, so two clients can share one core while the other core idles. Here each worker
publishes its open connections in ``worker_table``, and a worker holding
more than the least-loaded one lets that one take a new connection first (nginx's
``least_conn``, within one machine). It never refuses: after ``MAX_DEFER`` it accepts
anyway, so a stuck peer cannot stall the server.

It overrides Gunicorn internals (``accept``, ``set_accept_enabled``, ``enqueue_req``,
``handle``, ``murder_pending``, the ``nr_conns``, ``_accepting`` and ``poller`` attributes) of
the versions in ``COMPATIBLE_GUNICORN``; :func:`incompatibility` checks them at start-up, and
the server falls back to the plain gthread worker otherwise.
"""

from __future__ import annotations

import inspect
import select
import selectors
import time
from functools import partial
from typing import Any

import gunicorn
from gunicorn.workers.gthread import ThreadWorker

from nli_service.config import Settings
from nli_service.server.listener import queued_connection, refuse_new_connections, server_stopping
from nli_service.server.slow_clients import RequestBuffer, answer_too_slow, receive
from nli_service.server.worker_table import NOT_ACCEPTING, TABLE

MAX_DEFER = 0.01  # seconds a busier worker leaves a new connection to a less busy one
_POLL = 0.0005
COMPATIBLE_GUNICORN = ((27, 0), (27, 1))  # [from, to) major.minor, as pinned in requirements.txt
_OVERRIDDEN_METHODS = ("accept", "set_accept_enabled", "enqueue_req", "handle", "murder_pending")
_OVERRIDDEN_ATTRIBUTES = ("self.nr_conns", "self._accepting", "self.poller", "conn.data_ready", "conn.init()")
MAX_BACKLOG_ON_STOP = 2048  # connections a stopping worker takes from the backlog, at most


def incompatibility(worker: type = ThreadWorker, version: tuple[int, ...] | None = None) -> str | None:
    """Why this Gunicorn's gthread worker cannot be balanced, or None when it can."""
    version = tuple(gunicorn.version_info) if version is None else version
    low, high = COMPATIBLE_GUNICORN
    if not low <= tuple(version[:2]) < high:
        return f"Gunicorn {'.'.join(map(str, version))} is outside the tested range {low} to {high}"
    missing = [name for name in _OVERRIDDEN_METHODS if not callable(getattr(worker, name, None))]
    try:
        source = inspect.getsource(worker)
    except (OSError, TypeError):
        source = ""
    missing += [name for name in _OVERRIDDEN_ATTRIBUTES if name not in source]
    return f"its gthread worker has no {', '.join(missing)}" if missing else None


class BalancedThreadWorker(ThreadWorker):
    """``gthread`` with least-connections accepting and whole requests handed to threads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slot = TABLE.claim()  # runs in the master, which forks the worker next
        self._connections = 0
        settings = Settings.from_env()
        self.client_timeout, self.max_body_bytes = settings.client_timeout, settings.max_body_bytes
        self._reading: dict[Any, RequestBuffer] = {}  # connections whose request is still arriving
        super().__init__(*args, **kwargs)

    @property
    def nr_conns(self) -> int:
        return self._connections

    @nr_conns.setter
    def nr_conns(self, value: int) -> None:  # Gunicorn counts connections here
        self._connections = value
        if getattr(self, "_accepting", False):  # Gunicorn sets the count before this flag
            TABLE.publish_connections(self.slot, value)

    def set_accept_enabled(self, enabled: bool) -> None:
        if not enabled and not self.alive:
            self._accept_backlog()
        super().set_accept_enabled(enabled)
        TABLE.publish_connections(self.slot, self._connections if enabled else NOT_ACCEPTING)

    def accept(self, listener: Any) -> None:
        if self._busier_than_a_peer() and self._taken_by_a_peer(listener):
            return
        super().accept(listener)

    def _accept_backlog(self) -> None:
        """The server is stopping: refuse new connections, and take those already waiting in the
        listen backlog so they are answered rather than reset (``listener``)."""
        if not server_stopping():
            return  # recycled while the server runs on: the peers take the backlog
        for listener in self.sockets:
            refuse_new_connections(listener)
            for _ in range(MAX_BACKLOG_ON_STOP):
                if not queued_connection(listener):
                    break
                ThreadWorker.accept(self, listener)  # no deferring to peers now

    def _taken_by_a_peer(self, listener: Any) -> bool:
        """Leave the pending connection to less busy workers for up to ``MAX_DEFER``: whether one took it."""
        deadline = time.monotonic() + MAX_DEFER
        pending = select.poll()
        pending.register(listener, select.POLLIN)
        while self._busier_than_a_peer() and time.monotonic() < deadline:
            time.sleep(_POLL)
            if not pending.poll(0):
                return True
        return False

    def _busier_than_a_peer(self) -> bool:
        fewest = TABLE.fewest_connections_elsewhere(self.slot)
        return fewest is not None and self._connections > fewest

    # -- whole requests only: read in the event loop, handed to a thread once arrived ----------

    def enqueue_req(self, conn: Any) -> None:
        if conn.parser is not None and conn.parser.unreader.buf.getvalue():
            super().enqueue_req(conn)  # the next request is already read (pipelined)
            return
        conn.sock.setblocking(False)
        self._reading[conn] = RequestBuffer(self.client_timeout, self.max_body_bytes)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_request_bytes, conn))

    def _on_request_bytes(self, conn: Any, sock: Any) -> None:
        chunk = receive(conn.sock)
        if chunk is None:
            return
        if not chunk:  # the client closed the connection
            self._stop_reading(conn)
            self.nr_conns -= 1
            conn.close()
            return
        buffer = self._reading[conn]
        if buffer.add(chunk):
            self._stop_reading(conn)
            conn.read_ahead = buffer.stamped()
            conn.data_ready = True
            super().enqueue_req(conn)

    def _stop_reading(self, conn: Any) -> None:
        self.poller.unregister(conn.sock)
        del self._reading[conn]

    def handle(self, conn: Any) -> Any:
        read_ahead = getattr(conn, "read_ahead", b"")
        if read_ahead:
            conn.read_ahead = b""
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(read_ahead)
        return super().handle(conn)

    def murder_pending(self) -> None:
        super().murder_pending()
        for conn in [conn for conn, buffer in self._reading.items() if buffer.expired()]:
            self._stop_reading(conn)
            answer_too_slow(conn.sock, self.client_timeout)
            self.nr_conns -= 1
            conn.close()
