"""``POST /zero-shot``: rank candidate labels for a text with the NLI model."""

from __future__ import annotations

from flask import Blueprint, Response

from nli_service.api import arrival, payloads, rate_limit, request_log, request_trace, service
from nli_service.inference.types import zero_shot_pairs
from nli_service.schemas import ZeroShotBatchResponse, ZeroShotRequest, ZeroShotResponse, ZeroShotResult

bp = Blueprint("zero_shot", __name__)


@bp.post("/zero-shot")
def zero_shot() -> Response:
    """Labels sorted by score for ``text`` (or for each of ``texts``)."""
    request = payloads.read(ZeroShotRequest)  # also bounds texts x labels and the expanded characters
    texts, labels, template = request.all_texts(), request.labels, request.hypothesis_template
    nli = service.current_service()
    request_log.account_for(zero_shot_pairs(texts, labels, template))
    rate_limit.count_pairs(len(texts) * len(labels))
    results = nli.zero_shot(texts, labels, template, request.multi_label, arrival.timing())
    if request.many:
        answers = [
            ZeroShotResult(labels=result.labels, scores=result.scores, truncated=result.truncated) for result in results
        ]
        return request_trace.encode(lambda: ZeroShotBatchResponse(results=answers, model=nli.model_id))
    return request_trace.encode(
        lambda: ZeroShotResponse(
            labels=results[0].labels, scores=results[0].scores, truncated=results[0].truncated, model=nli.model_id
        )
    )
