"""Request deadlines: SIGALRM where it works, a cooperative check everywhere.

``signal.setitimer`` only works in the main thread, which is where requests run
under Gunicorn's sync workers and ``python app.py`` (unthreaded dev server).
Elsewhere (gthread workers, threaded servers, tests) the deadline is
cooperative: the engine calls :meth:`Deadline.check` between tokenisation and
each forward pass. Either way the request fails with :class:`RequestTimedOut`.
A SIGALRM handler runs only between Python bytecodes, i.e. after the current
torch op returns, so a forward pass is never torn in half.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class RequestTimedOut(Exception):
    """The request ran past its deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"request took longer than {seconds:g} s")
        self.seconds = seconds


class Deadline:
    """A point in (monotonic) time after which work must stop."""

    def __init__(self, seconds: float, started_at: float | None = None) -> None:
        self.seconds = seconds
        self.expires_at = (time.monotonic() if started_at is None else started_at) + seconds

    def remaining(self) -> float:
        return self.expires_at - time.monotonic()

    def check(self) -> None:
        """Raise :class:`RequestTimedOut` if the deadline has passed."""
        if self.remaining() <= 0:
            raise RequestTimedOut(self.seconds)


def sigalrm_usable() -> bool:
    """True when this thread may own SIGALRM (main thread, no timer armed)."""
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )


@contextmanager
def enforce(deadline: Deadline) -> Iterator[str]:
    """Enforce ``deadline`` on the enclosed block; yields the mode used.

    With SIGALRM the alarm interrupts Python code anywhere in the block; it is
    disarmed and the previous handler restored on every exit path.
    """
    deadline.check()
    if not sigalrm_usable():
        yield "cooperative"
        return

    armed = True

    def on_alarm(signum: int, frame: object) -> None:
        if armed:  # a late alarm racing with the disarm below is ignored
            raise RequestTimedOut(deadline.seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(deadline.remaining(), 1e-3))
    try:
        yield "sigalrm"
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
