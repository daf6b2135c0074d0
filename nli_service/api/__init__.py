"""The HTTP API: the Flask app, one blueprint per module, the request schemas and the error layer.

A request goes: ``auth`` (its API key, when keys are on) and ``rate_limit`` (its client's
request budget) -> a blueprint (``predict``, ``zero_shot``, ``verify``, ``health``) -> ``payloads`` (decode
and validate the body; then the pair budget) -> ``service`` (this process's
``serving.NLIService``) -> back out through ``payloads``; ``errors`` turns every failure into
JSON. The pages are blueprints too: ``demo`` (``/``) and ``docs`` (``/docs``, Swagger UI). Nothing here
imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from nli_service import logs
from nli_service.api import (
    auth,
    demo,
    docs,
    errors,
    health,
    openapi,
    predict,
    rate_limit,
    request_log,
    request_metrics,
    request_trace,
    service,
    verify,
    zero_shot,
)
from nli_service.config import Settings


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app.

    ``test_config`` overrides settings by their environment names (``NLI_MODEL``, ...)
    and sets Flask options (``TESTING``; ``LOAD_MODEL=False`` starts without a model).
    Raises ``ConfigError`` or ``ModelLoadError`` when the service cannot start.
    """
    config = dict(test_config or {})
    overrides = {key: str(value) for key, value in config.items() if key.startswith("NLI_")}
    settings = Settings.from_env({**os.environ, **overrides})

    app = Flask(__name__)
    app.json.sort_keys = False
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, NLI_SETTINGS=settings)
    app.config.update({key: value for key, value in config.items() if key not in overrides})

    logs.configure_logging(settings)
    request_log.init_app(app)
    request_trace.init_app(app)  # before auth and rate limits: their refusals are traced too
    request_metrics.init_app(app)
    auth.init_app(app)
    rate_limit.init_app(app)
    errors.init_app(app)
    service.init_app(app)
    app.register_blueprint(predict.bp)
    app.register_blueprint(zero_shot.bp)
    app.register_blueprint(verify.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(demo.bp)
    if settings.proxies:  # client addresses (rate limits, logs) through the proxies' X-Forwarded-For
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxies)  # type: ignore[method-assign]
    return app
