"""nli-service: natural-language inference over HTTP.

Layers, each importing only those below it (``make lint`` checks):

- ``server/``    Gunicorn config and hooks, the balanced worker, the metrics exporter, entry points;
- ``api/``       the Flask app: blueprints, request/response schemas, the JSON error layer;
- ``serving/``   this process's model behind deadlines, the cross-request batcher, idle-core lending;
- ``inference/`` tokenise, plan chunks, forward, backends, quantisation, model loading, labels.

``config``, ``logs`` and ``metrics`` are shared by the first three; ``client`` and ``cli``
talk to the service over HTTP and import none of Flask, torch, transformers or Gunicorn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """``nli_service.api.create_app``, importable from the package without loading Flask for the client."""
    from nli_service.api import create_app as create

    return create(test_config)
