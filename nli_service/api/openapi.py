"""``GET /openapi.json``: an OpenAPI 3.1 document generated from :mod:`nli_service.schemas`.

The component schemas are the very models that validate the requests (pydantic's JSON
Schema, validation mode for requests, serialization mode for responses); the running app's
limits (``NLI_MAX_PAIRS`` as ``maxItems``, ``NLI_MAX_BODY_BYTES``, ``NLI_MAX_EXPANDED_CHARS``,
``NLI_REQUEST_TIMEOUT``) are written into them and into the descriptions. Every operation
lists its errors (``ErrorResponse``), with ``Retry-After`` on 429 and 503, and carries
request and response examples.
"""

from __future__ import annotations

import copy
from importlib import metadata
from typing import Any

from flask import Blueprint, current_app
from pydantic.json_schema import models_json_schema

from nli_service import schemas
from nli_service.api import service
from nli_service.config import Settings

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
_CACHE_KEY = "nli_service.openapi"
JsonObject = dict[str, Any]


def _ref(name: str) -> JsonObject:
    return {"$ref": REF_TEMPLATE.format(model=name)}


def _version() -> str:
    try:
        return metadata.version("nli-service")
    except metadata.PackageNotFoundError:
        return "0.1.0"


def _component_schemas(settings: Settings) -> dict[str, JsonObject]:
    """Every model's JSON Schema, named as the model, with this app's limits written in."""
    models = [(model, "validation") for model in schemas.REQUEST_MODELS]
    models += [(model, "serialization") for model in schemas.RESPONSE_MODELS]
    _, top = models_json_schema(models, ref_template=REF_TEMPLATE)  # type: ignore[arg-type]
    components: dict[str, JsonObject] = top["$defs"]
    for schema in components.values():
        for prop in schema.get("properties", {}).values():
            if "default" in prop and prop["default"] is None:  # a field that may be left out, never null
                del prop["default"]

    max_pairs = settings.max_pairs
    batch = components["BatchPredictRequest"]["properties"]
    for key in ("pairs", "premises", "hypotheses"):
        batch[key]["maxItems"] = max_pairs
    batch["pairs"]["description"] = f"1 to {max_pairs} pairs (NLI_MAX_PAIRS; more: 413)."
    batch["premises"]["description"] = f"1 to {max_pairs} premises (NLI_MAX_PAIRS; more: 413), one per hypothesis."
    batch["hypotheses"]["description"] = "As many hypotheses as premises (else 400)."

    zero_shot = components["ZeroShotRequest"]
    properties = zero_shot["properties"]
    properties["labels"]["maxItems"] = min(schemas.MAX_ZERO_SHOT_LABELS, max_pairs)
    properties["texts"]["maxItems"] = max_pairs
    properties["texts"]["description"] = (
        f"Several texts, classified with the same labels; texts x labels at most {max_pairs} "
        "(NLI_MAX_PAIRS; more: 413)."
    )
    properties["text"]["description"] = "One text to classify."
    zero_shot["description"] += (
        f" Texts x labels is at most {max_pairs} pairs (NLI_MAX_PAIRS), and the model input they expand to, "
        f"texts x labels x (text + hypothesis), at most {settings.max_expanded_chars} characters "
        "(NLI_MAX_EXPANDED_CHARS): more is 413."
    )
    verify = components["VerifyRequest"]
    verify["properties"]["claims"]["maxItems"] = max_pairs
    verify["description"] += (
        f" Windows x claims is at most {max_pairs} pairs (NLI_MAX_PAIRS), and claims x (document + claim) at most "
        f"{settings.max_expanded_chars} characters (NLI_MAX_EXPANDED_CHARS): more is 413."
    )
    return components


def _error(description: str, example: str, status: int, retry_after: str | None = None) -> JsonObject:
    headers: JsonObject = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    if retry_after is not None:
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    value = {"error": example, "status": status, "request_id": "0f8fad5bd9cb469fa16570867728950e"}
    return {
        "description": description,
        "headers": headers,
        "content": {
            "application/json": {
                "schema": _ref("ErrorResponse"),
                "examples": {"error": {"summary": description, "value": value}},
            }
        },
    }


def _error_responses(settings: Settings) -> dict[str, JsonObject]:
    return {
        "BadRequest": _error(
            "Malformed JSON, a body that is not an object, or a field missing, of the wrong type (no coercion), "
            "empty or whitespace-only; the message names the field.",
            "pairs[3].premise must not be empty or only whitespace",
            400,
        ),
        "Timeout": _error(
            f"The request ran past its deadline: NLI_REQUEST_TIMEOUT ({settings.request_timeout:g} s), or the "
            "client's X-Request-Timeout if shorter, counted from its arrival; the worker keeps serving.",
            f"request took longer than {settings.request_timeout:g} s; send fewer or shorter pairs, "
            "or raise NLI_REQUEST_TIMEOUT",
            408,
        ),
        "TooLarge": _error(
            f"The body is over NLI_MAX_BODY_BYTES ({settings.max_body_bytes} bytes), or the request holds more "
            f"than NLI_MAX_PAIRS ({settings.max_pairs}) pairs (zero-shot: texts x labels; verify: windows x claims), "
            "or a zero-shot or verify request "
            f"expands to more than NLI_MAX_EXPANDED_CHARS ({settings.max_expanded_chars}) characters of model input.",
            f"{settings.max_pairs + 1} pairs is more than the limit of {settings.max_pairs} per request; "
            "split the batch",
            413,
        ),
        "Unauthorized": _error(
            "NLI_API_KEYS_FILE is set and the request carries no API key, or a wrong one (WWW-Authenticate: Bearer).",
            "the API key is not valid",
            401,
        ),
        "UnsupportedMediaType": _error(
            "Content-Type is not application/json.", "Content-Type must be application/json, got 'text/plain'", 415
        ),
        "Overloaded": _error(
            "The client's key or address is over NLI_RATE_LIMIT / NLI_PAIR_RATE_LIMIT (RateLimit-* headers say its "
            "budget), or a threaded worker could not answer before the request's deadline (the pairs queued "
            "ahead and these, at its recent pace), or already has NLI_MAX_QUEUED_PAIRS pairs waiting: refused at "
            "once; retry after Retry-After seconds.",
            "this worker is overloaded: the pairs ahead and these 256 need about 6.1 s, more than the 4.9 s left to "
            "this request's deadline; retry shortly",
            429,
            retry_after="3",
        ),
        "NotReady": _error(
            "The model is not loaded yet; retry after Retry-After seconds.",
            "the model is not loaded yet; retry shortly",
            503,
            retry_after="5",
        ),
        "InternalError": _error(
            "Anything unexpected: a generic message; the full report is in the log under the request id.",
            "internal server error; the request id identifies the full report in the logs",
            500,
        ),
    }


def _examples(schema: JsonObject, names: list[str]) -> JsonObject:
    """The model's own examples as named OpenAPI examples (``"key: summary"`` each)."""
    named = {}
    for index, value in enumerate(schema.get("examples", [])):
        key, _, summary = (names[index] if index < len(names) else f"example{index + 1}").partition(": ")
        named[key] = {"summary": summary or key, "value": copy.deepcopy(value)}
    return named


def _ok(components: dict[str, JsonObject], description: str, name: str, summaries: list[str]) -> JsonObject:
    return {
        "description": description,
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
        "content": {"application/json": {"schema": _ref(name), "examples": _examples(components[name], summaries)}},
    }


def _body(components: dict[str, JsonObject], name: str, summaries: list[str], settings: Settings) -> JsonObject:
    return {
        "required": True,
        "description": f"A JSON object (Content-Type: application/json) of at most {settings.max_body_bytes} bytes "
        "(NLI_MAX_BODY_BYTES). Unknown fields are ignored.",
        "content": {"application/json": {"schema": _ref(name), "examples": _examples(components[name], summaries)}},
    }


def _errors(*names: str) -> JsonObject:
    statuses = {
        "BadRequest": "400",
        "Timeout": "408",
        "TooLarge": "413",
        "UnsupportedMediaType": "415",
        "Unauthorized": "401",
        "Overloaded": "429",
        "NotReady": "503",
        "InternalError": "500",
    }
    return {statuses[name]: {"$ref": f"#/components/responses/{name}"} for name in names}


_POST_ERRORS = ("BadRequest", "Timeout", "TooLarge", "UnsupportedMediaType", "Overloaded", "NotReady", "InternalError")


def build_document(settings: Settings) -> JsonObject:
    """The OpenAPI 3.1 document of an app with ``settings``."""
    components = _component_schemas(settings)
    request_id = {"$ref": "#/components/parameters/X-Request-ID"}
    post_parameters = [request_id, {"$ref": "#/components/parameters/X-Request-Timeout"}]
    keyed: JsonObject = {}  # what an operation that needs an API key adds, when keys are on
    if settings.api_keys_file:
        keyed = {"security": [{"bearer": []}, {"apiKey": []}]}
    post_errors = _errors(*_POST_ERRORS, *(["Unauthorized"] if keyed else []))
    zero_shot_ok = _ok(
        components, "Labels sorted by score, highest first.", "ZeroShotResponse", ["single: the text form"]
    )
    zero_shot_ok["content"]["application/json"]["schema"] = {
        "oneOf": [_ref("ZeroShotResponse"), _ref("ZeroShotBatchResponse")]
    }
    zero_shot_ok["content"]["application/json"]["examples"].update(
        _examples(components["ZeroShotBatchResponse"], ["many: the texts form"])
    )
    paths: JsonObject = {
        "/predict": {
            "post": {
                "operationId": "predict",
                **keyed,
                "summary": "Classify one premise/hypothesis pair",
                "description": "Entailment, neutral or contradiction, with every label's probability (they sum to 1).",
                "parameters": post_parameters,
                "requestBody": _body(components, "PredictRequest", ["pair: one pair"], settings),
                "responses": {
                    "200": _ok(
                        components,
                        "The label and the scores.",
                        "PredictResponse",
                        ["entailment: an entailed hypothesis"],
                    ),
                    **post_errors,
                },
            }
        },
        "/batch-predict": {
            "post": {
                "operationId": "batchPredict",
                **keyed,
                "summary": "Classify many pairs",
                "description": f"Up to {settings.max_pairs} pairs (NLI_MAX_PAIRS) per request, as `pairs` or as "
                "`premises` and `hypotheses` lists of the same length; results come back in input order.",
                "parameters": post_parameters,
                "requestBody": _body(
                    components, "BatchPredictRequest", ["pairs: pair objects", "lists: parallel lists"], settings
                ),
                "responses": {
                    "200": _ok(
                        components, "One prediction per pair, in order.", "BatchPredictResponse", ["two: two pairs"]
                    ),
                    **post_errors,
                },
            }
        },
        "/zero-shot": {
            "post": {
                "operationId": "zeroShot",
                **keyed,
                "summary": "Zero-shot classification with your own labels",
                "description": "One NLI pair per (text, label): the text against the template with the label in its "
                f'"{{}}". Texts x labels at most {settings.max_pairs} (NLI_MAX_PAIRS); the model input, texts x '
                f"labels x (text + hypothesis), at most {settings.max_expanded_chars} characters "
                "(NLI_MAX_EXPANDED_CHARS). The `text` form answers labels and scores, the `texts` form `results`.",
                "parameters": post_parameters,
                "requestBody": _body(
                    components, "ZeroShotRequest", ["single: the text form", "many: the texts form"], settings
                ),
                "responses": {"200": zero_shot_ok, **post_errors},
            }
        },
        "/verify": {
            "post": {
                "operationId": "verify",
                **keyed,
                "summary": "Check claims against a long document",
                "description": "The document is cut into sentences (also at Chinese and Japanese 。！？) and read in "
                "overlapping windows that fit the model's max_length with the longest claim; every (window, claim) "
                "pair is scored in one pass. Per claim the window with the highest entailment decides, unless "
                "another window's contradiction is higher still (SummaC-ZS); its label, scores and span are the "
                f"answer. Windows x claims at most {settings.max_pairs} (NLI_MAX_PAIRS); claims x (document + "
                f"claim) at most {settings.max_expanded_chars} characters (NLI_MAX_EXPANDED_CHARS).",
                "parameters": post_parameters,
                "requestBody": _body(components, "VerifyRequest", ["claims: two claims"], settings),
                "responses": {
                    "200": _ok(
                        components,
                        "One result per claim, with its evidence.",
                        "VerifyResponse",
                        ["claims: one supported, one refuted"],
                    ),
                    **post_errors,
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness",
                "description": "Always 200 while the process serves; `status` says whether the model is loaded.",
                "parameters": [request_id],
                "responses": {
                    "200": _ok(components, "The process serves.", "HealthResponse", ["ok: the model is loaded"]),
                    **_errors("InternalError"),
                },
            }
        },
        "/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness",
                "description": "200 once the model is loaded, 503 (with Retry-After) before.",
                "parameters": [request_id],
                "responses": {
                    "200": _ok(components, "The model is loaded.", "ReadyResponse", ["ready: the model is loaded"]),
                    **_errors("NotReady", "InternalError"),
                },
            }
        },
        "/model": {
            "get": {
                "operationId": "model",
                **keyed,
                "summary": "The served model and the request limits",
                "parameters": [request_id],
                "responses": {
                    "200": _ok(
                        components,
                        "The model, its settings and the limits.",
                        "ModelInfo",
                        ["model: the default model on CPU"],
                    ),
                    **_errors("NotReady", "InternalError", *(["Unauthorized"] if keyed else [])),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "parameters": [request_id],
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document of this service, with this server's limits.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors("InternalError"),
                },
            }
        },
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "nli-service",
            "version": _version(),
            "summary": "Natural-language inference over HTTP",
            "description": "Is a hypothesis entailed by, contradicted by or neutral to a premise? Every response is "
            "JSON and carries an X-Request-ID header; every error is an ErrorResponse.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": _error_responses(settings),
            "headers": {
                "X-Request-ID": {
                    "description": "The request's id: the client's own X-Request-ID if valid, else a new one.",
                    "schema": {"type": "string"},
                },
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "parameters": {
                "X-Request-ID": {
                    "name": "X-Request-ID",
                    "in": "header",
                    "required": False,
                    "description": "An id for this request (1-128 of A-Z a-z 0-9 . _ : @ / + = -), echoed back and "
                    "logged; a new one is made otherwise.",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:@/+=-]{1,128}$"},
                },
                "X-Request-Timeout": {
                    "name": "X-Request-Timeout",
                    "in": "header",
                    "required": False,
                    "description": "Seconds this client waits for the answer. The deadline is the shorter of this "
                    f"and NLI_REQUEST_TIMEOUT ({settings.request_timeout:g} s); what cannot be answered by then is "
                    "refused at once (429) instead of computed for nobody. Not a positive number: 400.",
                    "schema": {"type": "number", "exclusiveMinimum": 0},
                },
            },
        },
    }


@bp.get("/openapi.json")
def openapi() -> JsonObject:
    """The OpenAPI 3.1 document, built once per app from the schemas and this app's settings."""
    document = current_app.extensions.get(_CACHE_KEY)
    if document is None:
        document = current_app.extensions[_CACHE_KEY] = build_document(service.settings())
    return document
