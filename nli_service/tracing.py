"""OpenTelemetry tracing: the SDK set up in each serving process, spans sent over OTLP/HTTP.

Off unless ``NLI_OTLP_ENDPOINT`` is set: then no SDK object exists and the code that makes
spans (``api/request_trace.py``, the batcher, the engine) talks to the OpenTelemetry API's
no-op tracer, which costs a function call per span. On, :func:`start_tracing` builds a
``TracerProvider`` with a ``BatchSpanProcessor`` (its export thread) and an OTLP/HTTP
exporter. It runs in each worker after the fork (Gunicorn's ``post_worker_init``) or in
``python app.py``, never in the Gunicorn master: a thread started before a fork does not
exist in the child. At exit, :func:`stop_tracing` sends what is left, waiting at most
:data:`FLUSH_SECONDS`.

The SDK's own ``OTEL_*`` variables apply: ``OTEL_SERVICE_NAME`` (default ``nli-service``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_HEADERS`` / ``_TIMEOUT``, ``OTEL_BSP_*``
(batching, e.g. ``OTEL_BSP_SCHEDULE_DELAY``), ``OTEL_TRACES_SAMPLER`` (default: parent-based,
always on). A caller's W3C ``traceparent`` is continued (the API's default propagator).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import TYPE_CHECKING

from opentelemetry import trace

from nli_service.config import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "nli-service"
TRACES_PATH = "/v1/traces"
FLUSH_SECONDS = 2.0  # on exit: inside Gunicorn's graceful timeout, short enough for a recycled worker

_provider: TracerProvider | None = None  # this process's, once started
_provider_pid: int | None = None


def traces_url(endpoint: str) -> str:
    """The collector's traces URL: ``http://host:4318`` gets OTLP's ``/v1/traces`` (a URL ending in it is kept)."""
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def start_tracing(settings: Settings) -> bool:
    """Send this process's spans to ``NLI_OTLP_ENDPOINT``; False (nothing created) when it is unset."""
    global _provider, _provider_pid
    if not settings.otlp_endpoint:
        return False
    if _provider is not None and _provider_pid == os.getpid():
        return True
    # Imported only here: with tracing off the SDK is never loaded.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {"service.instance.id": f"{os.uname().nodename}:{os.getpid()}"}
    if not os.environ.get("OTEL_SERVICE_NAME"):  # the variable wins when set (Resource.create reads it)
        attributes[SERVICE_NAME] = DEFAULT_SERVICE_NAME
    # The SDK's own exit handler may wait 30 s for an unreachable collector: ours is bounded.
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint))))
    trace.set_tracer_provider(provider)
    _provider, _provider_pid = provider, os.getpid()
    atexit.register(stop_tracing)  # a Gunicorn worker (stopped or recycled) and app.py exit through sys.exit
    log.info("tracing on", extra={"otlp_endpoint": traces_url(settings.otlp_endpoint)})
    return True


def stop_tracing(timeout: float = FLUSH_SECONDS) -> None:
    """Export the spans still queued and stop the export thread, waiting at most ``timeout`` seconds.

    The SDK's own shutdown may wait 30 s for an unreachable collector, so it runs in a daemon
    thread that this process stops waiting for."""
    global _provider
    provider = _provider if _provider_pid == os.getpid() else None
    if provider is None:
        return
    _provider = None
    stopping = threading.Thread(target=provider.shutdown, name="nli-tracing-shutdown", daemon=True)
    stopping.start()
    stopping.join(timeout)
    if stopping.is_alive():
        log.warning("spans not all exported before exit", extra={"timeout_seconds": timeout})
