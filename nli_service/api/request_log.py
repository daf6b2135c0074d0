"""Request ids and the one access record per request."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Sequence

from flask import Flask, Response, current_app, g, request

from nli_service.api import arrival, service
from nli_service.inference.types import Pair
from nli_service.logs import current_request_id

log = logging.getLogger("nli_service.access")

REQUEST_ID_HEADER = "X-Request-ID"
MODEL_VERSION_HEADER = "X-Model-Version"  # the repository version that answered (NLI_MODEL_REPOSITORY)
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def _incoming_request_id() -> str:
    sent = request.headers.get(REQUEST_ID_HEADER, "")
    return sent if _VALID_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex


def account_for(pairs: Sequence[Pair]) -> None:
    """Note ``pairs`` in this request's access record."""
    g.pairs = len(pairs)
    g.input_chars = sum(pair.characters for pair in pairs)
    if current_app.config["NLI_SETTINGS"].log_inputs:
        g.logged_inputs = [{"premise": p.premise, "hypothesis": p.hypothesis} for p in pairs]


def _before_request() -> None:
    g.request_started = time.monotonic()
    g.received_at = arrival.received_at(g.request_started)
    g.request_id = _incoming_request_id()
    g.request_id_token = current_request_id.set(g.request_id)


def _after_request(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = g.request_id
    model, model_version = service.served()
    if model_version is not None:
        response.headers[MODEL_VERSION_HEADER] = str(model_version)
    record = {
        "request_id": g.request_id,
        "method": request.method,
        "path": request.path,
        "status": response.status_code,
        "latency_ms": round((time.monotonic() - g.request_started) * 1000, 2),
        "queued_ms": round((g.request_started - g.received_at) * 1000, 2),
        "pairs": g.get("pairs", 0),
        "input_chars": g.get("input_chars", 0),
        "worker_pid": os.getpid(),
        "model": model,
        "model_version": model_version,
    }
    if "api_key_name" in g:
        record["api_key"] = g.api_key_name  # the key's name, never the key
    if "logged_inputs" in g:
        record["inputs"] = g.logged_inputs
    log.info("request", extra=record)
    return response


def _teardown_request(error: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        current_request_id.reset(token)


def init_app(app: Flask) -> None:
    """Give every request an id (echoed in ``X-Request-ID``) and an access record."""
    app.before_request(_before_request)
    app.after_request(_after_request)
    app.teardown_request(_teardown_request)
