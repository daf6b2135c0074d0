"""How fast this worker computes: seconds per pair over its recent passes.

The batcher admits a request only when the pairs ahead of it and its own can be computed
before its deadline, and never starts one that cannot finish: work whose answer nobody
waits for any more is the costliest kind of overload. The estimate is pair-weighted and
decays by pass, so it follows the load (a sibling worker computing, longer texts) within a
few passes.
"""

from __future__ import annotations

import threading


class Pace:
    """Seconds per pair of recent forward passes; ``None`` until the first pass."""

    def __init__(self, decay: float = 0.8) -> None:
        self.decay = decay
        self._seconds = 0.0
        self._pairs = 0.0
        self._lock = threading.Lock()

    def record(self, pairs: int, seconds: float) -> None:
        """One pass of ``pairs`` took ``seconds``."""
        if pairs <= 0 or seconds < 0:
            return
        with self._lock:
            self._seconds = self._seconds * self.decay + seconds
            self._pairs = self._pairs * self.decay + pairs

    def seconds_for(self, pairs: int) -> float | None:
        """Expected seconds to compute ``pairs``; None before anything was measured."""
        with self._lock:
            if self._pairs == 0:
                return None
            return pairs * self._seconds / self._pairs
