"""One trace span per request, continuing the caller's W3C ``traceparent``, and the ``decode`` / ``encode`` spans.

The request hooks are registered only when ``NLI_OTLP_ENDPOINT`` is set; with tracing off the
``decode`` and ``encode`` stages only look at the current span (not recording) and go on. The
request's span is current while it is handled, so the spans below it (``decode``,
``tokenise``, ``queue_wait``, ``forward``, ``encode``) are its children.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flask import Flask, Response, g, jsonify, request
from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel

tracer = trace.get_tracer("nli_service.api")

# Answers that mean the service could not do the work asked: the span is marked an error.
# (Other 4xx are the client's mistakes: OpenTelemetry's HTTP conventions leave them unset.)
REFUSALS = {408, 429, 499}


def _start() -> None:
    route = request.url_rule.rule if request.url_rule is not None else None
    caller = propagate.extract(request.headers)  # W3C traceparent / tracestate (and baggage)
    span = tracer.start_span(
        f"{request.method} {route}" if route else request.method,
        context=caller,
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": request.method,
            "url.path": request.path,
            "nli.request_id": g.request_id,
            **({"http.route": route} if route else {}),
        },
    )
    g.trace_span = span
    g.trace_token = context.attach(trace.set_span_in_context(span))


def _finish(response: Response) -> Response:
    span = g.get("trace_span")
    if span is not None and span.is_recording():
        span.set_attribute("http.response.status_code", response.status_code)
        if "pairs" in g:  # counted by request_log.account_for
            span.set_attribute("nli.pairs", g.pairs)
        if response.status_code >= 500 or response.status_code in REFUSALS:
            span.set_attribute("error.type", str(response.status_code))
            span.set_status(Status(StatusCode.ERROR, f"HTTP {response.status_code}"))
    return response


def _end(error: BaseException | None) -> None:
    span = g.pop("trace_span", None)
    token = g.pop("trace_token", None)
    if span is None:
        return
    if error is not None:  # not turned into a response by the error handlers
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()
    if token is not None:
        context.detach(token)


def record_error(error: BaseException) -> None:
    """Note on the request's span why it was refused or failed (a timeout, a 429, a crash)."""
    trace.get_current_span().record_exception(error)


@contextmanager
def stage(name: str) -> Iterator[trace.Span]:
    """A child span of the request's, for a stage handled in the API (``decode``, ``encode``); none
    (a no-op span) unless the request is traced."""
    if not trace.get_current_span().is_recording():
        yield trace.INVALID_SPAN
        return
    with tracer.start_as_current_span(name) as span:
        yield span


def encode(build: Callable[[], BaseModel]) -> Response:
    """The response built by ``build`` as JSON, in the ``encode`` span."""
    with stage("encode"):
        return jsonify(build().model_dump())


def init_app(app: Flask) -> None:
    """Trace every request of ``app`` if ``NLI_OTLP_ENDPOINT`` is set (after request_log: it reads the request id)."""
    if not app.config["NLI_SETTINGS"].otlp_endpoint:
        return
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_end)
