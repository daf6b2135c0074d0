"""OpenTelemetry traces (issue 17 §6): with ``NLI_OTLP_ENDPOINT`` each request is a span continuing the
caller's W3C ``traceparent``, with children for decode, tokenise, queue wait, each forward pass and
encode; spans are received over OTLP/HTTP by a collector in the test (tests/otlp_receiver.py) and
decoded with ``opentelemetry-proto``. Off by default: no SDK, no export thread, nothing sent."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from opentelemetry import trace
from otlp_receiver import OtlpReceiver, ReceivedSpan
from serving import DEV_SERVER, GUNICORN, service_env, wait_for

from nli_service import tracing
from nli_service.api import request_trace
from nli_service.config import ConfigError, Settings


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    collector = OtlpReceiver().start()
    try:
        yield collector
    finally:
        collector.stop()


@dataclass(frozen=True)
class Sent:
    """A request sent with a ``traceparent``: the caller's trace and span ids, and what it carried."""

    request_id: str
    trace_id: str
    caller_span_id: str
    path: str
    pairs: int
    status: int


def send(
    url: str, path: str, body: dict, request_id: str, pairs: int, headers: dict | None = None, sampled: bool = True
) -> Sent:
    trace_id, caller_span_id = secrets.token_hex(16), secrets.token_hex(8)
    flags = "01" if sampled else "00"
    response = requests.post(
        url + path,
        json=body,
        headers={
            "traceparent": f"00-{trace_id}-{caller_span_id}-{flags}",
            "X-Request-ID": request_id,
            **(headers or {}),
        },
        timeout=30,
    )
    return Sent(request_id, trace_id, caller_span_id, path, pairs, response.status_code)


def unique_pair(tag: str) -> dict[str, str]:
    """A pair no other request sent: the result cache cannot answer it, so it is computed."""
    return {"premise": f"A {tag} walks in the park {secrets.token_hex(4)}.", "hypothesis": "Someone is outside."}


def request_span(spans: list[ReceivedSpan], sent: Sent) -> ReceivedSpan:
    [span] = [s for s in spans if s.is_server and s.attributes.get("nli.request_id") == sent.request_id]
    return span


def child(spans: list[ReceivedSpan], parent: ReceivedSpan, name: str) -> ReceivedSpan:
    [span] = children(spans, parent, name)
    return span


def children(spans: list[ReceivedSpan], parent: ReceivedSpan, name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name and s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id]


def by_id(spans: list[ReceivedSpan], trace_id: str, span_id: str) -> ReceivedSpan:
    [span] = [s for s in spans if s.trace_id == trace_id and s.span_id == span_id]
    return span


def assert_continues_the_callers_trace(spans: list[ReceivedSpan], sent: Sent) -> ReceivedSpan:
    """The request's one server span: the caller's trace and parent, route, status and pair count."""
    span = request_span(spans, sent)
    assert (span.trace_id, span.parent_span_id) == (sent.trace_id, sent.caller_span_id)
    assert span.name == f"POST {sent.path}" and span.attributes["http.route"] == sent.path
    assert span.attributes["http.response.status_code"] == sent.status
    assert span.attributes["nli.pairs"] == sent.pairs
    decode, encode = child(spans, span, "decode"), child(spans, span, "encode")
    assert span.start_ns <= decode.start_ns <= decode.end_ns <= encode.start_ns <= encode.end_ns <= span.end_ns
    return span


def test_over_gunicorn_every_stage_of_a_request_is_a_span_and_a_stopping_worker_sends_them(
    services, model_dir: Path, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    # Export only at exit (a schedule delay of 10 minutes): every span received was sent by the worker's flush.
    env = service_env(
        NLI_MODEL=model_dir,
        NLI_WORKERS=1,
        NLI_THREADS=8,
        NLI_LOG_DIR=tmp_path,
        NLI_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY=600_000,
        OTEL_SERVICE_NAME="nli-under-test",
    )
    with services.running(GUNICORN, env) as service:
        sent = [
            send(service.url, "/predict", unique_pair("dog"), "trace-predict", 1),
            send(
                service.url, "/batch-predict", {"pairs": [unique_pair(f"cat{i}") for i in range(3)]}, "trace-batch", 3
            ),
        ]
        start = threading.Barrier(6)

        def concurrent(number: int) -> Sent:
            start.wait(timeout=10)  # together, so that passes may serve several requests
            return send(service.url, "/predict", unique_pair(f"bird{number}"), f"trace-concurrent-{number}", 1)

        with ThreadPoolExecutor(6) as pool:
            sent += list(pool.map(concurrent, range(6)))
        timed_out = send(
            service.url, "/predict", unique_pair("fox"), "trace-timeout", 1, headers={"X-Request-Timeout": "0.000001"}
        )
        unsampled = send(service.url, "/predict", unique_pair("ant"), "trace-unsampled", 1, sampled=False)
        assert [s.status for s in sent] == [200] * len(sent) and timed_out.status == 408
        assert receiver.requests == 0, "nothing exported before the worker stopped"
    spans = receiver.spans()

    assert {span.resource.get("service.name") for span in spans} == {"nli-under-test"}
    # Every span belongs to a request's trace: none from the warm-up, none from a caller that did not sample.
    assert {span.trace_id for span in spans} == {span.trace_id for span in spans if span.is_server}
    assert unsampled.status == 200 and not [span for span in spans if span.trace_id == unsampled.trace_id]
    for each in sent:
        request = assert_continues_the_callers_trace(spans, each)
        tokenise = child(spans, request, "tokenise")  # in the request's own thread
        assert tokenise.attributes["nli.pairs"] == each.pairs
        wait = child(spans, request, "queue_wait")
        assert wait.attributes["nli.request_id"] == each.request_id and wait.attributes["nli.pairs"] == each.pairs
        # The pass that served it: linked from its wait, linking back to it.
        [to_batch] = wait.links
        batch = by_id(spans, to_batch.trace_id, to_batch.span_id)
        assert batch.name == "batch"
        [back] = [link for link in batch.links if (link.trace_id, link.span_id) == (wait.trace_id, wait.span_id)]
        assert back.attributes == {"nli.request_id": each.request_id, "nli.pairs": each.pairs}
        assert batch.attributes["nli.batch.requests"] == len(batch.links)
        assert batch.attributes["nli.pairs"] == sum(link.attributes["nli.pairs"] for link in batch.links)
        # The batch is a child of the first request of its pass (one of those it links to).
        owner = by_id(spans, batch.trace_id, batch.parent_span_id)
        assert owner.is_server and owner.attributes["nli.request_id"] in {
            link.attributes["nli.request_id"] for link in batch.links
        }
        forwards = children(spans, batch, "forward")
        assert forwards and sum(f.attributes["nli.pairs"] for f in forwards) == batch.attributes["nli.pairs"]
        for forward in forwards:
            assert forward.attributes["nli.padded_tokens"] >= forward.attributes["nli.pairs"] * 3
            assert forward.attributes["nli.model"] and batch.start_ns <= forward.start_ns <= forward.end_ns
        # In order: decoded, tokenised, queued until its pass started, encoded after the pass.
        decode, encode = child(spans, request, "decode"), child(spans, request, "encode")
        assert decode.end_ns <= tokenise.start_ns <= tokenise.end_ns <= wait.start_ns
        assert batch.start_ns <= wait.end_ns <= batch.end_ns <= encode.start_ns

    # A request refused for its deadline: an error span, with the exception recorded, and no pass.
    refused = request_span(spans, timed_out)
    assert refused.attributes["http.response.status_code"] == 408 and refused.error
    assert "exception" in refused.events and refused.trace_id == timed_out.trace_id
    assert not children(spans, refused, "encode")


def test_the_development_server_traces_requests_in_its_own_thread(
    services, model_dir: Path, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    env = service_env(
        NLI_MODEL=model_dir,
        NLI_LOG_DIR=tmp_path,
        NLI_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY=50,
        NLI_PAIR_RATE_LIMIT="2/minute",
    )
    with services.running(DEV_SERVER, env) as service:
        sent = send(service.url, "/batch-predict", {"pairs": [unique_pair(f"owl{i}") for i in range(2)]}, "dev", 2)
        limited = send(service.url, "/predict", unique_pair("elk"), "dev-limited", 1)  # over the 2 pairs a minute
        assert (sent.status, limited.status) == (200, 429)
        # Exported while the server runs (a 50 ms schedule delay); a request's children end, so leave, before it.
        wait_for(
            lambda: any(s.attributes.get("nli.request_id") == "dev-limited" for s in receiver.spans()), 20, "spans"
        )
    spans = receiver.spans()
    refused = request_span(spans, limited)
    assert refused.error and "exception" in refused.events and refused.attributes["http.response.status_code"] == 429
    assert child(spans, refused, "decode") and not children(spans, refused, "tokenise")
    request = assert_continues_the_callers_trace(spans, sent)
    assert request.resource["service.name"] == tracing.DEFAULT_SERVICE_NAME
    # No batcher: tokenise and the forward pass run in the request's thread, directly under its span.
    assert child(spans, request, "tokenise").attributes["nli.pairs"] == 2
    assert child(spans, request, "forward").attributes["nli.pairs"] == 2
    assert not [s for s in spans if s.name in ("queue_wait", "batch")]


def test_without_the_endpoint_nothing_is_traced_or_sent(
    services, model_dir: Path, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    # The SDK's own variable names the collector: tracing stays off all the same.
    env = service_env(
        NLI_MODEL=model_dir, NLI_LOG_DIR=tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY=50
    )
    with services.running(DEV_SERVER, env) as service:
        assert send(service.url, "/predict", unique_pair("hen"), "untraced", 1).status == 200
    assert receiver.requests == 0 and receiver.spans() == []


def test_off_by_default_no_sdk_object_no_hook_no_export_thread(make_app) -> None:
    app = make_app()
    settings: Settings = app.config["NLI_SETTINGS"]
    assert settings.otlp_endpoint is None
    assert tracing.start_tracing(settings) is False
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"  # the API's, delegating to no-op
    assert request_trace._start not in app.before_request_funcs.get(None, [])
    with app.test_client() as client:
        assert client.post("/predict", json=unique_pair("cow")).status_code == 200
    assert not trace.get_current_span().is_recording()
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("OtelBatch")]


def test_the_endpoint_setting() -> None:
    assert Settings.from_env({"NLI_OTLP_ENDPOINT": " http://collector:4318 "}).otlp_endpoint == "http://collector:4318"
    with pytest.raises(ConfigError, match="NLI_OTLP_ENDPOINT"):
        Settings.from_env({"NLI_OTLP_ENDPOINT": "collector:4318"})
    assert tracing.traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("https://otel.example/v1/traces") == "https://otel.example/v1/traces"
