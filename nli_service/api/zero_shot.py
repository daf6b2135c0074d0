"""``POST /zero-shot``: rank candidate labels for a text with the NLI model."""

from __future__ import annotations

from flask import Blueprint, current_app

from nli_service import payloads, runner

bp = Blueprint("zero_shot", __name__)


@bp.post("/zero-shot")
def zero_shot() -> dict:
    """Labels sorted by score for ``text`` (or for each of ``texts``)."""
    max_pairs = current_app.config["NLI_SETTINGS"].max_pairs
    request = payloads.parse_zero_shot(payloads.read_json_object(), max_pairs)
    results = runner.zero_shot(request.texts, request.labels, request.template, request.multi_label)
    model = runner.get_engine().model_id
    if request.many:
        return {"results": [payloads.encode_zero_shot(result) for result in results], "model": model}
    return {**payloads.encode_zero_shot(results[0]), "model": model}
