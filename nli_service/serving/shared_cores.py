"""Lend the idle workers' cores to a lone small pass.

Each tuned worker computes with its share of the cores (workers x threads <= cores), so
that together they give the most pairs per second under load. A lone request would then
run on one core while the others idle. Here a pass of at most ``max_pairs`` pairs uses every
core while no other worker computes (nor has for ``QUIET_MS``, if it holds connections); a
worker about to compute while another has borrowed the cores waits for that pass (short, by
construction) rather than run beside it, since an OpenMP pass whose threads outnumber the
free cores stalls at every barrier. The waiting is bounded, so a stuck worker cannot stall
the others.

Only for backends whose threads can change between passes (torch on CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch

_POLL = 0.0005
# Under load a worker is idle only for the few ms between its passes; a peer with open
# connections that has not computed for this long is idle for want of requests.
QUIET_MS = 20


class CoreTable(Protocol):
    """What the workers of one server publish about their computing (the server's worker table)."""

    def publish_computing(self, slot: int, threads: int) -> None: ...

    def most_threads_elsewhere(self, slot: int) -> int: ...

    def quiet_elsewhere(self, slot: int, milliseconds: int) -> bool: ...


class SharedCores:
    def __init__(
        self,
        table: CoreTable,
        slot: int,
        own_threads: int,
        all_threads: int,
        max_pairs: int,
        max_wait: float = 0.2,
        on_borrow: Callable[[], None] | None = None,
    ) -> None:
        self.table, self.slot = table, slot
        self.own_threads, self.all_threads = own_threads, all_threads
        self.max_pairs, self.max_wait = max_pairs, max_wait
        self.on_borrow = on_borrow  # counted in metrics

    @contextmanager
    def computing(self, pairs: int) -> Iterator[int]:
        """Around one pass of ``pairs`` pairs: yields the threads it runs with."""
        threads = self.own_threads
        if pairs <= self.max_pairs and self.table.quiet_elsewhere(self.slot, QUIET_MS):
            threads = self.all_threads
            if self.on_borrow is not None:
                self.on_borrow()
        else:
            self._wait_while_a_peer_borrows()
        self.table.publish_computing(self.slot, threads)
        if threads != self.own_threads:
            torch.set_num_threads(threads)
        try:
            yield threads
        finally:
            if threads != self.own_threads:
                torch.set_num_threads(self.own_threads)
            self.table.publish_computing(self.slot, 0)

    def _wait_while_a_peer_borrows(self) -> None:
        give_up = time.monotonic() + self.max_wait
        while self.table.most_threads_elsewhere(self.slot) > self.own_threads and time.monotonic() < give_up:
            time.sleep(_POLL)
