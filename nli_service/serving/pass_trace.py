"""Trace spans of the cross-request batcher: each request's queue wait, and each batched pass.

One pass serves several requests, but a span has one parent. The ``batch`` span (and the
engine's ``forward`` spans inside it) is a child of the pass's first traced request (the one
that waited longest), and links to every request's ``queue_wait`` span; each ``queue_wait`` ends
when its pass starts and links back to that ``batch`` span. So every trace shows where its
request waited and which pass served it (one click away in Jaeger), and the work of a pass
appears once, not copied into each trace, so summed span times stay the real compute time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from nli_service.logs import current_request_id

tracer = trace.get_tracer("nli_service.serving")


class QueueWait:
    """One request's wait in the queue: a ``queue_wait`` span started in the request's thread."""

    def __init__(self) -> None:
        self.request = trace.get_current_span()  # the request's span: a pass's parent if it comes first
        self.span = trace.INVALID_SPAN  # a no-op unless the request is traced
        self.request_id: str | None = None
        if self.request.is_recording():
            self.request_id = current_request_id.get()
            self.span = tracer.start_span("queue_wait", attributes={"nli.request_id": self.request_id or ""})
        self._ended = False

    def end(self, error: BaseException | None = None, batch: trace.Span | None = None) -> None:
        """End the wait (once): its pass starts (``batch``), or the request is answered uncomputed (``error``)."""
        if self._ended:
            return
        self._ended = True
        if batch is not None:
            self.span.add_link(batch.get_span_context())
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self.span.end()


class Waiting(Protocol):
    """A queued request as the batcher holds it."""

    wait: QueueWait

    @property
    def size(self) -> int: ...


def _link_attributes(job: Waiting) -> dict[str, str | int]:
    return {"nli.request_id": job.wait.request_id or "", "nli.pairs": job.size}


@contextlib.contextmanager
def traced_pass(jobs: Sequence[Waiting]) -> Iterator[None]:
    """A ``batch`` span over one pass of ``jobs``, current while the engine runs it; ends their waits."""
    traced = [job.wait for job in jobs if job.wait.span.is_recording()]
    if not traced:  # tracing off, or no request of this pass sampled: no span below either
        yield
        return
    links = [
        trace.Link(job.wait.span.get_span_context(), _link_attributes(job))
        for job in jobs
        if job.wait.span.is_recording()
    ]
    attributes = {"nli.batch.requests": len(jobs), "nli.pairs": sum(job.size for job in jobs)}
    parent = trace.set_span_in_context(traced[0].request)  # the oldest traced request
    with tracer.start_as_current_span("batch", context=parent, links=links, attributes=attributes) as span:
        for job in jobs:
            job.wait.span.set_attribute("nli.pairs", job.size)
            job.wait.end(batch=span)
        try:
            yield
        except BaseException as error:  # the deadline's is not an Exception: the API would not record it
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
