"""This process's ``NLIService`` as a Flask extension: attached once, looked up per request."""

from __future__ import annotations

from flask import Flask, current_app

from nli_service.config import Settings
from nli_service.serving.errors import NotReady
from nli_service.serving.runtime import service_for
from nli_service.serving.service import NLIService

EXTENSION_KEY = "nli_service"


def init_app(app: Flask) -> None:
    """Load (or reuse) this process's model for ``app``, unless ``LOAD_MODEL`` is False."""
    settings: Settings = app.config["NLI_SETTINGS"]
    app.extensions[EXTENSION_KEY] = service_for(settings) if app.config.get("LOAD_MODEL", True) else None


def loaded_service() -> NLIService | None:
    """The app's service, or None while no model is loaded."""
    return current_app.extensions.get(EXTENSION_KEY)


def current_service() -> NLIService:
    """The app's service; :class:`NotReady` (503) while no model is loaded."""
    service = loaded_service()
    if service is None:
        raise NotReady()
    return service


def settings() -> Settings:
    return current_app.config["NLI_SETTINGS"]
