"""Count every HTTP request in the service's metrics: by method, route and status, with its latency."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from nli_service.metrics import IN_FLIGHT, KEY_REQUESTS, REQUEST_LATENCY, REQUESTS

_KNOWN_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


def _endpoint() -> str:
    # The route pattern, not the raw path, keeps label cardinality bounded.
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def _method() -> str:
    return request.method if request.method in _KNOWN_METHODS else "OTHER"


def _before_request() -> None:
    g.metrics_started = time.perf_counter()
    IN_FLIGHT.inc()


def _after_request(response: Response) -> Response:
    method, endpoint = _method(), _endpoint()
    REQUESTS.labels(method=method, endpoint=endpoint, status=str(response.status_code)).inc()
    REQUEST_LATENCY.labels(method=method, endpoint=endpoint).observe(time.perf_counter() - g.metrics_started)
    if "api_key_name" in g:
        KEY_REQUESTS.labels(key=g.api_key_name, status=str(response.status_code)).inc()
    return response


def _teardown_request(error: BaseException | None) -> None:
    if "metrics_started" in g:
        IN_FLIGHT.dec()


def init_app(app: Flask) -> None:
    """Count every request of ``app``."""
    app.before_request(_before_request)
    app.after_request(_after_request)
    app.teardown_request(_teardown_request)
