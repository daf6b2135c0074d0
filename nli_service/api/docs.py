"""``GET /docs``: Swagger UI over ``/openapi.json``, its assets served from the flask-swagger-ui package (no CDN)."""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, render_template

SWAGGER_UI_DIST = Path(flask_swagger_ui.__file__).parent / "dist"
# Swagger UI's stylesheet draws its icons from data: URIs; everything else comes from this service.
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data:"

bp = Blueprint("docs", __name__, static_folder=SWAGGER_UI_DIST, static_url_path="/docs/assets")


@bp.get("/docs")
def docs() -> Response:
    """Interactive API documentation: every operation, with "Try it out" against this server."""
    return Response(render_template("docs.html"), headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})
