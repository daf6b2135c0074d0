"""Cross-request micro-batching: concurrent requests of one worker share forward passes.

Used with threaded workers (``NLI_WORKER_CLASS=gthread``). Request threads
tokenise their own pairs and queue them; one batcher thread takes everything
queued, runs it through the engine's length-sorted chunks, and hands each request
its rows. Until ``max_pairs`` pairs are gathered it waits up to ``max_wait`` for
requests still being tokenised, and for as many requests as the last pass answered
plus those that queued during it: clients whose answers just left usually send their
next request within a millisecond or two, and without the wait passes settle into
alternating halves.

Admission is by time as well as by size. The batcher keeps its :class:`Pace` (seconds per
pair of its recent passes); a request that the pairs ahead of it and its own would carry past
its deadline is refused at once with :class:`Overloaded` (the API says 429, with a
``Retry-After`` of the time the queue needs to drain), as is one that would push the queue
past ``max_queued_pairs`` (a memory bound). A request whose deadline passes while queued, or
whose time left is shorter than its own compute time when its turn comes, is answered with
:class:`RequestTimedOut` and never computed. The batcher thread survives anything a pass
raises: the requests of that pass get the error, later requests are served.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from nli_service import metrics
from nli_service.inference.engine import Encoded, NLIEngine, Scores
from nli_service.inference.types import Pair, Prediction
from nli_service.serving.deadline import Deadline, DeadlineExceeded
from nli_service.serving.errors import ClientGone, Overloaded, RequestTimedOut
from nli_service.serving.pace import Pace
from nli_service.serving.pass_trace import QueueWait, traced_pass
from nli_service.serving.shared_cores import SharedCores

log = logging.getLogger(__name__)

# Admit a request only if its expected time, half as long again, fits in its time left: the
# estimate leaves out decoding, tokenising and sending, and other work on the machine (a
# sibling worker's pass, the 429s' decoding) may slow this pass.
_HEADROOM = 1.5


@dataclass
class _Job:
    encoded: Encoded
    deadline: Deadline | None
    done: threading.Event = field(default_factory=threading.Event)
    logits: torch.Tensor | None = None
    error: BaseException | None = None
    abandoned: bool = False
    wait: QueueWait = field(default_factory=QueueWait)  # made in the request's thread, as the job

    @property
    def size(self) -> int:
        return len(self.encoded.lengths)

    def expired(self) -> bool:
        """Nobody waits for this job any more: its thread gave up, its deadline passed or its client went."""
        return self.abandoned or (self.deadline is not None and (self.deadline.expired() or self.deadline.abandoned()))

    def too_late(self, pace: Pace) -> bool:
        """Its time left is shorter than its own expected compute time."""
        expected = pace.seconds_for(self.size)
        return self.deadline is not None and expected is not None and expected > self.deadline.remaining()

    def drop(self, reason: str | None = None) -> None:
        """Answer this job uncomputed, saying why."""
        client_gone = self.deadline is not None and not self.deadline.expired() and self.deadline.abandoned()
        metrics.DROPPED.labels(reason=reason or ("client_gone" if client_gone else "deadline")).inc()
        seconds = self.deadline.seconds if self.deadline is not None else 0
        self.finish(error=ClientGone() if client_gone else RequestTimedOut(seconds))

    def finish(self, logits: torch.Tensor | None = None, error: BaseException | None = None) -> None:
        self.logits, self.error = logits, error
        self.wait.end(error)  # if its pass has not ended it: answered uncomputed
        self.done.set()


class _AllExpired:
    """Checked by the engine between chunks: stop a batch once none of its requests waits."""

    def __init__(self, jobs: list[_Job]) -> None:
        self.jobs = jobs

    def check(self) -> None:
        if all(job.expired() for job in self.jobs):
            raise DeadlineExceeded(max(job.deadline.seconds if job.deadline else 0 for job in self.jobs))


class MicroBatcher:
    """An engine's ``logits``/``predict`` calls, batched across threads (a :class:`Predictor`)."""

    def __init__(
        self,
        engine: NLIEngine,
        max_pairs: int,
        max_wait: float,
        max_queued_pairs: int = 0,
        cores: SharedCores | None = None,
    ) -> None:
        self.engine = engine
        self.cores = cores  # lends idle workers' cores to a lone small pass
        self.max_pairs = max_pairs
        self.max_wait = max_wait
        self.max_queued_pairs = max_queued_pairs  # 0: no limit
        self._queue: deque[_Job] = deque()
        self._queued_pairs = 0  # in the queue, plus being tokenised for it
        self._arriving = 0  # requests tokenising now, about to queue
        self._recent_requests = 0  # answered by the last pass, plus queued during it
        self.pace = Pace()
        self._pass_pairs = 0  # of the pass computing now
        self._pass_started = 0.0
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._serve_forever, name="nli-batcher", daemon=True)
        self._thread.start()

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    @property
    def labels(self) -> Any:
        return self.engine.labels

    def describe(self) -> dict[str, Any]:
        return self.engine.describe()

    def predict(self, pairs: Sequence[Pair], deadline: Deadline | None = None) -> list[Prediction]:
        return self.engine.to_predictions(self.scores(pairs, deadline))

    def scores(self, pairs: Sequence[Pair], deadline: Deadline | None = None) -> Scores:
        """Queue ``pairs`` and wait for their logits, at most until ``deadline``."""
        self._reserve(len(pairs), deadline)
        try:
            job = _Job(self._encode(pairs), deadline)
        except BaseException:
            self._release(len(pairs))
            raise
        with self._condition:
            self._queue.append(job)
            self._condition.notify_all()
        if not job.done.wait(None if deadline is None else max(deadline.remaining(), 0)):
            job.abandoned = True
            raise RequestTimedOut(deadline.seconds)
        if job.error is not None:
            raise job.error
        return Scores(job.logits, list(job.encoded.truncated))

    def _reserve(self, pairs: int, deadline: Deadline | None) -> None:
        """Count ``pairs`` in the queue, or refuse them (:class:`Overloaded`) if they cannot be answered in time."""
        with self._condition:
            queued = self._queued_pairs
            if self.max_queued_pairs and queued and queued + pairs > self.max_queued_pairs:
                wait = self._busy_seconds() or 1.0
                raise Overloaded(f"{queued} pairs are already queued (limit {self.max_queued_pairs})", wait)
            if deadline is not None and (queued or self._pass_pairs):
                ahead = self._busy_seconds()
                own = self.pace.seconds_for(pairs)
                if ahead is not None and own is not None and (ahead + own) * _HEADROOM > deadline.remaining():
                    raise Overloaded(
                        f"the pairs ahead and these {pairs} need about {ahead + own:.1f} s, "
                        f"more than the {max(deadline.remaining(), 0):.1f} s left to this request's deadline",
                        ahead,
                    )
            self._queued_pairs += pairs
            metrics.QUEUED_PAIRS.inc(pairs)

    def _busy_seconds(self) -> float | None:
        """Expected seconds until the pass computing now and everything queued are done (under the lock)."""
        queued = self.pace.seconds_for(self._queued_pairs)
        computing = self.pace.seconds_for(self._pass_pairs)
        if queued is None or computing is None:
            return None
        return queued + max(computing - (time.monotonic() - self._pass_started), 0.0)

    def _release(self, pairs: int) -> None:
        with self._condition:
            self._queued_pairs -= pairs
            metrics.QUEUED_PAIRS.dec(pairs)

    def _encode(self, pairs: Sequence[Pair]) -> Encoded:
        """Tokenise in the request's thread; meanwhile the batcher may wait for this request."""
        with self._condition:
            self._arriving += 1
        try:
            return self.engine.encode(pairs)
        finally:
            with self._condition:
                self._arriving -= 1
                self._condition.notify_all()

    def _gather(self, jobs: list[_Job]) -> list[_Job]:
        """Move queued jobs into ``jobs`` (the caller's, so a failure here still answers them); the live ones."""
        with self._condition:
            expected = self._recent_requests + len(self._queue)
            while not self._queue:
                self._condition.wait()
            wait_until = time.monotonic() + self.max_wait
            while sum(job.size for job in jobs) < self.max_pairs:
                if self._queue:
                    jobs.append(self._queue.popleft())
                    self._queued_pairs -= jobs[-1].size
                    metrics.QUEUED_PAIRS.dec(jobs[-1].size)
                    continue
                remaining = wait_until - time.monotonic()
                if remaining <= 0 or (self._arriving == 0 and len(jobs) >= expected):
                    break
                self._condition.wait(remaining)
            self._recent_requests = len(jobs)
        live = []
        for job in jobs:
            if job.expired():
                job.drop()
            elif job.too_late(self.pace):
                job.drop("too_late")
            else:
                live.append(job)
        return live

    def _run(self, jobs: list[_Job]) -> None:
        pairs = sum(job.size for job in jobs)
        with self._condition:
            self._pass_pairs, self._pass_started = pairs, time.monotonic()
        try:
            cores = self.cores.computing(pairs) if self.cores is not None else contextlib.nullcontext()
            with cores, traced_pass(jobs):
                logits = self.engine.run(Encoded.concatenate([job.encoded for job in jobs]), _AllExpired(jobs))
            self.pace.record(pairs, time.monotonic() - self._pass_started)
        except DeadlineExceeded as exceeded:
            for job in jobs:
                job.finish(error=RequestTimedOut(exceeded.seconds))
            return
        except Exception as error:  # noqa: BLE001 - every waiting request gets the failure
            log.exception("batched forward failed")
            for job in jobs:
                job.finish(error=error)
            return
        finally:
            with self._condition:
                self._pass_pairs = 0
        offset = 0
        for job in jobs:
            job.finish(logits=logits[offset : offset + job.size])
            offset += job.size

    def _serve_forever(self) -> None:
        while True:
            jobs: list[_Job] = []
            try:
                live = self._gather(jobs)
                if live:
                    self._run(live)
            except Exception as error:  # noqa: BLE001 - the thread must outlive any one pass
                log.exception("batcher pass failed; serving on")
                for job in jobs:
                    if not job.done.is_set():
                        job.finish(error=error)
