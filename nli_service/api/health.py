"""``GET /health`` (liveness), ``GET /ready`` (readiness) and ``GET /model``."""

from __future__ import annotations

import os
import time

from flask import Blueprint, current_app

from nli_service import runner
from nli_service.errors import error_response

bp = Blueprint("health", __name__)
_STARTED = time.monotonic()


@bp.get("/health")
def health() -> dict:
    """Always 200 while the process serves; says whether the model is loaded."""
    engine = current_app.extensions.get(runner.EXTENSION_KEY)
    return {
        "status": "ok" if engine is not None else "loading",
        "model": engine.model_id if engine is not None else None,
        "fallback": engine.source.fallback_from is not None if engine is not None else False,
        "model_loaded_at": engine.loaded_at.isoformat() if engine is not None else None,
        "uptime_seconds": round(time.monotonic() - _STARTED, 3),
        "pid": os.getpid(),
    }


@bp.get("/ready")
def ready():
    """200 once the model is loaded, 503 before: for load balancers and orchestrators."""
    engine = current_app.extensions.get(runner.EXTENSION_KEY)
    if engine is None:
        return error_response("the model is not loaded yet", 503, {"Retry-After": "5"})
    return {"status": "ready", "model": engine.model_id}


@bp.get("/model")
def model() -> dict:
    """The served model: id, labels, device, dtype, limits, size, load time."""
    settings = current_app.config["NLI_SETTINGS"]
    limits = {"max_pairs": settings.max_pairs, "max_body_bytes": settings.max_body_bytes}
    return {**runner.get_engine().describe(), **limits, "request_timeout": settings.request_timeout}
