"""``POST /predict`` and ``POST /batch-predict``."""

from __future__ import annotations

from flask import Blueprint, Response

from nli_service.api import arrival, payloads, rate_limit, request_log, request_trace, service
from nli_service.inference import types
from nli_service.schemas import BatchPredictRequest, BatchPredictResponse, Prediction, PredictRequest, PredictResponse

bp = Blueprint("predict", __name__)


def _prediction(prediction: types.Prediction) -> Prediction:
    return Prediction(label=prediction.label, scores=prediction.scores, truncated=prediction.truncated)


@bp.post("/predict")
def predict() -> Response:
    """Classify one premise/hypothesis pair."""
    pair = payloads.read(PredictRequest).pair()
    nli = service.current_service()
    request_log.account_for([pair])
    rate_limit.count_pairs(1)
    [prediction] = nli.predict([pair], arrival.timing())
    return request_trace.encode(lambda: PredictResponse(**_prediction(prediction).model_dump(), model=nli.model_id))


@bp.post("/batch-predict")
def batch_predict() -> Response:
    """Classify many pairs; results come back in input order."""
    pairs = payloads.read(BatchPredictRequest).to_pairs()
    nli = service.current_service()
    request_log.account_for(pairs)
    rate_limit.count_pairs(len(pairs))
    predictions = nli.predict(pairs, arrival.timing())
    return request_trace.encode(
        lambda: BatchPredictResponse(results=[_prediction(p) for p in predictions], model=nli.model_id)
    )
