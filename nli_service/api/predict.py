"""``POST /predict`` and ``POST /batch-predict``."""

from __future__ import annotations

from flask import Blueprint, current_app

from nli_service import payloads, runner

bp = Blueprint("predict", __name__)


@bp.post("/predict")
def predict() -> dict:
    """Classify one premise/hypothesis pair."""
    pair = payloads.parse_pair(payloads.read_json_object())
    [prediction] = runner.predict([pair])
    return {**payloads.encode_prediction(prediction), "model": runner.get_engine().model_id}


@bp.post("/batch-predict")
def batch_predict() -> dict:
    """Classify many pairs; results come back in input order."""
    max_pairs = current_app.config["NLI_SETTINGS"].max_pairs
    pairs = payloads.parse_pairs(payloads.read_json_object(), max_pairs)
    predictions = runner.predict(pairs)
    return {
        "results": [payloads.encode_prediction(prediction) for prediction in predictions],
        "model": runner.get_engine().model_id,
    }
