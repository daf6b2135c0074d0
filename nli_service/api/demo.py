"""``GET /``: a demo page over the API (nli_service/api/templates/demo.html, static/demo.js and demo.css).

The page calls ``/model``, ``/predict``, ``/zero-shot`` and ``/batch-predict`` from the browser,
like any client, so it needs no route of its own beyond itself.
"""

from __future__ import annotations

from flask import Blueprint, Response, render_template

# No inline script or style: the page's JavaScript and CSS are files served by this service.
CONTENT_SECURITY_POLICY = "default-src 'self'"

bp = Blueprint("demo", __name__)


@bp.get("/")
def index() -> Response:
    """The demo page: a pair form, a zero-shot form and a batch box, answers drawn as probability bars."""
    return Response(render_template("demo.html"), headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})
