"""``POST /zero-shot``: rank candidate labels for a text with the NLI model."""

from __future__ import annotations

from flask import Blueprint

from nli_service.api import payloads, request_log, service
from nli_service.inference.types import zero_shot_pairs

bp = Blueprint("zero_shot", __name__)


@bp.post("/zero-shot")
def zero_shot() -> dict:
    """Labels sorted by score for ``text`` (or for each of ``texts``)."""
    request = payloads.parse_zero_shot(payloads.read_json_object(), service.settings().max_pairs)
    nli = service.current_service()
    received_at = request_log.account_for(zero_shot_pairs(request.texts, request.labels, request.template))
    results = nli.zero_shot(request.texts, request.labels, request.template, request.multi_label, received_at)
    if request.many:
        return {"results": [payloads.encode_zero_shot(result) for result in results], "model": nli.model_id}
    return {**payloads.encode_zero_shot(results[0]), "model": nli.model_id}
