"""The HTTP API through Flask's test client: results, validation, errors, health."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import REORDERED_ID2LABEL, engine_of
from model_factory import SAMPLE_PAIRS
from serving import wait_for

from nli_service.config import Settings
from nli_service.inference.types import NLI_LABELS, Pair

PAIR = {"premise": SAMPLE_PAIRS[0][0], "hypothesis": SAMPLE_PAIRS[0][1]}


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"] and "/nli_service/" not in body["error"]
    return body


# -- predictions --------------------------------------------------------------------


def test_predict_returns_label_scores_and_model(client, model_dir: Path) -> None:
    body = client.post("/predict", json=PAIR).get_json()
    assert set(body) == {"label", "scores", "truncated", "model"}
    assert set(body["scores"]) == set(NLI_LABELS)
    assert sum(body["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["label"] == max(body["scores"], key=body["scores"].get)
    assert body["model"] == str(model_dir)


def test_labels_come_from_the_models_id2label(make_app, reordered_model_dir: Path) -> None:
    # The classifier always picks output 1, which this model calls CONTRADICTION.
    client = make_app(NLI_MODEL=str(reordered_model_dir)).test_client()
    body = client.post("/predict", json=PAIR).get_json()
    assert body["label"] == REORDERED_ID2LABEL[1].lower() == "contradiction"
    assert body["scores"]["contradiction"] > 0.8
    assert client.get("/model").get_json()["labels"] == ["neutral", "contradiction", "entailment"]


def test_batch_predict_in_both_forms_matches_single_predictions(client) -> None:
    pairs = [{"premise": p, "hypothesis": h} for p, h in SAMPLE_PAIRS] * 3
    by_pairs = client.post("/batch-predict", json={"pairs": pairs}).get_json()
    by_lists = client.post(
        "/batch-predict",
        json={"premises": [p["premise"] for p in pairs], "hypotheses": [p["hypothesis"] for p in pairs]},
    ).get_json()
    assert by_pairs["results"] == by_lists["results"]
    assert len(by_pairs["results"]) == len(pairs) and "model" in by_pairs
    for pair, result in zip(pairs, by_pairs["results"], strict=True):
        single = client.post("/predict", json=pair).get_json()
        assert result["label"] == single["label"]
        for label in NLI_LABELS:
            assert result["scores"][label] == pytest.approx(single["scores"][label], abs=1e-5)


# -- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"hypothesis": "x"}, "premise is required"),
        ({"premise": "x"}, "hypothesis is required"),
        ({"premise": 3, "hypothesis": "x"}, "premise must be a string"),
        ({"premise": "x", "hypothesis": None}, "hypothesis must be a string"),
        ({"premise": "", "hypothesis": "x"}, "must not be empty"),
        ({"premise": "x", "hypothesis": " \n\t "}, "must not be empty"),
        ([PAIR], "must be a JSON object"),
        ("text", "must be a JSON object"),
    ],
)
def test_invalid_predict_bodies_are_400(client, body, fragment: str) -> None:
    assert fragment in assert_json_error(client.post("/predict", json=body), 400)["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "either"),
        ({"pairs": [PAIR], "premises": ["x"], "hypotheses": ["y"]}, "either"),
        ({"pairs": PAIR}, "pairs must be an array"),
        ({"pairs": []}, "at least one pair"),
        ({"pairs": [PAIR, "x"]}, "pairs[1] must be an object"),
        ({"pairs": [PAIR, {"premise": "x"}]}, "pairs[1].hypothesis is required"),
        ({"pairs": [PAIR, {"premise": "x", "hypothesis": ""}]}, "pairs[1].hypothesis must not be empty"),
        ({"premises": ["a", "b"], "hypotheses": ["c"]}, "same length"),
        ({"premises": ["a"]}, "hypotheses is required"),
        ({"premises": ["a", 2], "hypotheses": ["c", "d"]}, "premises[1] must be a string"),
    ],
)
def test_invalid_batch_bodies_are_400(client, body, fragment: str) -> None:
    assert fragment in assert_json_error(client.post("/batch-predict", json=body), 400)["error"]


@pytest.mark.parametrize("raw", [b"{", b'{"premise": "a",}', b"\xff\xfe", b"", b"[" * 100_000])
def test_malformed_json_is_400(client, raw: bytes) -> None:
    assert_json_error(client.post("/predict", data=raw, content_type="application/json"), 400)


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/predict", b'{"premise": "\\ud800", "hypothesis": "x"}'),
        ("/batch-predict", b'{"premises": ["a", "b\\udfff"], "hypotheses": ["c", "d"]}'),
    ],
)
def test_lone_surrogates_are_400_not_500(client, path: str, raw: bytes) -> None:
    body = assert_json_error(client.post(path, data=raw, content_type="application/json"), 400)
    assert "not valid Unicode" in body["error"]


def test_non_json_content_type_is_415(client) -> None:
    body = assert_json_error(client.post("/predict", data=json.dumps(PAIR), content_type="text/plain"), 415)
    assert "application/json" in body["error"]
    assert_json_error(client.post("/predict", data={"premise": "a", "hypothesis": "b"}), 415)


def test_too_many_pairs_is_413(make_app) -> None:
    client = make_app(NLI_MAX_PAIRS=4).test_client()
    assert client.post("/batch-predict", json={"pairs": [PAIR] * 4}).status_code == 200
    assert "limit of 4" in assert_json_error(client.post("/batch-predict", json={"pairs": [PAIR] * 5}), 413)["error"]


def test_a_body_over_the_size_limit_is_413(make_app) -> None:
    client = make_app(NLI_MAX_BODY_BYTES=1000).test_client()
    assert_json_error(client.post("/predict", json={"premise": "a" * 2000, "hypothesis": "b"}), 413)


def test_unknown_path_is_json_404(client) -> None:
    assert_json_error(client.get("/nope"), 404)


def test_wrong_method_is_json_405_with_allow(client) -> None:
    response = client.get("/predict")
    assert_json_error(response, 405)
    assert "POST" in response.headers["Allow"]


def test_an_unexpected_failure_is_a_generic_500_logged_with_the_request_id(client, monkeypatch, tmp_path) -> None:
    def explode(pairs, deadline=None):
        raise RuntimeError("secret internal detail at /srv/nli_service/engine.py")

    monkeypatch.setattr(engine_of(client.application), "scores", explode)  # under predict and the cache
    response = client.post("/predict", json=PAIR, headers={"X-Request-ID": "trace-500"})
    body = assert_json_error(response, 500)
    assert "secret" not in body["error"] and body["request_id"] == "trace-500"
    log_lines = [json.loads(line) for line in (tmp_path / "logs" / "nli_service.log").read_text().splitlines()]
    failure = next(line for line in log_lines if line.get("message") == "unhandled error")
    assert failure["request_id"] == "trace-500" and "secret internal detail" in failure["exc_info"]
    # the app keeps serving
    monkeypatch.undo()
    assert client.post("/predict", json=PAIR).status_code == 200


# -- timeouts ------------------------------------------------------------------------


def queued_pairs() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("nli_queued_pairs") or 0.0


def _slow_forward(engine, seconds: float):
    original = engine.forward

    def slow(encoded, chunk):
        time.sleep(seconds)
        return original(encoded, chunk)

    return slow


def test_a_request_past_its_deadline_is_408_by_sigalrm_and_the_next_one_works(make_app, monkeypatch) -> None:
    import signal

    from nli_service.serving.deadline import ALARM

    app = make_app(NLI_REQUEST_TIMEOUT=0.3)
    engine = engine_of(app)
    monkeypatch.setattr(engine, "forward", _slow_forward(engine, 5))
    client = app.test_client()
    handler_before = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    body = assert_json_error(client.post("/predict", json=PAIR), 408)
    assert time.monotonic() - started < 2, "SIGALRM must interrupt the sleeping forward pass"
    assert "0.3 s" in body["error"]
    assert signal.getsignal(signal.SIGALRM) in (handler_before, ALARM.on_alarm)  # the service's own handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    monkeypatch.undo()
    assert client.post("/predict", json=PAIR).status_code == 200


def test_a_deadline_passing_during_tokenisation_is_not_mistaken_for_a_tokenizer_error(make_app, monkeypatch) -> None:
    app = make_app(NLI_REQUEST_TIMEOUT=0.2)
    engine = engine_of(app)
    calls = []
    original = engine._tokenize

    def slow_tokenize(*args, **kwargs):
        calls.append(args)
        time.sleep(0.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "_tokenize", slow_tokenize)
    started = time.monotonic()
    assert_json_error(app.test_client().post("/predict", json=PAIR), 408)
    assert time.monotonic() - started < 0.45 and len(calls) == 1, "the alarm must end the request, not a retry"


def test_off_the_main_thread_the_deadline_is_checked_between_chunks(make_app, monkeypatch) -> None:
    import threading

    app = make_app(NLI_REQUEST_TIMEOUT=0.3, NLI_BATCH_SIZE=1, NLI_CACHE_SIZE=0)  # the same pair 10 times: 10 passes
    engine = engine_of(app)
    monkeypatch.setattr(engine, "forward", _slow_forward(engine, 0.2))
    responses = []
    thread = threading.Thread(
        target=lambda: responses.append(app.test_client().post("/batch-predict", json={"pairs": [PAIR] * 10}))
    )
    started = time.monotonic()
    thread.start()
    thread.join()
    assert_json_error(responses[0], 408)
    assert time.monotonic() - started < 1.5, "stopped after the chunk that crossed the deadline"


def test_an_overloaded_threaded_worker_answers_429_with_retry_after(make_app, monkeypatch) -> None:
    import threading

    app = make_app(NLI_WORKER_CLASS="gthread", NLI_THREADS=8, NLI_BATCH_SIZE=1, NLI_MAX_QUEUED_PAIRS=2)
    engine = engine_of(app)
    slow = _slow_forward(engine, 0.3)
    computing = threading.Event()
    monkeypatch.setattr(engine, "forward", lambda encoded, chunk: computing.set() or slow(encoded, chunk))
    responses = []

    def call() -> None:
        responses.append(app.test_client().post("/predict", json=PAIR))

    threads = [threading.Thread(target=call) for _ in range(5)]  # 1 computing, 2 queued, 2 refused
    threads[0].start()
    assert computing.wait(5)
    for started, thread in enumerate(threads[1:], start=1):
        thread.start()  # then wait until it is queued (2 fit) or refused, so they arrive in order
        wait_for(lambda n=started: queued_pairs() + len(responses) >= n, timeout=10, what=f"request {started} settled")
    for thread in threads:
        thread.join()
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) == {200, 429} and statuses.count(200) >= 3, statuses  # exactly 3 unless the machine stalls
    refused = next(response for response in responses if response.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    assert "overloaded" in assert_json_error(refused, 429)["error"]


# -- health, readiness, model info, request ids ----------------------------------------


def test_health_ready_and_model(client, model_dir: Path) -> None:
    health = client.get("/health").get_json()
    assert health["status"] == "ok" and health["model_loaded_at"]
    assert client.get("/ready").status_code == 200
    info = client.get("/model").get_json()
    assert info["id"] == str(model_dir)
    assert info["labels"] == ["contradiction", "entailment", "neutral"]
    assert (info["device"], info["dtype"], info["batch_size"]) == ("cpu", "float32", Settings.from_env({}).batch_size)
    assert info["max_length"] == 128 and info["parameters"] > 0 and info["load_seconds"] >= 0
    assert (info["max_pairs"], info["max_body_bytes"], info["request_timeout"]) == (256, 1024 * 1024, 20)


def test_without_a_model_ready_is_503_and_predict_is_503(make_app) -> None:
    client = make_app(LOAD_MODEL=False).test_client()
    assert client.get("/health").get_json()["status"] == "loading"
    response = client.get("/ready")
    assert_json_error(response, 503)
    assert response.headers["Retry-After"]
    assert_json_error(client.post("/predict", json=PAIR), 503)


def test_request_ids_are_echoed_or_generated(client) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = client.get("/health").headers["X-Request-ID"]
    assert len(generated) == 32
    assert client.get("/nope", headers={"X-Request-ID": "x\u00e9 bad id"}).headers["X-Request-ID"] != "x\u00e9 bad id"
    assert client.post("/predict", json={}).headers["X-Request-ID"]


def test_access_records_are_json_without_input_text(client, tmp_path: Path) -> None:
    client.post("/batch-predict", json={"pairs": [PAIR, PAIR]}, headers={"X-Request-ID": "acc-1"})
    records = [json.loads(line) for line in (tmp_path / "logs" / "nli_service.log").read_text().splitlines()]
    access = next(r for r in records if r.get("request_id") == "acc-1" and r["message"] == "request")
    assert access["status"] == 200 and access["pairs"] == 2 and access["method"] == "POST"
    assert access["path"] == "/batch-predict" and access["latency_ms"] >= 0
    assert access["input_chars"] == 2 * len(Pair(**PAIR).premise + Pair(**PAIR).hypothesis)
    assert access["level"] == "INFO" and access["pid"] and access["time"]
    assert PAIR["premise"] not in json.dumps(records)


# -- one schema: strict types, unknown fields, zero-shot templates and limits ---------------


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/predict", {"premise": 1, "hypothesis": "x"}, "premise must be a string, got number"),
        ("/predict", {"premise": "x", "hypothesis": False}, "hypothesis must be a string, got boolean"),
        ("/batch-predict", {"pairs": [PAIR, {"premise": "x", "hypothesis": 2.5}]}, "pairs[1].hypothesis must be a"),
        ("/batch-predict", {"premises": ["a"], "hypotheses": [["b"]]}, "hypotheses[0] must be a string, got array"),
        ("/batch-predict", {"pairs": [PAIR] * 3 + [{**PAIR, "premise": " "}]}, "pairs[3].premise must not be empty"),
        ("/batch-predict", {"premises": ["a", "b"], "hypotheses": ["c", "d", "e"]}, "same length (2 != 3)"),
        ("/zero-shot", {"text": 3, "labels": ["a"]}, "text must be a string, got number"),
        ("/zero-shot", {"text": "x", "labels": ["a"], "multi_label": 0}, "multi_label must be true or false"),
    ],
)
def test_types_are_strict_and_messages_name_the_field(client, path: str, body: dict, message: str) -> None:
    assert message in assert_json_error(client.post(path, json=body), 400)["error"]


def test_unknown_fields_are_ignored(client) -> None:
    assert client.post("/predict", json={**PAIR, "comment": {"any": [1]}}).status_code == 200
    assert client.post("/batch-predict", json={"pairs": [{**PAIR, "id": 1}], "trace": True}).status_code == 200
    assert client.post("/zero-shot", json={"text": "x", "labels": ["a"], "top_k": 1}).status_code == 200


@pytest.mark.parametrize(
    "template", ["{0}", "{x}", "{.a}", "{{}}{.AAAA}", "{:>3000000}", "{}{}", "{!r}", "{0.__class__}", "{:{}}", "{", "}"]
)
def test_a_zero_shot_template_other_than_one_bare_slot_is_400_fast(client, template: str) -> None:
    started = time.monotonic()
    response = client.post("/zero-shot", json={"text": "x", "labels": ["a", "b"], "hypothesis_template": template})
    body = assert_json_error(response, 400)
    assert time.monotonic() - started < 1, "the template is parsed, never formatted"
    assert body["error"].startswith("hypothesis_template ")
    assert client.post("/zero-shot", json={"text": "x", "labels": ["a", "b"]}).status_code == 200  # still serving


def test_escaped_braces_are_literal_in_the_statement(client, monkeypatch) -> None:
    from nli_service.serving.service import NLIService

    seen = []
    original = NLIService.zero_shot
    monkeypatch.setattr(NLIService, "zero_shot", lambda self, *a, **k: seen.append(a[:3]) or original(self, *a, **k))
    body = {"text": "x", "labels": ["a"], "hypothesis_template": "{{literal}} {} }}"}
    assert client.post("/zero-shot", json=body).status_code == 200
    texts, labels, template = seen[0]
    from nli_service.inference.types import zero_shot_pairs

    assert [pair.hypothesis for pair in zero_shot_pairs(texts, labels, template)] == ["{literal} a }"]


def test_zero_shot_input_past_the_expanded_characters_limit_is_413(make_app, monkeypatch) -> None:
    app = make_app(NLI_MAX_BODY_BYTES=2 * 1024 * 1024)
    engine = engine_of(app)
    calls = []
    monkeypatch.setattr(engine, "_tokenize", lambda *a, **k: calls.append(a) or pytest.fail("never tokenised"))
    body = {"text": "word " * (1024 * 1024 // 5), "labels": [f"label {i}" for i in range(64)]}
    started = time.monotonic()
    response = app.test_client().post("/zero-shot", json=body)
    error = assert_json_error(response, 413)["error"]
    assert time.monotonic() - started < 2 and not calls
    assert "NLI_MAX_EXPANDED_CHARS" in error and "fewer labels" in error and str(4 * 1024 * 1024) in error
    monkeypatch.undo()
    smaller = make_app(NLI_MAX_EXPANDED_CHARS=100).test_client()
    assert smaller.post("/zero-shot", json={"text": "x" * 30, "labels": ["a", "b"]}).status_code == 200
    assert_json_error(smaller.post("/zero-shot", json={"text": "x" * 30, "labels": ["a", "b", "c"]}), 413)


def test_openapi_document_is_served(client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.get_json()["openapi"].startswith("3.1")
    assert response.headers["X-Request-ID"]
