"""Decode and validate request bodies; encode predictions as JSON-ready dicts.

Every rule here fails with an :class:`ApiError` whose message names the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import request

from nli_service.api.errors import ApiError
from nli_service.inference.types import DEFAULT_TEMPLATE, Pair, Prediction, ZeroShotResult

JsonObject = dict[str, Any]
MAX_ZERO_SHOT_LABELS = 64


def read_json_object() -> JsonObject:
    """The request body as a JSON object: 415 if not JSON, 400 if malformed, 413 if too big."""
    if not request.is_json:
        raise ApiError(f"Content-Type must be application/json, got {request.mimetype or 'none'!r}", 415)
    raw = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError("request body is not valid UTF-8") from None
    except (ValueError, RecursionError) as error:
        raise ApiError(f"request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError(f"request body must be a JSON object, got {_json_type(body)}")
    return body


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise ApiError(f"{field} must be a string, got {_json_type(value)}")
    if not value.strip():
        raise ApiError(f"{field} must not be empty or only whitespace")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON allows lone surrogates ("\ud800"); no tokenizer does
        raise ApiError(f"{field} is not valid Unicode text (lone surrogate)") from None
    return value


def _required(body: JsonObject, key: str, where: str) -> object:
    if key not in body:
        raise ApiError(f"{where}{key} is required")
    return body[key]


def parse_pair(body: object, where: str = "") -> Pair:
    """``{"premise": str, "hypothesis": str}`` as a :class:`Pair`."""
    if not isinstance(body, dict):
        raise ApiError(f"{where.rstrip('.') or 'body'} must be an object, got {_json_type(body)}")
    return Pair(
        premise=_text(_required(body, "premise", where), f"{where}premise"),
        hypothesis=_text(_required(body, "hypothesis", where), f"{where}hypothesis"),
    )


def _list(body: JsonObject, key: str) -> list[Any]:
    value = body[key]
    if not isinstance(value, list):
        raise ApiError(f"{key} must be an array, got {_json_type(value)}")
    return value


def parse_pairs(body: JsonObject, max_pairs: int) -> list[Pair]:
    """``{"pairs": [...]}`` or ``{"premises": [...], "hypotheses": [...]}`` as pairs."""
    has_pairs = "pairs" in body
    has_lists = "premises" in body or "hypotheses" in body
    if has_pairs == has_lists:
        raise ApiError('send either "pairs": [{"premise", "hypothesis"}, ...] or "premises" and "hypotheses" lists')
    if has_pairs:
        items = _list(body, "pairs")
        count = len(items)
    else:
        for key in ("premises", "hypotheses"):
            _required(body, key, "")
        premises, hypotheses = _list(body, "premises"), _list(body, "hypotheses")
        if len(premises) != len(hypotheses):
            raise ApiError(f"premises and hypotheses must have the same length ({len(premises)} != {len(hypotheses)})")
        count = len(premises)
    if count == 0:
        raise ApiError("at least one pair is required")
    if count > max_pairs:
        raise ApiError(f"{count} pairs is more than the limit of {max_pairs} per request; split the batch", 413)
    if has_pairs:
        return [parse_pair(item, f"pairs[{i}].") for i, item in enumerate(items)]
    return [
        Pair(_text(premise, f"premises[{i}]"), _text(hypothesis, f"hypotheses[{i}]"))
        for i, (premise, hypothesis) in enumerate(zip(premises, hypotheses, strict=False))
    ]


@dataclass(frozen=True)
class ZeroShotRequest:
    """A validated ``/zero-shot`` body; ``many`` is True for the ``texts`` form."""

    texts: list[str]
    labels: list[str]
    template: str
    multi_label: bool
    many: bool


def _labels(value: object) -> list[str]:
    if not isinstance(value, list):
        raise ApiError(f"labels must be an array of strings, got {_json_type(value)}")
    if not 1 <= len(value) <= MAX_ZERO_SHOT_LABELS:
        raise ApiError(f"labels must hold 1 to {MAX_ZERO_SHOT_LABELS} labels, got {len(value)}")
    labels = [_text(label, f"labels[{i}]").strip() for i, label in enumerate(value)]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ApiError(f"labels must be unique; repeated: {duplicates}")
    return labels


def _template(value: object, labels: list[str]) -> str:
    template = _text(value, "hypothesis_template")
    if "{}" not in template:
        raise ApiError('hypothesis_template must contain "{}" where the label goes')
    try:
        template.format(*labels[:1])
    except (IndexError, KeyError, ValueError):
        raise ApiError('hypothesis_template may hold only one "{}" and no other braces') from None
    return template


def parse_zero_shot(body: JsonObject, max_pairs: int) -> ZeroShotRequest:
    """``{"text" | "texts", "labels", "hypothesis_template"?, "multi_label"?}``, validated."""
    if ("text" in body) == ("texts" in body):
        raise ApiError('send either "text": str or "texts": [str, ...]')
    many = "texts" in body
    if many:
        texts = [_text(text, f"texts[{i}]") for i, text in enumerate(_list(body, "texts"))]
        if not texts:
            raise ApiError("texts must hold at least one text")
    else:
        texts = [_text(body["text"], "text")]
    labels = _labels(_required(body, "labels", ""))
    template = _template(body.get("hypothesis_template", DEFAULT_TEMPLATE), labels)
    multi_label = body.get("multi_label", False)
    if not isinstance(multi_label, bool):
        raise ApiError(f"multi_label must be true or false, got {_json_type(multi_label)}")
    if len(texts) * len(labels) > max_pairs:
        raise ApiError(
            f"{len(texts)} texts x {len(labels)} labels is more than the limit of {max_pairs} pairs per request", 413
        )
    return ZeroShotRequest(texts=texts, labels=labels, template=template, multi_label=multi_label, many=many)


def encode_prediction(prediction: Prediction) -> JsonObject:
    return {"label": prediction.label, "scores": prediction.scores}


def encode_zero_shot(result: ZeroShotResult) -> JsonObject:
    return {"labels": result.labels, "scores": result.scores}
