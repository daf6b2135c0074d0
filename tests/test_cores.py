"""Workers share the cores: a forward pass uses cores ÷ (workers computing now) threads."""

from __future__ import annotations

import contextlib
import multiprocessing
from pathlib import Path
from types import SimpleNamespace

import pytest
from model_factory import SAMPLE_PAIRS

from nli_service import gunicorn_hooks
from nli_service.inference.cores import CoreShare, FixedCores
from nli_service.inference.engine import NLIEngine
from nli_service.inference.types import Pair


def test_a_worker_alone_gets_every_core_and_concurrent_workers_split_them() -> None:
    share = CoreShare(cores=4, workers=4)
    slots = [share.take_slot() for _ in range(4)]
    me = share.for_worker(slots[0])
    assert me.threads() == 4
    with me.computing():
        assert me.threads() == 4, "its own mark does not count against it"
    share._computing[slots[1]] = True
    assert me.threads() == 2
    share._computing[slots[2]] = share._computing[slots[3]] = True
    assert me.threads() == 1
    share._computing[slots[1]] = share._computing[slots[2]] = share._computing[slots[3]] = False
    assert me.threads() == 4


def test_the_computing_mark_is_cleared_on_errors() -> None:
    share = CoreShare(cores=2, workers=2)
    me = share.for_worker(share.take_slot())
    with contextlib.suppress(RuntimeError), me.computing():
        assert share._computing[me.slot]
        raise RuntimeError("forward failed")
    assert not any(share._computing)


def test_slots_are_distinct_reused_and_run_out_into_the_fair_share() -> None:
    share = CoreShare(cores=2, workers=2)
    slots = [share.take_slot() for _ in range(4)]  # room for a reload's second generation
    assert sorted(slots) == [0, 1, 2, 3]
    assert share.take_slot() is None
    overflow = share.for_worker(None)
    assert isinstance(overflow, FixedCores) and overflow.threads() == 1
    share.release_slot(2)
    assert share.take_slot() == 2


def _compute_until_killed(share: CoreShare, slot: int, started) -> None:
    worker = share.for_worker(slot)
    with worker.computing():
        started.set()
        multiprocessing.Event().wait(60)


def test_a_forked_workers_mark_is_seen_by_the_others_and_cleared_when_it_dies() -> None:
    context = multiprocessing.get_context("fork")
    share = CoreShare(cores=2, workers=2)
    mine, theirs = share.take_slot(), share.take_slot()
    started = context.Event()
    other = context.Process(target=_compute_until_killed, args=(share, theirs, started))
    other.start()
    try:
        assert started.wait(30)
        assert share.for_worker(mine).threads() == 1
        other.kill()  # killed mid-forward: its mark stays until the master hears of it
        other.join(10)
        assert share.threads() == 1
        share.release_slot(theirs)  # what the master's child_exit does
        assert share.threads() == 2
    finally:
        if other.is_alive():
            other.kill()


class _RecordingCores:
    fair_share = 1

    def __init__(self) -> None:
        self.active = False
        self.asked = 0

    def threads(self) -> int:
        assert self.active, "threads are chosen while marked as computing"
        self.asked += 1
        return 3

    @contextlib.contextmanager
    def computing(self):
        self.active = True
        try:
            yield
        finally:
            self.active = False


def test_the_engine_sizes_each_forward_pass_while_marked_as_computing(model_dir: Path, monkeypatch) -> None:
    engine = NLIEngine.from_pretrained(str(model_dir), batch_size=2)
    cores = _RecordingCores()
    engine.start(cores)
    used: list[int] = []
    monkeypatch.setattr(engine.backend, "use_threads", used.append)
    assert cores.asked == 1  # the warm-up
    pairs = [Pair(*SAMPLE_PAIRS[i % len(SAMPLE_PAIRS)]) for i in range(5)]
    engine.predict(pairs)  # 3 chunks of at most 2 pairs
    assert used == [3, 3, 3]
    assert not cores.active


def test_the_torch_backend_applies_the_thread_count(model_dir: Path) -> None:
    import torch

    engine = NLIEngine.from_pretrained(str(model_dir))
    before = torch.get_num_threads()
    try:
        engine.backend.use_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def master_share(monkeypatch):
    monkeypatch.delenv("NLI_TORCH_THREADS", raising=False)
    monkeypatch.setattr(gunicorn_hooks, "_core_share", None)
    monkeypatch.setattr("gc.freeze", lambda: None)
    return SimpleNamespace(cfg=SimpleNamespace(workers=2))


def test_the_master_gives_each_worker_a_slot_and_frees_it_when_the_worker_exits(master_share, monkeypatch) -> None:
    monkeypatch.setattr("nli_service.metrics.mark_worker_dead", lambda pid: None)
    workers = [SimpleNamespace(pid=100 + i) for i in range(2)]
    for worker in workers:
        gunicorn_hooks.pre_fork(master_share, worker)
    assert {worker.core_slot for worker in workers} == {0, 1}
    share = gunicorn_hooks._core_share
    share._computing[workers[0].core_slot] = True  # it died mid-forward
    gunicorn_hooks.child_exit(master_share, workers[0])
    assert not share._computing[workers[0].core_slot]
    replacement = SimpleNamespace(pid=200)
    gunicorn_hooks.pre_fork(master_share, replacement)
    assert replacement.core_slot == workers[0].core_slot


def test_a_fixed_thread_count_needs_no_slots(master_share, monkeypatch) -> None:
    monkeypatch.setenv("NLI_TORCH_THREADS", "1")
    worker = SimpleNamespace(pid=100)
    gunicorn_hooks.pre_fork(master_share, worker)
    assert gunicorn_hooks._core_share is None and not hasattr(worker, "core_slot")
