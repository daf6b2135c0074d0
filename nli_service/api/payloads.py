"""Decode request bodies and validate them with the models of :mod:`nli_service.schemas`.

Every rule fails with an :class:`ApiError` whose message names the field (the schemas'
:class:`~nli_service.schemas.RequestError`, with its status: 400, or 413 over a limit).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel

from nli_service import schemas
from nli_service.api import request_trace, service
from nli_service.api.errors import ApiError

JsonObject = dict[str, Any]
M = TypeVar("M", bound=BaseModel)


def read_json_object() -> JsonObject:
    """The request body as a JSON object: 415 if not JSON, 400 if malformed, 413 if too big."""
    if not request.is_json:
        raise ApiError(f"Content-Type must be application/json, got {request.mimetype or 'none'!r}", 415)
    raw = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError("request body is not valid UTF-8") from None
    except (ValueError, RecursionError) as error:
        raise ApiError(f"request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError(f"request body must be a JSON object, got {schemas.json_type(body)}")
    return body


def parse(model: type[M], body: object) -> M:
    """``body`` validated by ``model`` against this app's limits (``NLI_MAX_PAIRS``, ...)."""
    try:
        return schemas.validate(model, body, schemas.Limits.from_settings(service.settings()))
    except schemas.RequestError as error:
        raise ApiError(error.message, error.status) from None


def read(model: type[M]) -> M:
    """The request body, decoded and validated by ``model`` (the ``decode`` span)."""
    with request_trace.stage("decode") as span:
        if span.is_recording():
            span.set_attribute("http.request.body.size", request.content_length or 0)
        return parse(model, read_json_object())
