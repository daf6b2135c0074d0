"""``POST /predict`` and ``POST /batch-predict``."""

from __future__ import annotations

from flask import Blueprint

from nli_service.api import payloads, request_log, service

bp = Blueprint("predict", __name__)


@bp.post("/predict")
def predict() -> dict:
    """Classify one premise/hypothesis pair."""
    pair = payloads.parse_pair(payloads.read_json_object())
    nli = service.current_service()
    [prediction] = nli.predict([pair], request_log.account_for([pair]))
    return {**payloads.encode_prediction(prediction), "model": nli.model_id}


@bp.post("/batch-predict")
def batch_predict() -> dict:
    """Classify many pairs; results come back in input order."""
    pairs = payloads.parse_pairs(payloads.read_json_object(), service.settings().max_pairs)
    nli = service.current_service()
    predictions = nli.predict(pairs, request_log.account_for(pairs))
    return {"results": [payloads.encode_prediction(prediction) for prediction in predictions], "model": nli.model_id}
