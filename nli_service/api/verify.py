"""``POST /verify``: check claims against a whole document, read in windows that fit the model."""

from __future__ import annotations

from flask import Blueprint, Response

from nli_service.api import arrival, payloads, rate_limit, request_log, request_trace, service
from nli_service.api.errors import ApiError
from nli_service.inference.types import Pair
from nli_service.schemas import ClaimResult, Evidence, VerifyRequest, VerifyResponse, windows_limit_message

bp = Blueprint("verify", __name__)


@bp.post("/verify")
def verify() -> Response:
    """For each claim: the deciding window's label and scores, and that window as evidence."""
    request = payloads.read(VerifyRequest)  # also bounds the claims and the expanded characters
    nli = service.current_service()
    windows = nli.windows(request.document, request.claims)
    limit = service.settings().max_pairs
    if len(windows) * len(request.claims) > limit:
        raise ApiError(windows_limit_message(len(windows), len(request.claims), limit), 413)
    request_log.account_for([Pair(window.text, claim) for claim in request.claims for window in windows])
    rate_limit.count_pairs(len(windows) * len(request.claims))
    verdicts = nli.verify(windows, request.claims, arrival.timing())
    results = [
        ClaimResult(
            label=verdict.label,
            scores=verdict.scores,
            truncated=verdict.truncated,
            evidence=Evidence(start=verdict.evidence.start, end=verdict.evidence.end, text=verdict.evidence.text),
        )
        for verdict in verdicts
    ]
    return request_trace.encode(lambda: VerifyResponse(results=results, windows=len(windows), model=nli.model_id))
