"""Gunicorn's sync worker, reading requests in a select loop so that no slow client holds it.

A sync worker serves one request at a time in its main thread (where SIGALRM deadlines work).
Gunicorn's own reads each request in that thread, so a client that sends half its headers and
stalls holds the worker until it gives up: six such connections stopped a 4-worker server.
Here the worker reads every connection it has accepted in a select loop, without blocking,
into a :class:`RequestBuffer` (``slow_clients``), and runs a request only once it has arrived
whole. A connection not whole within ``NLI_CLIENT_TIMEOUT`` of being accepted gets 408 and is
closed. The worker accepts new connections only while no whole request waits for it (a busy
worker leaves them to its idle peers) and reads at most ``MAX_READING`` at once (the rest wait
in the listen backlog). Put a buffering proxy in front (nginx, ``deploy/nginx``) all the same.

Requests wait for a sync worker in the kernel's listen backlog, where nobody sees them age, and
in the worker's own queue of whole requests. Before running one, the worker estimates whether it
and the requests behind it can still be answered in time: it has waited since it arrived, plus
the worker's recent time per request; the backlog shared by the workers will wait its share of
those. When either passes the request deadline, the request is refused at once with 503 and
``Retry-After`` instead of computing an answer its client no longer waits for.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

from nli_service import metrics
from nli_service.config import Settings
from nli_service.server.listener import (
    queued_connection,
    refuse_new_connections,
    server_stopping,
    waiting_connections,
)
from nli_service.server.slow_clients import (
    ClientTooSlow,
    ReadDeadlineSocket,
    RequestBuffer,
    answer_overloaded,
    answer_too_slow,
    read_body_now,
    receive,
)

BACKLOG_SECONDS = 5.0
SECONDS_PER_REQUEST_WEIGHT = 0.2  # of the newest request in the running mean
MAX_READING = 512  # connections one worker reads at once
_LISTENER = object()  # selector data of the listening sockets


@dataclass
class _Arriving:
    """An accepted connection and the bytes of its request so far."""

    listener: socket.socket
    client: socket.socket
    addr: Any
    buffer: RequestBuffer


class BoundedSyncWorker(SyncWorker):
    """``sync`` that reads requests without blocking and refuses what would time out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = Settings.from_env()
        self.client_timeout, self.max_body_bytes = settings.client_timeout, settings.max_body_bytes
        self.request_timeout = settings.request_timeout
        self.seconds_per_request = 0.0  # running mean over this worker's requests
        self._reading: dict[socket.socket, _Arriving] = {}
        self._whole: deque[_Arriving] = deque()  # arrived whole, waiting to run
        self._arrived_at: float | None = None  # time.monotonic() when the request being served arrived
        self._listening = False
        super().__init__(*args, **kwargs)

    # -- the loop: accept and read without blocking, run whole requests one at a time ---------

    def run(self) -> None:
        for listener in self.sockets:
            listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.PIPE[0], selectors.EVENT_READ, None)
        while self.alive and self.is_parent_alive():
            self.notify()
            self._poll(0 if self._whole else self._poll_timeout())
            if self._whole:
                self._serve(self._whole.popleft())
        self._finish()

    def _poll(self, timeout: float) -> None:
        self._listen(self.alive and not self._whole and len(self._reading) < MAX_READING)
        for key, _ in self._selector.select(max(timeout, 0)):
            if key.data is None:
                self._drain_wakeup_pipe()
            elif key.data is _LISTENER:
                self._accept(key.fileobj)  # type: ignore[arg-type]
            else:
                self._read(key.data)
        for arriving in [arriving for arriving in self._reading.values() if arriving.buffer.expired()]:
            self._stop_reading(arriving)
            answer_too_slow(arriving.client, self.client_timeout)
            arriving.client.close()

    def _poll_timeout(self) -> float:
        soonest = min((arriving.buffer.deadline for arriving in self._reading.values()), default=None)
        wait = self.timeout or 0.5
        return wait if soonest is None else min(wait, soonest - time.monotonic())

    def _listen(self, on: bool) -> None:
        if on == self._listening:
            return
        for listener in self.sockets:
            if on:
                self._selector.register(listener, selectors.EVENT_READ, _LISTENER)
            else:
                self._selector.unregister(listener)
        self._listening = on

    def _drain_wakeup_pipe(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self.PIPE[0], 4096)

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, addr = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # a peer took it
        client.setblocking(False)
        util.close_on_exec(client.fileno())
        arriving = _Arriving(listener, client, addr, RequestBuffer(self.client_timeout, self.max_body_bytes))
        self._reading[client] = arriving
        self._selector.register(client, selectors.EVENT_READ, arriving)

    def _read(self, arriving: _Arriving) -> None:
        chunk = receive(arriving.client)
        if chunk is None:
            return
        if not chunk:  # the client closed the connection
            self._stop_reading(arriving)
            arriving.client.close()
        elif arriving.buffer.add(chunk):
            self._stop_reading(arriving)
            self._whole.append(arriving)

    def _stop_reading(self, arriving: _Arriving) -> None:
        self._selector.unregister(arriving.client)
        del self._reading[arriving.client]

    def _serve(self, arriving: _Arriving) -> None:
        arriving.client.setblocking(True)
        buffer = arriving.buffer
        client = ReadDeadlineSocket(arriving.client, self.client_timeout, buffer.stamped(), buffer.deadline)
        self._arrived_at = buffer.started
        try:
            self.handle(arriving.listener, client, arriving.addr)
        finally:
            self._arrived_at = None

    def _finish(self) -> None:
        """Stopping (or recycled): answer the connections this worker accepted, then, if the server
        stops, those waiting in the listen backlog (``listener``), for at most ``BACKLOG_SECONDS``."""
        give_up = time.monotonic() + BACKLOG_SECONDS
        while (self._whole or self._reading) and time.monotonic() < give_up:
            self.notify()
            self._poll(0 if self._whole else min(self._poll_timeout(), give_up - time.monotonic()))
            if self._whole:
                self._serve(self._whole.popleft())
        for arriving in list(self._reading.values()):
            self._stop_reading(arriving)
            arriving.client.close()
        if server_stopping():  # recycled while the server runs on: the peers take the backlog
            self._serve_backlog(give_up)

    def _serve_backlog(self, give_up: float) -> None:
        for listener in self.sockets:
            refuse_new_connections(listener)
            while time.monotonic() < give_up and queued_connection(listener):
                try:
                    client, addr = listener.accept()
                except OSError:  # taken by a peer meanwhile, or the listener is gone
                    break
                client.setblocking(True)
                self.handle(listener, ReadDeadlineSocket(client, self.client_timeout), addr)

    # -- one whole request ---------------------------------------------------------------------

    def handle_request(self, listener: Any, req: Any, client: Any, addr: Any) -> Any:
        read_body_now(req, self.max_body_bytes)
        client.request_read()
        waited = 0.0 if self._arrived_at is None else time.monotonic() - self._arrived_at
        wait = max(self.expected_wait(waiting_connections(listener)), waited + self.seconds_per_request)
        if wait > self.request_timeout:
            metrics.DROPPED.labels(reason="queue_too_long").inc()
            answer_overloaded(client, wait - self.request_timeout)
            return None
        started = time.monotonic()
        try:
            return super().handle_request(listener, req, client, addr)
        finally:
            seconds = time.monotonic() - started
            self.seconds_per_request += SECONDS_PER_REQUEST_WEIGHT * (seconds - self.seconds_per_request)

    def expected_wait(self, waiting: int) -> float:
        """Seconds the last of ``waiting`` queued connections would wait, the workers sharing them."""
        return waiting / max(self.cfg.workers, 1) * self.seconds_per_request

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, ClientTooSlow):
            answer_too_slow(client, self.client_timeout)
            client.close()  # at once: Gunicorn's graceful close would wait up to 2 s more for this client
            return
        super().handle_error(req, client, addr, exc)
