"""nli-service: natural-language inference over HTTP.

A request goes: ``api/`` (routes) -> ``payloads`` (decode, validate) ->
``runner`` (this worker's engine, deadline, metrics) -> ``inference/engine``
(tokenise, batch, forward, unbatch) -> back out through ``payloads``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nli_service.config import Settings

if TYPE_CHECKING:  # Flask is imported by create_app, so the engine can import this package without it
    from flask import Flask


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app.

    ``config`` overrides settings by their environment names (``NLI_MODEL``, ...)
    and sets Flask options (``TESTING``; ``LOAD_MODEL=False`` starts without a model).
    Raises ``ConfigError`` or ``ModelLoadError`` when the service cannot start.
    """
    from flask import Flask

    from nli_service import errors, logs, metrics, request_log, runner
    from nli_service.api import health, predict, zero_shot

    config = dict(config or {})
    overrides = {key: str(value) for key, value in config.items() if key.startswith("NLI_")}
    settings = Settings.from_env({**os.environ, **overrides})

    app = Flask(__name__)
    app.json.sort_keys = False
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, NLI_SETTINGS=settings)
    app.config.update({key: value for key, value in config.items() if key not in overrides})

    logs.configure_logging(settings)
    request_log.init_app(app)
    metrics.init_app(app)
    errors.init_app(app)
    runner.init_app(app)
    app.register_blueprint(predict.bp)
    app.register_blueprint(zero_shot.bp)
    app.register_blueprint(health.bp)
    return app
