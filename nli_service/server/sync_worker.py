"""Gunicorn's sync worker, with the whole request (headers and body) read within ``NLI_CLIENT_TIMEOUT``.

A sync worker serves one connection at a time in its main thread (where SIGALRM deadlines
work), so a stalled client would stall the whole worker: here it has ``NLI_CLIENT_TIMEOUT``
seconds from being accepted to send everything, then gets 408 (``slow_clients``). The body
is read before the app runs, so the app never waits on the network. Put a buffering proxy
in front (nginx, ``deploy/nginx``) to keep a flood of slow clients away altogether.

Requests wait for a sync worker in the kernel's listen backlog, where nobody sees them age.
Before running one, the worker estimates how long the connections queued behind it will
wait: the backlog shared by the workers, times this worker's recent time per request. When
that exceeds the request deadline, the request is refused at once with 503 and
``Retry-After`` instead of letting the queue grow until its requests time out.
"""

from __future__ import annotations

import time
from typing import Any

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
    answer_overloaded,
    answer_too_slow,
    read_body_now,
)

BACKLOG_SECONDS = 5.0


SECONDS_PER_REQUEST_WEIGHT = 0.2  # of the newest request in the running mean


class BoundedSyncWorker(SyncWorker):
    """``sync`` whose clients have a bounded time to send their request, refusing what would time out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = Settings.from_env()
        self.client_timeout, self.max_body_bytes = settings.client_timeout, settings.max_body_bytes
        self.request_timeout = settings.request_timeout
        self.seconds_per_request = 0.0  # running mean over this worker's requests
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        super().run()
        self._serve_backlog()

    def _serve_backlog(self) -> None:
        """The server is stopping: refuse new connections, and answer those already waiting in the
        listen backlog rather than leave them to be reset (``listener``); at most for ``BACKLOG_SECONDS``."""
        if not server_stopping():
            return  # recycled while the server runs on: the peers take the backlog
        give_up = time.monotonic() + BACKLOG_SECONDS
        for listener in self.sockets:
            refuse_new_connections(listener)
            while time.monotonic() < give_up and queued_connection(listener):
                try:
                    client, addr = listener.accept()
                except OSError:  # taken by a peer meanwhile, or the listener is gone
                    break
                client.setblocking(True)
                self.handle(listener, client, addr)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        super().handle(listener, ReadDeadlineSocket(client, self.client_timeout), addr)

    def handle_request(self, listener: Any, req: Any, client: Any, addr: Any) -> Any:
        read_body_now(req, self.max_body_bytes)
        client.request_read()
        wait = self.expected_wait(waiting_connections(listener))
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
