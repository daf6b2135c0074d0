"""``GET /openapi.json``: a valid OpenAPI 3.1 document whose schemas match what the service really does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from nli_service.config import Settings
from nli_service.schemas import MAX_ZERO_SHOT_LABELS

PAIR = {"premise": "A man is playing a guitar.", "hypothesis": "A person plays music."}
POSTS = ("/predict", "/batch-predict", "/zero-shot", "/verify")


@pytest.fixture
def document(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def validator(document: dict, schema: dict) -> Draft202012Validator:
    """A validator for ``schema``, its ``#/components/...`` references resolved within ``document``."""
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator({**schema, "components": document["components"]})


def response_spec(document: dict, path: str, method: str, status: int) -> dict:
    spec = document["paths"][path][method]["responses"][str(status)]
    if "$ref" in spec:
        spec = document["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
    return spec


def assert_matches(document: dict, path: str, method: str, response) -> None:
    spec = response_spec(document, path, method, response.status_code)
    schema = spec["content"]["application/json"]["schema"]
    errors = [error.message for error in validator(document, schema).iter_errors(response.get_json())]
    assert not errors, (path, response.status_code, errors, response.get_json())
    for header in spec.get("headers", {}):
        assert header in response.headers, (path, response.status_code, header)


def media_types(document: dict) -> Iterator[tuple[str, dict]]:
    """(where, media type object) of every request body and response, components included."""
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                yield f"{method} {path} request", operation["requestBody"]["content"]["application/json"]
            for status, response in operation["responses"].items():
                if "content" in response:
                    yield f"{method} {path} {status}", response["content"]["application/json"]
    for name, response in document["components"]["responses"].items():
        yield f"responses/{name}", response["content"]["application/json"]


def test_the_document_is_valid_openapi_3_1(document: dict) -> None:
    assert document["openapi"].startswith("3.1.")
    validate_spec(document)
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    assert set(document["paths"]) == {
        "/predict",
        "/batch-predict",
        "/zero-shot",
        "/verify",
        "/health",
        "/ready",
        "/model",
        "/openapi.json",
    }


def test_every_post_lists_its_errors_with_retry_after_where_due(document: dict) -> None:
    for path in POSTS:
        responses = document["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "408", "413", "415", "429", "500", "503"}, path
        for status in ("429", "503"):
            assert "Retry-After" in response_spec(document, path, "post", int(status))["headers"]
        for status in responses:
            schema = response_spec(document, path, "post", int(status))["content"]["application/json"]["schema"]
            assert status == "200" or schema == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "Retry-After" in response_spec(document, "/ready", "get", 503)["headers"]


def test_every_example_validates_against_its_own_schema(document: dict) -> None:
    checked = 0
    for where, media in media_types(document):
        check = validator(document, media["schema"])
        for name, example in media.get("examples", {}).items():
            errors = [error.message for error in check.iter_errors(example["value"])]
            assert not errors, (where, name, errors)
            checked += 1
    for name, schema in document["components"]["schemas"].items():
        for example in schema.get("examples", []):
            errors = [error.message for error in validator(document, schema).iter_errors(example)]
            assert not errors, (name, errors)
            checked += 1
    assert checked >= 20
    for path in POSTS:  # every path has request and response examples
        operation = document["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["examples"]
        assert response_spec(document, path, "post", 200)["content"]["application/json"]["examples"]
        assert response_spec(document, path, "post", 400)["content"]["application/json"]["examples"]


def test_the_request_examples_are_accepted_by_the_service(client, document: dict) -> None:
    for path in POSTS:
        media = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        for name, example in media["examples"].items():
            response = client.post(path, json=example["value"])
            assert response.status_code == 200, (path, name, response.get_json())
            assert_matches(document, path, "post", response)


def test_the_schemas_refuse_what_the_service_refuses(document: dict) -> None:
    schemas = document["components"]["schemas"]
    batch = validator(document, schemas["BatchPredictRequest"])
    assert batch.is_valid({"pairs": [PAIR]}) and batch.is_valid({"premises": ["a"], "hypotheses": ["b"]})
    for body in (
        {},
        {"pairs": [PAIR], "premises": ["a"]},
        {"premises": ["a"]},
        {"pairs": []},
        {"pairs": [{**PAIR, "premise": 3}]},
    ):
        assert not batch.is_valid(body), body
    zero_shot = validator(document, schemas["ZeroShotRequest"])
    assert zero_shot.is_valid({"text": "x", "labels": ["a"]})
    for body in (
        {"labels": ["a"]},
        {"text": "x", "texts": ["y"], "labels": ["a"]},
        {"text": "x", "labels": ["a", "a"]},
        {"text": "x", "labels": ["a"], "multi_label": "yes"},
        {"text": " ", "labels": ["a"]},
    ):
        assert not zero_shot.is_valid(body), body


def test_limits_come_from_the_running_apps_settings(make_app) -> None:
    app = make_app(NLI_MAX_PAIRS=7, NLI_MAX_BODY_BYTES=54321, NLI_MAX_EXPANDED_CHARS=98765, NLI_REQUEST_TIMEOUT=12)
    document = app.test_client().get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    assert {
        schemas["BatchPredictRequest"]["properties"][key]["maxItems"] for key in ("pairs", "premises", "hypotheses")
    } == {7}
    assert schemas["ZeroShotRequest"]["properties"]["texts"]["maxItems"] == 7
    assert schemas["ZeroShotRequest"]["properties"]["labels"]["maxItems"] == 7  # fewer than 64 pairs allowed
    assert "7" in document["paths"]["/batch-predict"]["post"]["description"]
    assert "54321" in document["paths"]["/predict"]["post"]["requestBody"]["description"]
    assert "98765" in document["paths"]["/zero-shot"]["post"]["description"]
    too_large = document["components"]["responses"]["TooLarge"]["description"]
    assert "54321" in too_large and "7" in too_large and "98765" in too_large
    assert "12 s" in document["components"]["responses"]["Timeout"]["description"]
    default = Settings.from_env({})
    plain = make_app().test_client().get("/openapi.json").get_json()
    assert plain["components"]["schemas"]["BatchPredictRequest"]["properties"]["pairs"]["maxItems"] == default.max_pairs
    assert plain["components"]["schemas"]["ZeroShotRequest"]["properties"]["labels"]["maxItems"] == min(
        MAX_ZERO_SHOT_LABELS, default.max_pairs
    )


def test_real_responses_validate_against_the_documented_schemas(client, make_app, document: dict) -> None:
    calls = [
        ("/predict", "post", {"json": PAIR}, 200),
        ("/batch-predict", "post", {"json": {"pairs": [PAIR, PAIR]}}, 200),
        ("/batch-predict", "post", {"json": {"premises": ["a"], "hypotheses": ["b"]}}, 200),
        ("/zero-shot", "post", {"json": {"text": "x", "labels": ["a", "b"]}}, 200),
        ("/zero-shot", "post", {"json": {"texts": ["x", "y"], "labels": ["a", "b"], "multi_label": True}}, 200),
        ("/verify", "post", {"json": {"document": "A dog runs. A cat sleeps.", "claims": ["x"]}}, 200),
        ("/verify", "post", {"json": {"document": "A dog runs.", "claims": [""]}}, 400),
        ("/health", "get", {}, 200),
        ("/ready", "get", {}, 200),
        ("/model", "get", {}, 200),
        ("/predict", "post", {"json": {"premise": 1, "hypothesis": "x"}}, 400),
        ("/batch-predict", "post", {"json": {"pairs": [PAIR], "premises": ["a"]}}, 400),
        ("/zero-shot", "post", {"json": {"text": "x", "labels": ["a"], "hypothesis_template": "{0}"}}, 400),
        ("/predict", "post", {"data": "x", "content_type": "text/plain"}, 415),
        ("/zero-shot", "post", {"json": {"texts": ["x"] * 300, "labels": ["a"]}}, 413),
    ]
    for path, method, kwargs, status in calls:
        response = getattr(client, method)(path, **kwargs)
        assert response.status_code == status, (path, response.get_json())
        assert_matches(document, path, method, response)
    openapi = client.get("/openapi.json")
    assert_matches(document, "/openapi.json", "get", openapi)

    small = make_app(NLI_MAX_BODY_BYTES=100).test_client()
    response = small.post("/predict", json={"premise": "a" * 200, "hypothesis": "b"})
    assert response.status_code == 413
    assert_matches(document, "/predict", "post", response)

    loading = make_app(LOAD_MODEL=False).test_client()
    assert_matches(document, "/health", "get", loading.get("/health"))
    for path, method in (("/ready", "get"), ("/model", "get"), ("/predict", "post")):
        response = loading.open(path, method=method.upper(), json=PAIR if method == "post" else None)
        assert response.status_code == 503
        assert_matches(document, path, method, response)
