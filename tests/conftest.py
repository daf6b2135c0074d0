"""Shared fixtures: tiny models built locally, apps that serve them, and the test markers.

Markers (registered in pyproject.toml):

* ``server``: the test starts a real service in a subprocess (Gunicorn, ``python app.py``,
  ``nli-service serve``). Never written by hand: a test gets it by requesting the
  ``services`` fixture (or a fixture built on it, such as ``tiny_server``), and a test
  that starts a service through tests/serving.py without it FAILS (see
  ``pytest_runtest_setup``/``pytest_runtest_call`` below), so the marker cannot be missed.
* ``slow``: takes more than ~5 s. Given to every test that uses a fixture in
  ``SLOW_FIXTURES`` and to the tests in ``SLOW_TESTS``; a test that ran longer than
  ``SLOW_SECONDS`` (its call, not shared fixtures' set-up) without it is named at the end of the run.

``make test-fast`` runs ``-m "not server and not slow"``.

The Hugging Face hub plays no part, reachable from this machine or not: every test, and
every service it starts (they inherit this environment), sees an empty hub cache and a
hub endpoint on a closed local port (a hub contact fails at once, the same way everywhere).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

if "huggingface_hub" in sys.modules:  # its constants are read from the environment at import
    raise RuntimeError("huggingface_hub was imported before tests/conftest.py isolated the hub")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


for _name in list(os.environ):
    if _name.startswith(("NLI_", "PROMETHEUS_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_")):
        del os.environ[_name]
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="nli-tests-hf-home-")  # an empty cache
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"  # connection refused
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

sys.path.insert(0, str(Path(__file__).parent))

import serving  # noqa: E402
from model_factory import build_model  # noqa: E402

from nli_service import create_app  # noqa: E402

SERVER_FIXTURES = {"services", "module_services"}  # and every fixture that requests one of them
SLOW_FIXTURES = {"slow_model_dir", "services"}  # a service of its own: 5-10 s to start and stop on 2 cores
SLOW_TESTS = {  # file::name (every parametrization) or file::name[id]: slow tests using none of SLOW_FIXTURES
    "test_training.py::test_training_resumes_after_an_epoch_and_writes_a_servable_model",  # two training runs
    # the ONNX export (the first in a module pays for it; the others reuse its cache)
    "test_backends.py::test_backend_agrees_with_torch_float32[onnx-none]",
    "test_backends.py::test_backend_agrees_with_torch_float32[onnx-int8]",
    "test_backends.py::test_calibrated_int8_smooths_activations_and_computes_outlier_channels_in_float",
    "test_backends.py::test_a_corrupt_cached_export_is_rebuilt",
    "test_backends.py::test_the_onnx_export_is_cached_and_reused",
    "test_backends.py::test_float32_backends_are_batch_invariant[onnx]",
    "test_backends.py::test_smoothing_alone_changes_no_result",
    "test_backends.py::test_int8_is_onnx_int8_and_torch_int8_is_refused",  # exports when it runs first
    "test_backends.py::test_without_calibration_data_int8_is_plain_dynamic_quantisation",
    "test_defects.py::test_a_second_app_with_another_backend_gets_its_own_engine",
    "test_defects.py::test_an_alarm_delivered_after_the_request_does_not_kill_the_worker",  # builds a model
    "test_slow_clients.py::test_stalled_connections_do_not_stop_health_and_get_408",  # waits out the timeout
    "test_slow_clients.py::test_a_request_that_arrives_in_pieces_within_the_time_is_served",
    "test_overload.py::test_over_real_gunicorn_a_client_that_hangs_up_while_queued_is_not_computed",
    "test_drain.py::test_sigterm_under_load_answers_every_accepted_request",
    "test_layers.py::test_the_engine_loads_neither_flask_nor_gunicorn",  # imports torch in a child process
    "test_layers.py::test_the_import_contracts_in_pyproject_hold",
    "test_cli.py::test_an_unusable_local_model_exits_4_with_the_reason",  # imports torch in a child process
    "test_faults.py::test_when_no_worker_ever_starts_the_server_stops_with_the_reason",
    # the CLI run as subprocesses against tiny_server, 2-3 runs each (torch's import alone takes seconds)
    "test_cli.py::test_predict_over_http_and_locally_agree",
    "test_cli.py::test_zero_shot_locally_and_over_http_agree",
    "test_cli.py::test_batch_writes_in_order_reports_failed_rows_and_resumes",
    "test_cli.py::test_batch_zero_shot",
    "test_operations.py::test_a_worker_killed_in_flight_leaves_no_live_gauge_and_its_counts_stay",  # a re-fork
    "test_fuzz.py::test_schemathesis_over_every_operation_finds_no_failure_and_no_worker_dies",  # 270 requests
}
SLOW_SECONDS = 5.0
_STARTED_BEFORE = pytest.StashKey[int]()
_too_slow: list[tuple[str, float]] = []


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seen: set[str] = set()
    files: set[str] = set()
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & SERVER_FIXTURES:
            item.add_marker(pytest.mark.server)
        file = Path(item.path).name
        ids = {f"{file}::{getattr(item, 'originalname', item.name)}", f"{file}::{item.name}"}
        files.add(file)
        seen |= ids
        if names & SLOW_FIXTURES or ids & SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    # A renamed test would lose its marker: name any that a collected file no longer has.
    stale = sorted(test for test in SLOW_TESTS if test.partition("::")[0] in files and test not in seen)
    if stale and not config.option.keyword and not any("::" in arg for arg in config.args):
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(f"conftest.SLOW_TESTS names tests that were not collected: {stale}"),
            stacklevel=2,
        )


def _check_server_marker(item: pytest.Item) -> None:
    started = serving.services_started()[item.stash[_STARTED_BEFORE] :]
    if started and item.get_closest_marker("server") is None:
        pytest.fail(
            f"{item.nodeid} started a service ({started[0]}) without the `server` marker: "
            "start services through the `services` fixture (or module_services) instead of tests/serving.py",
            pytrace=False,
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    item.stash[_STARTED_BEFORE] = len(serving.services_started())
    try:
        return (yield)
    finally:
        _check_server_marker(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    started = time.monotonic()
    try:
        return (yield)
    finally:
        seconds = time.monotonic() - started  # the test itself: shared fixtures' set-up is not its own
        if seconds > SLOW_SECONDS and item.get_closest_marker("slow") is None:
            _too_slow.append((item.nodeid, seconds))
        _check_server_marker(item)


def pytest_terminal_summary(terminalreporter) -> None:
    if _too_slow:
        terminalreporter.section(
            f"tests over {SLOW_SECONDS:g} s without the slow marker (add them to conftest.SLOW_TESTS)"
        )
        for nodeid, seconds in sorted(_too_slow, key=lambda entry: -entry[1]):
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}")


# The guide's model orders its labels contradiction, entailment, neutral; this one differs,
# and its classifier always picks output 1, which it calls CONTRADICTION.
REORDERED_ID2LABEL = {0: "Neutral", 1: "CONTRADICTION", 2: "entailment"}


def engine_of(app):
    """The engine ``app`` serves (behind the batcher, with threaded workers)."""
    from nli_service.api.service import EXTENSION_KEY

    return app.extensions[EXTENSION_KEY]


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def model_dir(models_root: Path) -> Path:
    return build_model(models_root / "tiny-bert")


@pytest.fixture(scope="session")
def reordered_model_dir(models_root: Path) -> Path:
    return build_model(models_root / "reordered", id2label=REORDERED_ID2LABEL, classifier_bias=[0.0, 4.0, 1.0])


@pytest.fixture(scope="session")
def roberta_model_dir(models_root: Path) -> Path:
    return build_model(models_root / "tiny-roberta", architecture="roberta")


def _started_services() -> Iterator[serving.Services]:
    started = serving.Services()
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def services() -> Iterator[serving.Services]:
    """Start real services (``start``, ``running``, ``run_to_exit``); gives the test the ``server`` marker."""
    yield from _started_services()


@pytest.fixture(scope="module")
def module_services() -> Iterator[serving.Services]:
    """``services`` for module-scoped fixtures: a service shared by a module's tests."""
    yield from _started_services()


@pytest.fixture(scope="module")
def tiny_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory, module_services: serving.Services):
    """The tiny model under Gunicorn, 2 workers, at most 4 pairs per request."""
    logs = tmp_path_factory.mktemp("logs")
    env = serving.service_env(NLI_MODEL=model_dir, NLI_WORKERS=2, NLI_MAX_PAIRS=4, NLI_LOG_DIR=logs)
    with module_services.running(serving.GUNICORN, env) as service:
        yield service


@pytest.fixture
def make_app(tmp_path: Path, model_dir: Path):
    """``make_app(**settings)``: an app on the tiny model, logging under tmp_path."""

    def make(**overrides: object):
        # In-process apps run their requests in the caller's thread, as a sync worker does;
        # tests of the cross-request batcher ask for NLI_WORKER_CLASS=gthread.
        config = {
            "TESTING": True,
            "NLI_MODEL": str(model_dir),
            "NLI_LOG_DIR": str(tmp_path / "logs"),
            "NLI_WORKER_CLASS": "sync",
        }
        config.update(overrides)
        return create_app(config)

    return make


@pytest.fixture
def client(make_app) -> Iterator:
    with make_app().test_client() as test_client:
        yield test_client


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator:
    """A real redis-server on a free port (tests/redis_server.py), killed after the test."""
    from redis_server import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
