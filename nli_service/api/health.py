"""``GET /health`` (liveness), ``GET /ready`` (readiness) and ``GET /model``."""

from __future__ import annotations

import os
import time

from flask import Blueprint, current_app

from nli_service.api import service
from nli_service.api.errors import error_response
from nli_service.serving import model_versions

bp = Blueprint("health", __name__)
_STARTED = time.monotonic()


@bp.get("/health")
def health() -> dict:
    """Always 200 while the process serves; says whether the model is loaded."""
    nli = service.loaded_service()
    model = nli.describe() if nli is not None else None
    return {
        "status": "ok" if model is not None else "loading",
        "model": model["id"] if model is not None else None,
        "model_version": model["model_version"] if model is not None else None,
        "fallback": model["fallback"] if model is not None else False,
        "model_loaded_at": model["loaded_at"] if model is not None else None,
        "uptime_seconds": round(time.monotonic() - _STARTED, 3),
        "pid": os.getpid(),
    }


@bp.get("/ready")
def ready():
    """200 once the model is loaded, 503 before: for load balancers and orchestrators."""
    nli = service.loaded_service()
    if nli is None:
        return error_response("the model is not loaded yet", 503, {"Retry-After": "5"})
    draining = current_app.config.get("DRAINING")  # set by the server: whether it is stopping
    if draining is not None and draining():
        return error_response("the server is stopping; send new requests elsewhere", 503, {"Retry-After": "5"})
    return {"status": "ready", "model": nli.model_id}


@bp.get("/model")
def model() -> dict:
    """The served model: id, version, labels, device, dtype, limits, size, load time; the repository's
    versions and the ones refused, when served from a repository."""
    settings = service.settings()
    limits = {"max_pairs": settings.max_pairs, "max_body_bytes": settings.max_body_bytes}
    described = service.current_service().describe()
    repository = model_versions.repository_status(settings)
    return {**described, **limits, "request_timeout": settings.request_timeout, "repository": repository}
