"""What each Gunicorn worker is doing, in shared memory: its open connections, its threads computing.

Made at import in the master, before any worker forks (anonymous shared memory is inherited).
Slots are handed out and taken back by the master only; each worker writes its own slot and
reads the others'. An aligned 4-byte store is atomic, so there is no lock: two workers
deciding at the same instant can both act on a stale view, which costs one pass some speed,
never correctness.
"""

from __future__ import annotations

import mmap
import time

NOT_ACCEPTING = -1
_WRAP = 2**31  # the millisecond clock wraps to fit a 4-byte slot


def _now_ms() -> int:
    return int(time.monotonic() * 1000) % _WRAP


class WorkerTable:
    def __init__(self, slots: int = 256) -> None:
        self._memory = mmap.mmap(-1, slots * 16 + 8)
        view = memoryview(self._memory).cast("i")
        self._connections, self._computing = view[:slots], view[slots : 2 * slots]
        self._idle_since = view[2 * slots : 3 * slots]  # milliseconds of the monotonic clock, shared by processes
        self._ready = view[3 * slots : 4 * slots]  # pid of the worker of age (mod slots) that finished starting
        self._server = view[4 * slots :]  # [0]: 1 once the server drains (SIGTERM received); [1]: workers started
        self._taken: set[int] = set()
        for slot in range(slots):
            self._connections[slot] = NOT_ACCEPTING

    def start_draining(self) -> None:
        """The server is stopping: every worker's /ready answers 503 from now on."""
        self._server[0] = 1

    def draining(self) -> bool:
        return self._server[0] == 1

    def worker_started(self) -> None:
        """A worker finished starting (the count is approximate under races; only zero matters)."""
        self._server[1] += 1

    def any_worker_started(self) -> bool:
        return self._server[1] > 0

    def mark_ready(self, age: int, pid: int) -> None:
        """In a worker that finished starting (model loaded, warmed up): ``age`` is Gunicorn's worker age."""
        self._ready[age % len(self._ready)] = pid

    def is_ready(self, age: int, pid: int) -> bool:
        """In the master: whether worker ``pid`` of ``age`` finished starting."""
        return self._ready[age % len(self._ready)] == pid

    def claim(self) -> int | None:
        """A free slot, or None when every slot is taken (that worker then shares nothing)."""
        free = next((slot for slot in range(len(self._connections)) if slot not in self._taken), None)
        if free is not None:
            self._taken.add(free)
        return free

    def release(self, slot: int | None) -> None:
        """A worker has exited: forget its connections and its computing."""
        if slot is not None:
            self._taken.discard(slot)
            self._connections[slot] = NOT_ACCEPTING
            self._computing[slot] = 0

    def publish_connections(self, slot: int | None, connections: int) -> None:
        """``connections`` open in this worker; ``NOT_ACCEPTING`` while it accepts none."""
        if slot is not None:
            self._connections[slot] = connections

    def fewest_connections_elsewhere(self, slot: int | None) -> int | None:
        """The fewest connections of any other worker that accepts, or None."""
        others = [count for index, count in enumerate(self._connections) if index != slot and count >= 0]
        return min(others, default=None)

    def publish_computing(self, slot: int, threads: int) -> None:
        """Threads this worker computes with now; 0 when idle."""
        if threads == 0:
            self._idle_since[slot] = _now_ms()
        self._computing[slot] = threads

    def most_threads_elsewhere(self, slot: int) -> int:
        """The most threads any other worker computes with now (0: none computes)."""
        return max((threads for index, threads in enumerate(self._computing) if index != slot), default=0)

    def quiet_elsewhere(self, slot: int, milliseconds: int) -> bool:
        """No other worker computes, and each has no open connection or has not computed for
        ``milliseconds`` (one with clients may be between two passes)."""
        now = _now_ms()
        return all(
            self._computing[index] == 0
            and (self._connections[index] <= 0 or (now - self._idle_since[index]) % _WRAP >= milliseconds)
            for index in range(len(self._computing))
            if index != slot
        )


TABLE = WorkerTable()
