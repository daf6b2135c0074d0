"""Keep a worker's heap from holding on to freed activation memory.

A forward pass allocates its activations and frees them when it returns. By
default glibc keeps freed memory in the process heap: it raises its mmap
threshold each time a large block is freed (up to 32 MiB), so later activations
come from the heap, whose free pages are given back only when the top of the heap
is free. With several workers, that retained memory is paid once per worker.

:func:`limit_heap_retention` fixes both thresholds (large blocks are mapped and
unmapped on their own; a free heap top over the threshold is returned), once per
process before the model is loaded, inherited by forked workers.
:func:`release_free_memory` (``malloc_trim``) returns the free pages inside the
heap too; the engine calls it after large forward passes. Elsewhere than glibc
both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

LARGE_FORWARD_TOKENS = 4096
"""Padded tokens in one forward pass from which its activations are worth giving back."""

HEAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's initial mmap threshold, kept fixed; also the free heap top that is returned."""

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


@functools.cache
def _glibc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (musl, macOS)
        return None


def limit_heap_retention(threshold: int = HEAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap and trim thresholds at ``threshold`` bytes; False where not possible."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; False where that is not possible."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
