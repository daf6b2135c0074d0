"""Request deadlines: SIGALRM where it works, a cooperative check everywhere.

``signal.setitimer`` only works in the main thread, which is where requests run under
Gunicorn's sync workers and ``python app.py`` (unthreaded dev server). Elsewhere (gthread
workers, tests) the deadline is cooperative: the engine calls :meth:`Deadline.check`
between forward passes, and the batcher drops a request whose deadline passed while it
was queued. A SIGALRM handler runs only between Python bytecodes, i.e. after the current
torch op returns, so a forward pass is never torn in half.

Inside the enforced block the deadline raises :class:`DeadlineExceeded`, a
``BaseException``: no ``except Exception`` on the way (tokenizer fallbacks, library
code) can swallow it. :func:`enforce` turns it into :class:`RequestTimedOut` (an
ordinary ``ServingError``) where the block ends, for the API to answer 408.

A deadline may also know whether its client is still there (``client_gone``): work for a
client that has closed its connection stops at the next check, as :class:`ClientGone`.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from nli_service.serving.errors import ClientGone, RequestTimedOut


class DeadlineExceeded(BaseException):  # noqa: N818 - a control-flow signal like KeyboardInterrupt
    """Raised inside the enforced block when its deadline passes; not an ``Exception`` on purpose."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"request took longer than {seconds:g} s")
        self.seconds = seconds


class ClientDisconnected(BaseException):  # noqa: N818 - a control-flow signal, like DeadlineExceeded
    """Raised inside the enforced block when the client has gone."""


class Deadline:
    """A point in (monotonic) time after which work must stop, counted from when the request arrived."""

    def __init__(
        self, seconds: float, started_at: float | None = None, client_gone: Callable[[], bool] | None = None
    ) -> None:
        self.seconds = seconds
        self.expires_at = (time.monotonic() if started_at is None else started_at) + seconds
        self.client_gone = client_gone

    def abandoned(self) -> bool:
        """Whether the client has closed its connection (False when nobody can tell)."""
        return self.client_gone is not None and self.client_gone()

    def remaining(self) -> float:
        return self.expires_at - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def check(self) -> None:
        """Raise :class:`DeadlineExceeded` if the deadline has passed, :class:`ClientDisconnected` if the
        client has gone (the engine's ``Checkable``)."""
        if self.expired():
            raise DeadlineExceeded(self.seconds)
        if self.abandoned():
            raise ClientDisconnected()


class _Alarm:
    """The process's one SIGALRM handler, installed once for the process's life.

    It raises only while a deadline is armed; an alarm delivered late (after the block
    ended) is ignored instead of falling through to the default action, which kills.
    """

    def __init__(self) -> None:
        self.armed: Deadline | None = None

    def install(self) -> None:
        """Make this the SIGALRM handler (once; again only if something replaced it)."""
        if signal.getsignal(signal.SIGALRM) != self.on_alarm:
            signal.signal(signal.SIGALRM, self.on_alarm)

    def on_alarm(self, signum: int, frame: object) -> None:
        deadline = self.armed
        if deadline is not None:
            self.armed = None
            raise DeadlineExceeded(deadline.seconds)


ALARM = _Alarm()


def sigalrm_usable() -> bool:
    """True when this thread may own SIGALRM (main thread, no deadline armed)."""
    return (
        hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread() and ALARM.armed is None
    )


@contextmanager
def enforce(deadline: Deadline) -> Iterator[str]:
    """Enforce ``deadline`` on the enclosed block; yields the mode used (``sigalrm`` or ``cooperative``).

    Raises :class:`RequestTimedOut` when the deadline passes, however the block noticed.
    """
    if deadline.expired():
        raise RequestTimedOut(deadline.seconds)
    if deadline.abandoned():
        raise ClientGone()
    use_alarm = sigalrm_usable()
    try:
        if use_alarm:
            ALARM.install()
            ALARM.armed = deadline
            signal.setitimer(signal.ITIMER_REAL, max(deadline.remaining(), 1e-3))
            try:
                yield "sigalrm"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                ALARM.armed = None
        else:
            yield "cooperative"
    except DeadlineExceeded as exceeded:
        raise RequestTimedOut(exceeded.seconds) from None
    except ClientDisconnected:
        raise ClientGone() from None
