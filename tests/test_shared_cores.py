"""Lending idle workers' cores to a lone small pass (the shared table is in-process here)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from nli_service.inference.engine import NLIEngine
from nli_service.inference.types import Pair
from nli_service.server.worker_table import WorkerTable
from nli_service.serving.batcher import MicroBatcher
from nli_service.serving.shared_cores import QUIET_MS, SharedCores


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _two_workers(max_pairs: int = 2, max_wait: float = 0.2) -> tuple[WorkerTable, SharedCores, int]:
    table = WorkerTable(slots=4)
    mine, peer = table.claim(), table.claim()
    return table, SharedCores(table, mine, own_threads=1, all_threads=2, max_pairs=max_pairs, max_wait=max_wait), peer


def test_a_lone_small_pass_borrows_every_core_and_gives_them_back() -> None:
    table, cores, peer = _two_workers()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with cores.computing(pairs=1) as threads:
            assert threads == 2 and torch.get_num_threads() == 2
            assert table.most_threads_elsewhere(peer) == 2  # the peer sees it borrowing
        assert torch.get_num_threads() == 1
        assert table.most_threads_elsewhere(peer) == 0
    finally:
        torch.set_num_threads(before)


def test_large_passes_and_passes_beside_a_busy_peer_keep_their_own_threads() -> None:
    table, cores, peer = _two_workers()
    with cores.computing(pairs=3) as threads:
        assert threads == 1
    table.publish_computing(peer, 1)
    with cores.computing(pairs=1) as threads:
        assert threads == 1


def test_a_pass_waits_for_a_borrowing_peer_then_runs_but_never_longer_than_max_wait() -> None:
    table, cores, peer = _two_workers(max_wait=5)
    table.publish_computing(peer, 2)
    threading.Timer(0.2, table.publish_computing, (peer, 0)).start()
    started = time.monotonic()
    with cores.computing(pairs=8):
        waited = time.monotonic() - started
    assert 0.15 < waited < 2, f"waited {waited:.3f} s for a 0.2 s pass"

    table, stuck, peer = _two_workers(max_wait=0.1)
    table.publish_computing(peer, 2)  # never finishes
    started = time.monotonic()
    with stuck.computing(pairs=8):
        assert time.monotonic() - started < 2


def test_the_batcher_runs_a_lone_request_on_every_core(model_dir: Path) -> None:
    engine = NLIEngine.from_pretrained(str(model_dir))
    threads_seen: list[int] = []
    forward = engine.forward
    engine.forward = lambda encoded, chunk: threads_seen.append(torch.get_num_threads()) or forward(encoded, chunk)
    _, cores, _ = _two_workers(max_pairs=1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batcher = MicroBatcher(engine, max_pairs=32, max_wait=0.001, cores=cores)
        batcher.predict([Pair("A man plays a guitar.", "A person makes music.")])
        batcher.predict([Pair("A man plays a guitar.", "A person makes music."), Pair("A dog runs.", "An animal.")])
    finally:
        torch.set_num_threads(before)
    assert threads_seen[0] == 2, "one pair alone: every core"
    assert set(threads_seen[1:]) == {1}, "two pairs with max_pairs=1: the worker's own thread"


def test_a_peer_between_passes_under_load_is_not_lent_from() -> None:
    table, cores, peer = _two_workers()
    table.publish_connections(peer, 3)
    table.publish_computing(peer, 1)
    table.publish_computing(peer, 0)  # its pass just ended, its clients will be back
    with cores.computing(pairs=1) as threads:
        assert threads == 1
    time.sleep(QUIET_MS / 1000 + 0.01)
    with cores.computing(pairs=1) as threads:
        assert threads == 2


def test_a_peer_without_connections_lends_even_right_after_a_pass() -> None:
    table, cores, peer = _two_workers()
    table.publish_connections(peer, 0)
    table.publish_computing(peer, 1)
    table.publish_computing(peer, 0)  # answered its last client, who has gone
    with cores.computing(pairs=1) as threads:
        assert threads == 2
