"""The one error-handling layer: every failure becomes ``{"error", "status"}`` JSON.

Validation errors raise :class:`ApiError`; Werkzeug's HTTP errors (404, 405,
413, 415, ...) keep their status and headers (``Allow`` on 405); the serving layer's
refusals get theirs (:data:`SERVING_STATUS`: not ready 503, overloaded 429, deadline
missed 408); anything else is a 500 with a generic message, logged in full.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException

from nli_service import metrics
from nli_service.api.request_trace import record_error
from nli_service.serving.errors import ClientGone, NotReady, Overloaded, RequestTimedOut, ServingError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A client error with a status code and a message safe to show."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers or {}


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    body = {"error": message, "status": status}
    if "request_id" in g:
        body["request_id"] = g.request_id
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _api_error(error: ApiError) -> Response:
    record_error(error)  # the message names the field at fault
    return error_response(error.message, error.status, error.headers)


def _http_error(error: HTTPException) -> Response:
    original = error.get_response()
    kept = {name: value for name, value in original.headers.items() if name in ("Allow", "Retry-After")}
    return error_response(error.description or error.name, error.code or 500, kept)


# 499: nginx's "client closed request"; nobody reads it, but the access log and metrics do.
SERVING_STATUS: dict[type[ServingError], int] = {NotReady: 503, Overloaded: 429, RequestTimedOut: 408, ClientGone: 499}


def _serving_error(error: ServingError) -> Response:
    status = next((code for kind, code in SERVING_STATUS.items() if isinstance(error, kind)), 503)
    record_error(error)
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
    message = str(error)
    if isinstance(error, RequestTimedOut):
        metrics.REQUEST_TIMEOUTS.inc()
        log.warning("request timed out", extra={"timeout_seconds": error.seconds})
        message += "; send fewer or shorter pairs, or raise NLI_REQUEST_TIMEOUT"
    return error_response(message, status, headers)


def _unexpected(error: Exception) -> Response:
    log.exception("unhandled error", exc_info=error)
    record_error(error)
    return error_response("internal server error; the request id identifies the full report in the logs", 500)


def init_app(app: Flask) -> None:
    """Register the JSON error handlers."""
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ServingError, _serving_error)
    app.register_error_handler(Exception, _unexpected)
