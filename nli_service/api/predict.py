"""``POST /predict`` and ``POST /batch-predict``."""

from __future__ import annotations

from flask import Blueprint

from nli_service.api import arrival, payloads, request_log, service
from nli_service.inference import types
from nli_service.schemas import BatchPredictRequest, BatchPredictResponse, Prediction, PredictRequest, PredictResponse

bp = Blueprint("predict", __name__)


def _prediction(prediction: types.Prediction) -> Prediction:
    return Prediction(label=prediction.label, scores=prediction.scores)


@bp.post("/predict")
def predict() -> dict:
    """Classify one premise/hypothesis pair."""
    pair = payloads.read(PredictRequest).pair()
    nli = service.current_service()
    [prediction] = nli.predict([pair], request_log.account_for([pair]), arrival.client_gone_check())
    return PredictResponse(label=prediction.label, scores=prediction.scores, model=nli.model_id).model_dump()


@bp.post("/batch-predict")
def batch_predict() -> dict:
    """Classify many pairs; results come back in input order."""
    pairs = payloads.read(BatchPredictRequest).to_pairs()
    nli = service.current_service()
    predictions = nli.predict(pairs, request_log.account_for(pairs), arrival.client_gone_check())
    return BatchPredictResponse(results=[_prediction(p) for p in predictions], model=nli.model_id).model_dump()
