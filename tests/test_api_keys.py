"""API keys (issue 15 §1): every API route needs one when NLI_API_KEYS_FILE is set; only its name is logged."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from model_factory import SAMPLE_PAIRS
from serving import metric_sum

from nli_service.api.auth import parse_keys
from nli_service.config import ConfigError

PAIR = {"premise": SAMPLE_PAIRS[0][0], "hypothesis": SAMPLE_PAIRS[0][1]}
ALICE, BOB = "alice-5f0c2d8e9b1a4c7d", "k-92d1e0aa3b7c44e1"
API_ROUTES = [
    ("post", "/predict", {"json": PAIR}),
    ("post", "/batch-predict", {"json": {"pairs": [PAIR]}}),
    ("post", "/zero-shot", {"json": {"text": "A man plays a guitar.", "labels": ["music", "sport"]}}),
    ("get", "/model", {}),
]
OPEN_ROUTES = ["/health", "/ready", "/openapi.json"]


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text(f"# the team's keys\nalice:{ALICE}\n\n{BOB}\n")
    return path


@pytest.fixture
def app(make_app, keys_file: Path):
    return make_app(NLI_API_KEYS_FILE=keys_file)


def _call(client, method: str, path: str, options: dict, headers: dict[str, str] | None = None):
    return getattr(client, method)(path, headers=headers or {}, **options)


@pytest.mark.parametrize(("method", "path", "options"), API_ROUTES)
def test_every_api_route_is_401_without_a_key_or_with_a_wrong_one(app, method, path, options) -> None:
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": ALICE[:-1]}, {"Authorization": ALICE}):
        response = _call(client, method, path, options, headers)
        body = response.get_json()
        assert response.status_code == 401 and body["status"] == 401, headers
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="nli-service"')
        assert ALICE not in response.get_data(as_text=True)


@pytest.mark.parametrize(("method", "path", "options"), API_ROUTES)
def test_every_api_route_answers_with_a_right_key_as_bearer_or_x_api_key(app, method, path, options) -> None:
    client = app.test_client()
    assert _call(client, method, path, options, {"Authorization": f"Bearer {ALICE}"}).status_code == 200
    assert _call(client, method, path, options, {"X-API-Key": BOB}).status_code == 200


def test_health_ready_and_the_openapi_document_stay_open(app) -> None:
    client = app.test_client()
    assert all(client.get(path).status_code == 200 for path in OPEN_ROUTES)


def test_without_a_keys_file_no_key_is_needed(make_app) -> None:
    assert make_app().test_client().post("/predict", json=PAIR).status_code == 200


def test_the_log_and_the_metrics_carry_the_keys_name_never_the_key(app, tmp_path: Path) -> None:
    from nli_service import metrics

    before = metrics.KEY_REQUESTS.labels(key="alice", status="200")._value.get()
    client = app.test_client()
    client.post("/predict", json=PAIR, headers={"Authorization": f"Bearer {ALICE}"})
    client.post("/predict", json=PAIR, headers={"X-API-Key": BOB})
    client.post("/predict", json=PAIR, headers={"X-API-Key": "wrong-" + ALICE})
    assert metrics.KEY_REQUESTS.labels(key="alice", status="200")._value.get() == before + 1
    text = "".join(path.read_text() for path in (tmp_path / "logs").glob("*.log*"))
    records = [json.loads(line) for line in text.splitlines() if '"path": "/predict"' in line]
    assert [record.get("api_key") for record in records] == ["alice", "line-4", None]
    assert ALICE not in text and BOB not in text


def test_keys_are_re_read_when_the_file_changes(app, keys_file: Path) -> None:
    client = app.test_client()
    new_key = "carol-0c9f3b51e2d84a66"
    assert client.get("/model", headers={"X-API-Key": new_key}).status_code == 401
    keys_file.write_text(f"alice:{ALICE}\ncarol:{new_key}\n")  # Bob revoked, Carol added
    os.utime(keys_file, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a new mtime even on a coarse clock
    assert client.get("/model", headers={"X-API-Key": new_key}).status_code == 200
    assert client.get("/model", headers={"X-API-Key": BOB}).status_code == 401
    keys_file.unlink()  # gone: the last keys stay
    assert client.get("/model", headers={"X-API-Key": new_key}).status_code == 200


def test_an_unusable_keys_file_stops_start_up_with_the_reason(make_app, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NLI_API_KEYS_FILE"):
        make_app(NLI_API_KEYS_FILE=tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("alice:\n")
    with pytest.raises(ConfigError, match="line 1"):
        make_app(NLI_API_KEYS_FILE=bad)


def test_key_lines() -> None:
    keys = parse_keys("# c\n\n  a:x:y \nplain\n")
    assert [(key.name, key.secret) for key in keys] == [("a", b"x:y"), ("line-4", b"plain")]


def test_over_gunicorn_workers_every_worker_asks_for_the_key(services, model_dir: Path, keys_file: Path, tmp_path):
    from serving import GUNICORN, scrape, service_env

    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=2, NLI_API_KEYS_FILE=keys_file, NLI_LOG_DIR=tmp_path / "l")
    with services.running(GUNICORN, env) as service:
        import requests

        statuses = [requests.post(f"{service.url}/predict", json=PAIR, timeout=10).status_code for _ in range(6)]
        keyed = [
            requests.post(f"{service.url}/predict", json=PAIR, headers={"X-API-Key": ALICE}, timeout=10).status_code
            for _ in range(6)
        ]
        assert statuses == [401] * 6 and keyed == [200] * 6
        assert metric_sum(scrape(service.metrics_url), "nli_api_key_requests_total", key="alice", status="200") == 6
        from test_cli import run

        command = ["predict", *SAMPLE_PAIRS[0], "--url", service.url]
        assert run(*command, "--api-key", ALICE).returncode == 0
        assert run(*command, env={**os.environ, "NLI_API_KEY": BOB}).returncode == 0
        refused = run(*command)
        assert refused.returncode != 0 and "401" in refused.stderr + refused.stdout


def test_the_openapi_document_says_which_operations_need_a_key(app, make_app) -> None:
    from openapi_spec_validator import validate

    document = app.test_client().get("/openapi.json").get_json()
    validate(document)
    paths = document["paths"]
    keyed = {path for path, item in paths.items() for operation in item.values() if operation.get("security")}
    assert keyed == {"/predict", "/batch-predict", "/zero-shot", "/verify", "/model"}
    assert all("401" in paths[path][next(iter(paths[path]))]["responses"] for path in keyed)
    open_document = make_app().test_client().get("/openapi.json").get_json()
    assert not any(op.get("security") for item in open_document["paths"].values() for op in item.values())
