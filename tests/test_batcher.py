"""Cross-request micro-batching: shared forward passes, same results, deadlines honoured."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from model_factory import WORDS
from serving import wait_for

from nli_service.inference.engine import NLIEngine
from nli_service.inference.types import NLI_LABELS, Pair
from nli_service.serving.batcher import MicroBatcher
from nli_service.serving.deadline import Deadline
from nli_service.serving.errors import Overloaded, RequestTimedOut


def _pairs(count: int, seed: int) -> list[Pair]:
    rng = random.Random(seed)
    return [
        Pair(" ".join(rng.choices(WORDS, k=rng.randint(3, 40))), " ".join(rng.choices(WORDS, k=4)))
        for _ in range(count)
    ]


@pytest.fixture
def engine(model_dir: Path) -> NLIEngine:
    return NLIEngine.from_pretrained(str(model_dir), batch_size=32)


def _slow(engine: NLIEngine, seconds: float) -> list[int]:
    """Make each forward pass take ``seconds``; returns the list of pairs per forward."""
    forwarded: list[int] = []
    original = engine.forward

    def forward(encoded, chunk):
        forwarded.append(len(chunk))
        time.sleep(seconds)
        return original(encoded, chunk)

    engine.forward = forward
    return forwarded


class _Gate:
    """Holds every forward pass of ``engine`` until :meth:`open`; ``entered`` is set once one is held."""

    def __init__(self, engine: NLIEngine) -> None:
        self.forwarded: list[int] = []  # pairs per forward
        self.entered = threading.Event()
        self._opened = threading.Event()
        original = engine.forward

        def forward(encoded, chunk):
            self.forwarded.append(len(chunk))
            self.entered.set()
            assert self._opened.wait(30), "the test never opened the gate"
            return original(encoded, chunk)

        engine.forward = forward

    def open(self) -> None:
        self._opened.set()


def test_concurrent_requests_share_forward_passes_and_get_their_own_results(engine: NLIEngine) -> None:
    expected = {i: engine.predict(_pairs(2, seed=i)) for i in range(12)}
    forwarded = _slow(engine, 0.05)
    batcher = MicroBatcher(engine, max_pairs=32, max_wait=0.005)
    with ThreadPoolExecutor(12) as pool:
        results = dict(zip(range(12), pool.map(lambda i: batcher.predict(_pairs(2, seed=i)), range(12)), strict=True))
    assert len(forwarded) < 12, f"12 requests took {len(forwarded)} forward passes"
    assert sum(forwarded) == 24
    for i in range(12):
        for got, want in zip(results[i], expected[i], strict=True):
            assert max(abs(got.scores[k] - want.scores[k]) for k in NLI_LABELS) < 1e-5


def test_a_request_past_its_deadline_in_the_queue_is_dropped_uncomputed(engine: NLIEngine) -> None:
    gate = _Gate(engine)
    batcher = MicroBatcher(engine, max_pairs=4, max_wait=0)
    blocker = threading.Thread(target=batcher.predict, args=(_pairs(4, seed=1),))
    blocker.start()
    try:
        assert gate.entered.wait(10), "the blocker's forward pass never started"  # the batcher is busy
        started = time.monotonic()
        with pytest.raises(RequestTimedOut):
            batcher.predict(_pairs(3, seed=2), Deadline(0.1))
        assert time.monotonic() - started < 0.5, "answered at its deadline, not after the busy forward"
    finally:
        gate.open()
    blocker.join()
    # Queued after the expired request, this one is gathered with it or after it.
    assert len(batcher.predict(_pairs(1, seed=3))) == 1, "the batcher keeps serving"
    assert sum(gate.forwarded) == 4 + 1, f"{gate.forwarded}: the expired request's 3 pairs were computed"


def test_a_failing_forward_reaches_every_request_of_the_batch(engine: NLIEngine) -> None:
    def broken(encoded, chunk):
        raise RuntimeError("boom")

    engine.forward = broken
    batcher = MicroBatcher(engine, max_pairs=32, max_wait=0.01)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.predict, _pairs(1, seed=i)) for i in range(4)]
    for future in futures:
        with pytest.raises(RuntimeError, match="boom"):
            future.result()


def test_threaded_app_batches_across_requests(make_app) -> None:
    app = make_app(NLI_WORKER_CLASS="gthread", NLI_BATCH_SIZE=16)
    pairs = [{"premise": p.premise, "hypothesis": p.hypothesis} for p in _pairs(16, seed=9)]
    solo = [app.test_client().post("/predict", json=pair).get_json() for pair in pairs]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda pair: app.test_client().post("/predict", json=pair).get_json(), pairs))
    for a, b in zip(solo, together, strict=True):
        assert a["label"] == b["label"]
        assert max(abs(a["scores"][k] - b["scores"][k]) for k in NLI_LABELS) < 1e-5


def test_a_batch_whose_requests_all_gave_up_stops_between_chunks(engine: NLIEngine) -> None:
    engine.batch_size = 2
    forwarded = _slow(engine, 0.2)
    batcher = MicroBatcher(engine, max_pairs=32, max_wait=0)
    with pytest.raises(RequestTimedOut):
        batcher.predict(_pairs(20, seed=4), Deadline(0.3))
    # The batcher takes this one only once it has left the abandoned batch.
    assert len(batcher.predict(_pairs(1, seed=5))) == 1
    abandoned = forwarded[:-1]
    assert len(abandoned) <= 4, f"kept computing {len(abandoned)} of 10 chunks for nobody"


def test_a_full_queue_refuses_new_requests_at_once_and_accepts_them_again_once_drained(engine: NLIEngine) -> None:
    gate = _Gate(engine)
    batcher = MicroBatcher(engine, max_pairs=2, max_wait=0.0, max_queued_pairs=4)
    with ThreadPoolExecutor(4) as pool:
        try:
            running = pool.submit(batcher.predict, _pairs(2, seed=0))  # taken by the batcher: not queued any more
            assert gate.entered.wait(10), "the first forward pass never started"
            queued = [pool.submit(batcher.predict, _pairs(2, seed=i)) for i in (1, 2)]  # 4 pairs wait
            wait_for(lambda: batcher._queued_pairs == 4, timeout=10, what="4 pairs queued")
            started = time.monotonic()
            with pytest.raises(Overloaded, match="4 pairs are already queued"):
                batcher.predict(_pairs(1, seed=3))
            assert time.monotonic() - started < 0.05, "refused at once, not after waiting"
        finally:
            gate.open()
        assert all(len(f.result()) == 2 for f in [running, *queued])
    assert len(batcher.predict(_pairs(3, seed=4))) == 3, "accepted again once the queue drained"


def test_an_idle_worker_takes_a_request_larger_than_the_queue_limit(engine: NLIEngine) -> None:
    batcher = MicroBatcher(engine, max_pairs=8, max_wait=0.0, max_queued_pairs=4)
    assert len(batcher.predict(_pairs(10, seed=5))) == 10


def test_clients_answered_by_a_pass_are_waited_for_so_passes_stay_full(engine: NLIEngine) -> None:
    """Closed-loop clients send their next request a few ms after their answer: the next pass
    waits for them (up to max_wait) instead of leaving with whichever came back first."""
    _slow(engine, 0.01)
    passes: list[int] = []  # requests per pass
    run = engine.run
    engine.run = lambda encoded, deadline=None: passes.append(len(encoded.lengths)) or run(encoded, deadline)
    batcher = MicroBatcher(engine, max_pairs=32, max_wait=0.5)

    def client(think_seconds: float) -> None:
        for seed in range(6):
            batcher.predict(_pairs(1, seed=seed))
            time.sleep(think_seconds)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(client, (0.002, 0.005, 0.008, 0.012)))
    assert sum(passes) == 24
    assert len(passes) <= 8, f"passes of {passes} requests: returning clients were not waited for"


def test_a_lone_client_is_not_held_back_by_the_wait(engine: NLIEngine) -> None:
    batcher = MicroBatcher(engine, max_pairs=32, max_wait=1.0)
    for seed in range(4):
        started = time.monotonic()
        batcher.predict(_pairs(1, seed=seed))
        assert time.monotonic() - started < 0.5, "a single client waited for requests that never come"


def test_a_request_the_queue_ahead_would_carry_past_its_deadline_is_refused_at_once(engine: NLIEngine) -> None:
    engine.batch_size = 2
    forwarded = _slow(engine, 0.1)  # 0.05 s per pair
    batcher = MicroBatcher(engine, max_pairs=2, max_wait=0.0)
    batcher.predict(_pairs(4, seed=0))  # measures the pace
    assert batcher.pace.seconds_for(20) == pytest.approx(1.0, rel=0.5)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(batcher.predict, _pairs(20, seed=1))  # about 1 s
        wait_for(lambda: len(forwarded) > 2, timeout=10, what="the long pass started")
        started = time.monotonic()
        with pytest.raises(Overloaded, match="more than the .* s left to this request's deadline") as refused:
            batcher.predict(_pairs(4, seed=2), Deadline(0.6))
        assert time.monotonic() - started < 0.05, "refused at once, not after waiting"
        assert refused.value.retry_after >= 1
        computed = len(forwarded)
        assert len(batcher.predict(_pairs(4, seed=3), Deadline(30))) == 4, "a request with time enough is taken"
        assert len(running.result()) == 20
    assert sum(forwarded[computed:]) == 18 + 4, "the refused request was never computed"


def test_a_request_whose_turn_comes_too_late_to_finish_is_dropped_uncomputed(engine: NLIEngine) -> None:
    engine.batch_size = 2
    _slow(engine, 0.05)  # 0.025 s per pair
    batcher = MicroBatcher(engine, max_pairs=2, max_wait=0.0)
    batcher.predict(_pairs(4, seed=0))
    gate = _Gate(engine)  # the next pass takes as long as the test wants: longer than the pace said
    with ThreadPoolExecutor(2) as pool:
        try:
            running = pool.submit(batcher.predict, _pairs(2, seed=1))
            assert gate.entered.wait(10), "the pass never started"
            late = pool.submit(batcher.predict, _pairs(20, seed=2), Deadline(1.5))  # needs ~0.5 s: admitted
            wait_for(lambda: batcher._queued_pairs == 20, timeout=10, what="20 pairs queued")
            time.sleep(1.1)  # now 0.4 s are left, less than the 0.5 s it needs
        finally:
            gate.open()
        with pytest.raises(RequestTimedOut):
            late.result(timeout=10)
        assert len(running.result()) == 2
    assert sum(gate.forwarded) == 2, "the late request was computed although it could not finish"
