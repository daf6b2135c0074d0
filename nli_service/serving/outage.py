"""A shared store that may go away (Redis): skip it for a moment after a failure, and say so once.

The result cache and the rate limits both treat Redis as something that can fail at any time.
After a failure the store is left alone for ``pause`` seconds, so an outage costs one timeout per
pause rather than one per request; the outage is logged when it starts (and every
``warn_every`` seconds while it lasts, if set) and when the store answers again.
"""

from __future__ import annotations

import logging
import math
import threading
import time


class Outage:
    """The state of one store's availability, shared by this process's threads."""

    def __init__(self, log: logging.Logger, down: str, up: str, pause: float, warn_every: float | None = None) -> None:
        self.log, self.down, self.up = log, down, up
        self.pause, self.warn_every = pause, warn_every
        self._skip_until = 0.0
        self._failing = False
        self._warned_at = -math.inf
        self._lock = threading.Lock()

    def skipping(self) -> bool:
        """The store failed less than ``pause`` seconds ago: do not call it."""
        return time.monotonic() < self._skip_until

    def failed(self, error: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            self._skip_until = now + self.pause
            warn = not self._failing or (self.warn_every is not None and now - self._warned_at >= self.warn_every)
            self._failing = True
            if warn:
                self._warned_at = now
        if warn:
            self.log.warning(self.down, extra={"error": str(error)[:200]})

    def answered(self) -> None:
        if not self._failing:  # the common case: no lock
            return
        with self._lock:
            recovered, self._failing = self._failing, False
        if recovered:
            self.log.info(self.up)
