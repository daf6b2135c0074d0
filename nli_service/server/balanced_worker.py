"""Gunicorn's gthread worker, taking new connections least-connections first.

Gunicorn leaves the choice of worker to the kernel: every worker waits on the shared
listening socket and whichever wakes first takes the connection, busy or not
(benoitc/gunicorn#2817, #3071). With keep-alive clients a connection stays with its
worker, so two clients can share one core while the other core idles. Here each worker
publishes its open connections in ``worker_table``, and a worker holding
more than the least-loaded one lets that one take a new connection first (nginx's
``least_conn``, within one machine). It never refuses: after ``MAX_DEFER`` it accepts
anyway, so a stuck peer cannot stall the server.

It overrides Gunicorn internals (``accept``, ``set_accept_enabled``, the ``nr_conns`` and
``_accepting`` attributes) of the versions in ``COMPATIBLE_GUNICORN``; :func:`compatible`
checks them at start-up, and the server falls back to the plain gthread worker otherwise.
"""

from __future__ import annotations

import inspect
import select
import time
from typing import Any

import gunicorn
from gunicorn.workers.gthread import ThreadWorker

from nli_service.server.worker_table import NOT_ACCEPTING, TABLE

MAX_DEFER = 0.01  # seconds a busier worker leaves a new connection to a less busy one
_POLL = 0.0005
COMPATIBLE_GUNICORN = ((27, 0), (27, 1))  # [from, to) major.minor, as pinned in requirements.txt
_OVERRIDDEN_METHODS = ("accept", "set_accept_enabled")
_OVERRIDDEN_ATTRIBUTES = ("self.nr_conns", "self._accepting")


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
    """``gthread`` with least-connections accepting; everything else is Gunicorn's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slot = TABLE.claim()  # runs in the master, which forks the worker next
        self._connections = 0
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
        super().set_accept_enabled(enabled)
        TABLE.publish_connections(self.slot, self._connections if enabled else NOT_ACCEPTING)

    def accept(self, listener: Any) -> None:
        if self._busier_than_a_peer() and self._taken_by_a_peer(listener):
            return
        super().accept(listener)

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
