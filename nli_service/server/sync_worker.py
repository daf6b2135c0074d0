"""Gunicorn's sync worker, with the whole request (headers and body) read within ``NLI_CLIENT_TIMEOUT``.

A sync worker serves one connection at a time in its main thread (where SIGALRM deadlines
work), so a stalled client would stall the whole worker: here it has ``NLI_CLIENT_TIMEOUT``
seconds from being accepted to send everything, then gets 408 (``slow_clients``). The body
is read before the app runs, so the app never waits on the network. Put a buffering proxy
in front (nginx, ``deploy/nginx``) to keep a flood of slow clients away altogether.
"""

from __future__ import annotations

import time
from typing import Any

from gunicorn.workers.sync import SyncWorker

from nli_service.config import Settings
from nli_service.server.slow_clients import ClientTooSlow, ReadDeadlineSocket, answer_too_slow, read_body_now
from nli_service.server.stopping import queued_connection, refuse_new_connections, server_stopping

BACKLOG_SECONDS = 5.0


class BoundedSyncWorker(SyncWorker):
    """``sync`` whose clients have a bounded time to send their request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = Settings.from_env()
        self.client_timeout, self.max_body_bytes = settings.client_timeout, settings.max_body_bytes
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        super().run()
        self._serve_backlog()

    def _serve_backlog(self) -> None:
        """The server is stopping: refuse new connections, and answer those already waiting in the
        listen backlog rather than leave them to be reset (``stopping``); at most for ``BACKLOG_SECONDS``."""
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
        return super().handle_request(listener, req, client, addr)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, ClientTooSlow):
            answer_too_slow(client, self.client_timeout)
            client.close()  # at once: Gunicorn's graceful close would wait up to 2 s more for this client
            return
        super().handle_error(req, client, addr, exc)
