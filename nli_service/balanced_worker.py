"""Gunicorn's gthread worker, taking new connections least-connections first.

Gunicorn leaves the choice of worker to the kernel: every worker waits on the shared
listening socket and whichever wakes first takes the connection, busy or not
(benoitc/gunicorn#2817, #3071). With keep-alive clients a connection stays with its
worker, so two clients can share one core while the other core idles. Here each worker
publishes its open connections in a small table of shared memory, and a worker holding
more than the least-loaded one lets that one take a new connection first (nginx's
``least_conn``, within one machine). It never refuses: after ``MAX_DEFER`` it accepts
anyway, so a stuck peer cannot stall the server.
"""

from __future__ import annotations

import mmap
import select
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

MAX_DEFER = 0.01  # seconds a busier worker leaves a new connection to a less busy one
_POLL = 0.0005
_NOT_ACCEPTING = -1


class ConnectionTable:
    """Open connections per worker, in anonymous shared memory inherited across fork.

    Slots are handed out and taken back by the Gunicorn master only; each worker writes
    its own slot and reads the others'. An aligned 4-byte store is atomic, so no lock."""

    def __init__(self, slots: int = 256) -> None:
        self._memory = mmap.mmap(-1, slots * 4)
        self._counts = memoryview(self._memory).cast("i")
        self._taken: set[int] = set()
        for slot in range(slots):
            self._counts[slot] = _NOT_ACCEPTING

    def claim(self) -> int | None:
        """A free slot, or None when every slot is taken (that worker just is not balanced)."""
        free = next((slot for slot in range(len(self._counts)) if slot not in self._taken), None)
        if free is not None:
            self._taken.add(free)
        return free

    def release(self, slot: int | None) -> None:
        if slot is not None:
            self._taken.discard(slot)
            self._counts[slot] = _NOT_ACCEPTING

    def publish(self, slot: int | None, connections: int) -> None:
        """``connections`` open in this worker; negative while it accepts none."""
        if slot is not None:
            self._counts[slot] = connections

    def fewest_elsewhere(self, slot: int | None) -> int | None:
        """The fewest connections of any other worker that accepts, or None."""
        others = [count for index, count in enumerate(self._counts) if index != slot and count >= 0]
        return min(others, default=None)


TABLE = ConnectionTable()  # made at import, in the master, before any worker forks


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
            TABLE.publish(self.slot, value)

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        TABLE.publish(self.slot, self._connections if enabled else _NOT_ACCEPTING)

    def accept(self, listener: Any) -> None:
        deadline = time.monotonic() + MAX_DEFER
        pending = select.poll()
        pending.register(listener, select.POLLIN)
        while self._busier_than_a_peer() and time.monotonic() < deadline:
            time.sleep(_POLL)
            if not pending.poll(0):
                return  # a less busy worker took it
        super().accept(listener)

    def _busier_than_a_peer(self) -> bool:
        fewest = TABLE.fewest_elsewhere(self.slot)
        return fewest is not None and self._connections > fewest


def release_slot(worker: Any) -> None:
    """In the master, when a worker has exited: free its slot for the next one."""
    TABLE.release(getattr(worker, "slot", None))
