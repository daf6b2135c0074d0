"""Keep a serving process's heap small: give freed activation memory back, and few malloc arenas.

A forward pass over long pairs allocates hundreds of MB of activations. glibc keeps
freed blocks in the process heap, so a worker that once served a long request stays
that large: with several workers, the long tail of inputs sets the memory of every
one. ``malloc_trim`` returns the free pages (a few ms); it is called only after
large forward passes, and otherwise at most every ``TRIM_INTERVAL_SECONDS``: small passes of
ever new shapes leave free pages scattered through the heap, which RSS keeps counting (a soak
saw a worker's RSS rise in steps of a few MiB for 20 minutes without it).

glibc also gives threads their own malloc arenas, up to 8 per core: a worker's 16 request
threads each tokenising and decoding grow as many heaps, each fragmenting on its own, and the
worker's RSS creeps up for tens of minutes. :func:`limit_malloc_arenas` caps them (as
``MALLOC_ARENA_MAX`` would, but it works after a fork, where the environment variable is read
too early to matter). Elsewhere than glibc both do nothing.

oneDNN, which runs torch's CPU kernels, keeps every primitive (a kernel built for one tensor
shape) it creates, up to 1024 of them. Padded passes come in ever new shapes (pairs x tokens),
so a worker's memory grew by tens of MiB over an hour as that cache filled, whatever the
allocator (glibc, capped mmap threshold and jemalloc all grew alike; a capacity of 0 stayed flat).
:func:`limit_kernel_cache` bounds it; a pass reuses its kernels across layers, so a small cache
keeps the speed (docs/reliability.md has the measurement).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time

LARGE_FORWARD_TOKENS = 4096
"""Padded tokens in one forward pass from which its activations are worth giving back."""
TRIM_INTERVAL_SECONDS = 30.0


_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h
ONEDNN_CACHE_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


@functools.cache
def _libc_function(name: str):
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None


def limit_malloc_arenas(count: int) -> bool:
    """Let this process's threads share at most ``count`` malloc arenas from now on; False where
    that is not possible (not glibc, or ``count`` 0: glibc's default)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None or count <= 0:
        return False
    return bool(mallopt(_M_ARENA_MAX, count))


def limit_kernel_cache(capacity: int) -> None:
    """Keep at most ``capacity`` oneDNN primitives in this process. oneDNN reads the capacity when it
    first builds one, so this must run before the process's first forward pass (a worker's warm-up)."""
    os.environ[ONEDNN_CACHE_VARIABLE] = str(capacity)


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; False where that is not possible."""
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


class HeapTrimmer:
    """When an engine gives free heap pages back: after a large forward pass, else every ``interval`` s."""

    def __init__(self, interval: float = TRIM_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._last = time.monotonic()

    def after_pass(self, padded_tokens: int) -> bool:
        """A forward pass of ``padded_tokens`` (its largest chunk) ended; whether the heap was trimmed."""
        now = time.monotonic()
        if padded_tokens < LARGE_FORWARD_TOKENS and now - self._last < self.interval:
            return False
        self._last = now
        return release_free_memory()
