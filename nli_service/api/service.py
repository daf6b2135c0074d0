"""This process's ``NLIService`` as a Flask extension: the model loaded once, the service looked up per request.

Looked up per request because Gunicorn forks its workers after the app is built (preload):
each worker then gets its own service, with its own batcher thread.
"""

from __future__ import annotations

from flask import Flask, current_app

from nli_service.config import Settings
from nli_service.serving.errors import NotReady
from nli_service.serving.runtime import load_engine, served_model, service_for
from nli_service.serving.service import NLIService

EXTENSION_KEY = "nli_service"


def init_app(app: Flask) -> None:
    """Load (or reuse) this process's model for ``app``, unless ``LOAD_MODEL`` is False."""
    settings: Settings = app.config["NLI_SETTINGS"]
    app.extensions[EXTENSION_KEY] = load_engine(settings) if app.config.get("LOAD_MODEL", True) else None


def loaded_service() -> NLIService | None:
    """This process's service for the app, or None while no model is loaded."""
    if current_app.extensions.get(EXTENSION_KEY) is None:
        return None
    return service_for(current_app.config["NLI_SETTINGS"])


def current_service() -> NLIService:
    """The app's service; :class:`NotReady` (503) while no model is loaded."""
    service = loaded_service()
    if service is None:
        raise NotReady()
    return service


def served() -> tuple[str | None, int | None]:
    """This process's model id and its repository version (None when not from a repository); cheap."""
    return served_model()


def settings() -> Settings:
    return current_app.config["NLI_SETTINGS"]
