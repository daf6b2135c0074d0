"""A client has ``NLI_CLIENT_TIMEOUT`` seconds to send its whole request; no slow client holds a worker.

Gunicorn reads a request in the thread (sync: the process) that then runs it, so a client that
sends half its headers and stalls holds that thread until it gives up: six such connections
stopped a 4-worker server. Here, as nginx does it:

- gthread workers (``balanced_worker``) read each request in their event loop, without
  blocking, into a :class:`RequestBuffer`, and hand it to a thread only once it has arrived
  whole (headers, and a body of known length up to ``NLI_MAX_BODY_BYTES``). Stalled
  connections cost a buffer each, never a thread.
- sync workers (``sync_worker``) do the same in their own select loop, and serve a request only
  once it is whole; what a handler still reads (a chunked body) goes through a
  :class:`ReadDeadlineSocket` bound to the same deadline.

Either way a request not whole by its deadline is answered 408 and its connection closed.
"""

from __future__ import annotations

import io
import json
import math
import re
import socket
import time
from typing import Any

HEADER_END = b"\r\n\r\n"
MAX_HEADER_BYTES = 64 * 1024  # past this without a blank line Gunicorn's own limits answer (431 / 400)
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_CHUNKED = re.compile(rb"^transfer-encoding[ \t]*:.*chunked", re.IGNORECASE | re.MULTILINE)
_REQUEST_START = re.compile(rb"^x-request-start[ \t]*:", re.IGNORECASE | re.MULTILINE)


class ClientTooSlow(Exception):  # noqa: N818 - reads like the condition it reports
    """The client did not send its whole request within its time."""


def error_response(status: int, reason: str, message: str, headers: str = "") -> bytes:
    """A complete HTTP/1.1 response with the service's JSON error body; the connection closes after it."""
    body = json.dumps({"error": message, "status": status}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def timeout_response(seconds: float) -> bytes:
    message = f"the request did not arrive within {seconds:g} s (NLI_CLIENT_TIMEOUT); send it faster"
    return error_response(408, "Request Timeout", message)


def _send_now(sock: Any, response: bytes) -> None:
    """Send ``response`` if the socket takes it at once; a client that does not read gets nothing."""
    try:
        sock.setblocking(False)
        sock.send(response)
    except OSError:
        pass


def answer_too_slow(sock: Any, seconds: float) -> None:
    _send_now(sock, timeout_response(seconds))


def answer_overloaded(sock: Any, late_by: float) -> None:
    """503 with ``Retry-After``: the queue ahead would make this request miss its deadline."""
    retry_after = min(max(math.ceil(late_by), 1), 60)
    message = "the server is overloaded: this request would wait past its deadline; retry shortly"
    _send_now(sock, error_response(503, "Service Unavailable", message, f"Retry-After: {retry_after}\r\n"))


READ_CHUNK = 64 * 1024


def receive(sock: Any) -> bytes | None:
    """What a non-blocking client socket has for us: None if nothing yet, ``b""`` once it has closed."""
    try:
        return sock.recv(READ_CHUNK)
    except BlockingIOError:
        return None
    except OSError:
        return b""


class RequestBuffer:
    """The bytes of one request as they arrive, until it is whole (or known to need no more)."""

    def __init__(self, seconds: float, max_body_bytes: int) -> None:
        self.started = time.monotonic()  # its first bytes arrived (accepted, for a sync worker)
        self.deadline = self.started + seconds
        self.arrived = time.time()
        self.max_body_bytes = max_body_bytes
        self.data = bytearray()
        self._needed: int | None = None  # total bytes once the headers are in

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def add(self, chunk: bytes) -> bool:
        """Append ``chunk``; whether the request can now be handed over."""
        self.data += chunk
        if self._needed is None:
            end = self.data.find(HEADER_END)
            if end < 0:
                return len(self.data) > MAX_HEADER_BYTES  # let Gunicorn refuse it
            headers = bytes(self.data[:end])
            length = _CONTENT_LENGTH.search(headers)
            body = int(length.group(1)) if length and not _CHUNKED.search(headers) else 0
            # A body over the limit is refused (413) without being read; a chunked one is read by
            # the thread under Gunicorn's own limits.
            self._needed = end + len(HEADER_END) + (body if body <= self.max_body_bytes else 0)
        return len(self.data) >= self._needed

    def stamped(self) -> bytes:
        """The request with ``X-Request-Start`` (when its first bytes arrived) added, unless a proxy set it:
        the service's deadline counts from then, not from when a thread picked it up."""
        data = bytes(self.data)
        line_end = data.find(b"\r\n")
        header_end = data.find(HEADER_END)
        if line_end < 0 or header_end < 0 or _REQUEST_START.search(data, line_end, header_end + 2):
            return data
        stamp = f"X-Request-Start: t={self.arrived:.6f}\r\n".encode()
        return data[: line_end + 2] + stamp + data[line_end + 2 :]


class ReadDeadlineSocket:
    """A client socket whose reads must all finish by one deadline; everything else passes through.

    ``arrived``: bytes of the request already read (by an event loop), handed out first."""

    def __init__(
        self, sock: socket.socket, seconds: float, arrived: bytes = b"", deadline: float | None = None
    ) -> None:
        self._sock = sock
        self.seconds = seconds
        self._deadline: float | None = time.monotonic() + seconds if deadline is None else deadline
        self._arrived = arrived

    def recv(self, size: int, *flags: int) -> bytes:
        if self._arrived:
            chunk, self._arrived = self._arrived[:size], self._arrived[size:]
            return chunk
        if self._deadline is None:
            return self._sock.recv(size, *flags)
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise ClientTooSlow()
        self._sock.settimeout(remaining)
        try:
            return self._sock.recv(size, *flags)
        except TimeoutError:
            raise ClientTooSlow() from None
        finally:
            self._sock.settimeout(None)

    def request_read(self) -> None:
        """The whole request is in: later reads (closing) are not bounded by the request's deadline."""
        self._deadline = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def read_body_now(req: Any, max_body_bytes: int) -> None:
    """Read a body of known length up to ``max_body_bytes`` before the app runs (it then reads memory)."""
    length = next((value for name, value in req.headers if name == "CONTENT-LENGTH"), None)
    if length is None or not length.isdigit() or int(length) > max_body_bytes:
        return
    req.body = io.BytesIO(req.body.read())
