"""A serving process's heap: malloc arenas capped, so request threads do not each grow their own."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")

_COUNT_ARENAS = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys, tempfile, threading
    from nli_service.inference import memory

    cap = int(sys.argv[1])
    print(memory.limit_malloc_arenas(cap))
    start = threading.Barrier(16)

    def allocate():
        start.wait()  # all 16 threads alive at once, each mallocing
        blocks = [bytes(4096) for _ in range(200)]
        start.wait()

    threads = [threading.Thread(target=allocate) for _ in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.fopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile() as report:
        stream = libc.fopen(report.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        print(open(report.name).read().count("<heap nr="))
    """
)


def _arenas(cap: int) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _COUNT_ARENAS, str(cap)], capture_output=True, text=True, check=True)
    applied, arenas = out.stdout.split()
    return applied, int(arenas)


def test_threads_share_the_capped_number_of_arenas() -> None:
    applied, capped = _arenas(2)
    assert applied == "True" and capped <= 2
    applied, default = _arenas(0)  # glibc's default: up to 8 per core, one per thread here
    assert applied == "False" and default > capped, "the test's threads would have grown more arenas uncapped"


def test_workers_share_two_arenas_unless_told_otherwise() -> None:
    from nli_service.config import Settings

    assert Settings.from_env({}).malloc_arenas == 2
    assert Settings.from_env({"NLI_MALLOC_ARENAS": "0"}).malloc_arenas == 0
