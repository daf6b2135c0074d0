"""Give freed activation memory back to the operating system.

A forward pass over long pairs allocates hundreds of MB of activations. glibc keeps
freed blocks in the process heap, so a worker that once served a long request stays
that large: with several workers, the long tail of inputs sets the memory of every
one. ``malloc_trim`` returns the free pages (a few ms); it is called only after
large forward passes. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

LARGE_FORWARD_TOKENS = 4096
"""Padded tokens in one forward pass from which its activations are worth giving back."""


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; False where that is not possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
