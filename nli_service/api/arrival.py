"""When a request reached the server, and whether its client is still there.

The serving layer's deadline counts from the request's arrival, not from when a worker picked
it up: a proxy's ``X-Request-Start`` (nginx: ``t=${msec}``; milliseconds or microseconds since
the epoch are understood too) or, without one, the stamp the gthread worker puts on each
request as its first bytes arrive (``server/balanced_worker.py``). A time in the future or
over an hour old is ignored: the clocks disagree, and the request is timed from now.

A client may say how long it waits (``X-Request-Timeout: 5``, seconds, like gRPC's
``grpc-timeout``): the deadline is then the shorter of that and ``NLI_REQUEST_TIMEOUT``, so
the worker refuses at once what it could not answer in time instead of computing an answer
nobody reads. ``nli_service.client`` sends its own timeout there.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from flask import g, request

from nli_service.api.errors import ApiError
from nli_service.serving.service import RequestTiming

REQUEST_START_HEADER = "X-Request-Start"
REQUEST_TIMEOUT_HEADER = "X-Request-Timeout"
_MAX_WAIT = 3600.0


def timing() -> RequestTiming:
    """This request's arrival, client timeout and client-gone check, for the serving layer."""
    arrived = g.get("received_at")
    return RequestTiming(
        received_at=received_at(time.monotonic()) if arrived is None else arrived,
        client_timeout=client_timeout(),
        client_gone=client_gone_check(),
    )


def client_timeout() -> float | None:
    """Seconds from ``X-Request-Timeout``; None without one; 400 if it is not a positive number."""
    raw = request.headers.get(REQUEST_TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw.strip().removesuffix("s"))
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ApiError(f"{REQUEST_TIMEOUT_HEADER} must be a positive number of seconds, got {raw[:40]!r}")
    return seconds


def received_at(now: float) -> float:
    """When the request arrived, on the monotonic clock of ``now`` (``time.monotonic()``)."""
    started = epoch_seconds(request.headers.get(REQUEST_START_HEADER, ""))
    if started is None:
        return now
    waited = time.time() - started
    return now - waited if 0 <= waited < _MAX_WAIT else now


def epoch_seconds(raw: str) -> float | None:
    """``t=1733100000.123`` (seconds), or milliseconds / microseconds since the epoch, as seconds."""
    try:
        number = float(raw.strip().removeprefix("t="))
    except ValueError:
        return None
    if number != number or number <= 0:  # NaN, or not a time
        return None
    if number > 1e14:
        return number / 1e6
    if number > 1e11:
        return number / 1e3
    return number


def client_gone_check() -> Callable[[], bool] | None:
    """A check that the client has closed its connection, where the server gives the socket."""
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        return None

    def gone() -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False  # nothing to read: still connected
        except OSError:
            return True

    return gone
