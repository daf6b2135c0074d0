"""A serving process's memory: malloc arenas capped, so request threads do not each grow their own;
oneDNN's kernel cache bounded, so ever new batch shapes do not grow a worker."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from nli_service.inference import memory

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


_GROWTH_OVER_NEW_SHAPES = textwrap.dedent(
    """
    import sys
    from nli_service.inference import memory
    from nli_service.serving.runtime import WorkerContext, prepare_worker

    prepare_worker(WorkerContext(threads=1, kernel_cache=None if sys.argv[1] == "default" else int(sys.argv[1])))
    from nli_service.inference.engine import NLIEngine
    from nli_service.inference.types import Pair

    engine = NLIEngine.from_pretrained(sys.argv[2], device="cpu", batch_size=64, max_length=512)
    shapes = [(pairs, words) for words in range(2, 80) for pairs in (1, 2, 3)]  # each pass a new shape

    def run(part):
        for pairs, words in part:
            engine.predict([Pair("word " * words, "a claim")] * pairs)
        memory.release_free_memory()
        return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])

    before = run(shapes[:40])  # the capped cache is full by now
    print((run(shapes[40:]) - before) / 1024)
    """
)


def _growth_over_new_shapes(kernel_cache: str) -> float:
    from nli_service.inference.loader import bundled_model_dir

    command = [sys.executable, "-c", _GROWTH_OVER_NEW_SHAPES, kernel_cache, str(bundled_model_dir())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(memory.ONEDNN_CACHE_VARIABLE, None)
    return float(subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout)


@pytest.mark.slow
def test_a_bounded_kernel_cache_keeps_a_worker_flat_over_new_batch_shapes() -> None:
    capped = _growth_over_new_shapes("16")
    assert capped < 4, f"RSS grew {capped:.1f} MiB over 194 new shapes with 16 kernels kept"
    uncapped = _growth_over_new_shapes("default")  # oneDNN's 1024: a few MiB more every few dozen shapes
    assert uncapped > capped + 4, "the test's shapes would have grown oneDNN's default cache"


def test_workers_keep_128_kernels_unless_told_otherwise() -> None:
    from nli_service.config import Settings

    assert Settings.from_env({}).kernel_cache == 128
    assert Settings.from_env({"NLI_KERNEL_CACHE": "0"}).kernel_cache == 0


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
