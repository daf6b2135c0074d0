"""Short fuzzing (``make fuzz`` runs the long one; see fuzz/ and docs/reliability.md "Fuzzing").

* schemathesis against ``/openapi.json`` of real Gunicorn (two gthread workers): 270 requests over
  every operation, positive and negative data; no failed check, no worker died, /health answers.
* hypothesis properties of the validation layer, in-process: 150 bodies per POST route.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import serving

from fuzz import api, validation
from fuzz.service import fuzz_service
from nli_service import create_app

POST_EXAMPLES = 25  # per POST operation and mode: 4 x 2 x 25 = 200
GET_EXAMPLES = 15  # per GET operation and mode: 4 x 2 x 15 = 120
VALIDATION_EXAMPLES = 150  # per route
SEED = 20261202  # the short runs are the same every time; `make fuzz` draws a new seed


@pytest.fixture(scope="module")
def fuzz_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory, module_services: serving.Services):
    env = serving.service_env(
        NLI_MODEL=model_dir,
        NLI_WORKERS=2,
        NLI_WORKER_CLASS="gthread",
        NLI_MAX_PAIRS=10,  # /verify's example: 5 windows x 2 claims
        NLI_LOG_DIR=tmp_path_factory.mktemp("fuzz-logs"),
        NLI_LOG_LEVEL="WARNING",
    )
    with module_services.running(serving.GUNICORN, env) as service:
        yield service


def test_schemathesis_over_every_operation_finds_no_failure_and_no_worker_dies(fuzz_server, model_dir: Path) -> None:
    report, problems = fuzz_service(
        fuzz_server.url,
        fuzz_server.process.pid,
        2,
        fuzz_server.output,
        POST_EXAMPLES,
        get_examples=GET_EXAMPLES,
        secrets=[str(model_dir)],
        seed=SEED,
    )
    summary = api.summary(report)
    assert report.failures == 0, summary
    assert not problems, problems
    assert report.requests >= 200, summary
    assert set(report.statuses) == {
        "POST /predict",
        "POST /batch-predict",
        "POST /zero-shot",
        "POST /verify",
        "GET /health",
        "GET /ready",
        "GET /model",
        "GET /openapi.json",
    }
    for label, modes in report.modes.items():
        assert modes["positive"] > 0 and modes["negative"] > 0, (label, modes)
    for label in ("POST /predict", "POST /batch-predict", "POST /zero-shot", "POST /verify"):  # both answers seen
        assert report.statuses[label][200] > 0 and report.statuses[label][400] > 0, summary


@pytest.fixture(scope="module")
def validation_client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    config = {
        "TESTING": True,
        "NLI_MODEL": str(model_dir),
        "NLI_LOG_DIR": str(tmp_path_factory.mktemp("validation-logs")),
        "NLI_WORKER_CLASS": "sync",
        **validation.APP_SETTINGS,
    }
    with create_app(config).test_client() as client:
        yield client


@pytest.mark.parametrize("route", validation.ROUTES)
def test_the_validation_layer_answers_any_body_with_a_documented_status_and_shape(
    validation_client, model_dir: Path, route: str
) -> None:
    report = validation.run(validation_client, VALIDATION_EXAMPLES, secrets=[str(model_dir)], seed=SEED, routes=[route])
    assert not report.failures, validation.summary(report)
    statuses = report.statuses[route]
    assert report.requests >= VALIDATION_EXAMPLES // 2, statuses  # hypothesis may stop early, never this early
    assert {200, 400, 413, 415} <= set(statuses), statuses  # every kind of answer was reached


@pytest.mark.parametrize(
    ("status", "answer", "problem"),
    [
        (500, '{"error": "internal server error", "status": 500, "request_id": "r"}', "status 500"),
        (400, '{"error": "x", "status": 400}', "not {error, status, request_id}"),
        (413, '{"error": "x", "status": 400, "request_id": "r"}', "status 400 in the body, 413"),
        (400, '{"error": "Traceback (most recent call last):", "status": 400, "request_id": "r"}', "Traceback"),
        (400, '{"error": "in /srv/nli_service/api/x.py", "status": 400, "request_id": "r"}', "/nli_service/"),
        (200, '{"label": "entailment", "scores": {"entailment": 1.0}}', "PredictResponse"),
        (200, '{"label": "x", "scores": {"entailment": 1.0}, "truncated": false, "model": "m"}', "has no score"),
    ],
)
def test_the_properties_catch_what_they_are_meant_to(status: int, answer: str, problem: str) -> None:
    """The checker itself: each broken answer is named (else the fuzzing above could pass vacuously)."""
    sent = validation.Sent(
        b'{"premise": "a", "hypothesis": "b"}', "application/json", {"premise": "a", "hypothesis": "b"}
    )
    headers = {"Content-Type": "application/json", "X-Request-ID": "r"}
    problems = validation.answer_problems("/predict", sent, status, headers, answer)
    assert any(problem in found for found in problems), problems


def test_the_model_folder_may_appear_only_where_the_model_is_named() -> None:
    secret = "/models/tiny-bert"
    assert validation.leaks('{"label": "x", "model": "/models/tiny-bert"}', [secret]) == []
    assert validation.leaks('{"error": "no file /models/tiny-bert/x", "model": "m"}', [secret]) == [secret]
    assert validation.leaks('{"error": "no file \\/models\\/tiny-bert\\/x"}', [secret]) == [secret]
    assert validation.leaks('{"error": "got \'Traceback\'"}', sent='{"premise": "Traceback"}') == []
    assert validation.leaks('{"error": "File \\"/srv/app.py\\", line 1"}') == ['File "']
