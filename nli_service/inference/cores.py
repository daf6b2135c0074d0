"""How many threads a forward pass may use: a fixed number, or a share of the cores.

Each Gunicorn worker has its own torch thread pool. A fixed split (cores // workers)
leaves a lone request on one core while the others idle; letting every worker use
every core oversubscribes the CPU as soon as several compute at once. With
:class:`CoreShare` the master gives each worker a slot in a small array shared
across the fork; a worker marks its slot while it computes, and each forward pass
uses ``cores // workers computing now`` threads. The master clears a dead worker's slot.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
from collections.abc import Iterator
from typing import Protocol


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Cores(Protocol):
    fair_share: int  # threads when every worker computes (fixed-size pools, e.g. ONNX Runtime)

    def threads(self) -> int:
        """Threads for the next forward pass."""
        ...

    def computing(self) -> contextlib.AbstractContextManager[None]:
        """Marks this process as computing for the duration."""
        ...


class FixedCores:
    """Always the same number of threads (NLI_TORCH_THREADS set, or a single process)."""

    def __init__(self, threads: int) -> None:
        self.fair_share = threads

    def threads(self) -> int:
        return self.fair_share

    def computing(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class CoreShare:
    """The cores split among the workers computing at the moment (create in the master, before forking)."""

    def __init__(self, cores: int, workers: int) -> None:
        self.cores = cores
        self.fair_share = max(1, cores // workers)
        # Twice the workers: on a reload (SIGHUP) new workers start before the old ones leave.
        self._computing = multiprocessing.RawArray(ctypes.c_bool, 2 * workers)  # shared memory, kept across fork
        self._taken: set[int] = set()  # the master's bookkeeping
        self.slot: int | None = None  # in a worker: its own

    # -- in the master --------------------------------------------------------------------

    def take_slot(self) -> int | None:
        """A free slot for the worker about to be forked (None: all taken, it gets the fair share)."""
        slot = next((i for i in range(len(self._computing)) if i not in self._taken), None)
        if slot is not None:
            self._taken.add(slot)
            self._computing[slot] = False
        return slot

    def release_slot(self, slot: int | None) -> None:
        """A worker has exited (maybe killed mid-forward): free its slot and its mark."""
        if slot is not None:
            self._computing[slot] = False
            self._taken.discard(slot)

    # -- in a worker ------------------------------------------------------------------------

    def for_worker(self, slot: int | None) -> Cores:
        """This share as seen by the worker in ``slot``."""
        if slot is None:
            return FixedCores(self.fair_share)
        self.slot = slot
        return self

    def threads(self) -> int:
        others = sum(self._computing) - (self.slot is not None and self._computing[self.slot])
        return max(1, self.cores // (others + 1))

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        if self.slot is None:
            yield
            return
        self._computing[self.slot] = True
        try:
            yield
        finally:
            self._computing[self.slot] = False
