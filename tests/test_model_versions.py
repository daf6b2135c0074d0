"""Model versions from a repository (``NLI_MODEL_REPOSITORY``), and their rollout under real Gunicorn.

The rollout test is the proof the issue asks for: a client loop runs throughout while a second
version (its labels in another order, so every answer tells which version gave it) is dropped
into the repository, then a broken third one, then the second is deleted; no request fails, no
answer mixes versions, the second version takes over worker by worker, the broken one is refused
(again on SIGHUP) and the first one comes back once the second is withdrawn.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from conftest import REORDERED_ID2LABEL, engine_of
from model_factory import SAMPLE_PAIRS, build_model
from serving import GUNICORN, metric_sum, scrape, service_env, wait_for

from nli_service.config import ConfigError, Settings
from nli_service.inference.engine import NLIEngine
from nli_service.inference.repository import versions
from nli_service.inference.types import Pair
from nli_service.serving.cache import ResultKeys

NAME = "nli"
POLL_SECONDS = 1.0
NOT_NLI_LABELS = {"0": "positive", "1": "negative", "2": "mixed"}


def add_version(repository: Path, version: int, source: Path, name: str = NAME) -> Path:
    """Copy ``source`` in as a new version the way operators should: whole, then renamed into place."""
    staging = repository / name / f".incoming-{version}"
    shutil.copytree(source, staging)
    target = repository / name / str(version)
    staging.rename(target)
    return target


def break_labels(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = NOT_NLI_LABELS
    config["label2id"] = {label: int(index) for index, label in NOT_NLI_LABELS.items()}
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="session")
def constant_model_dir(models_root: Path) -> Path:
    """Always output 1 (entailment in the default order), whatever the input: as the reordered model,
    whose output 1 is CONTRADICTION. The two differ only in their labels' order."""
    return build_model(models_root / "constant", classifier_bias=[0.0, 4.0, 1.0])


@pytest.fixture
def repository(tmp_path: Path, model_dir: Path) -> Path:
    """``nli/1`` and ``nli/2`` (copies of the tiny model), and folders that are no version."""
    root = tmp_path / "repository"
    for version in (1, 2):
        add_version(root, version, model_dir)
    (root / NAME / "tmp-3").mkdir()
    (root / NAME / "3.partial").mkdir()
    (root / NAME / "README").write_text("not a version")
    return root


# -- discovery, pinning, reporting (in-process apps) --------------------------------------


def test_versions_are_the_integer_folders_lowest_first(repository: Path, model_dir: Path) -> None:
    add_version(repository, 10, model_dir)
    assert [found.version for found in versions(str(repository), NAME)] == [1, 2, 10]


def test_the_highest_version_is_served_and_reported(make_app, repository: Path) -> None:
    client = make_app(NLI_MODEL=NAME, NLI_MODEL_REPOSITORY=repository).test_client()
    model = client.get("/model").get_json()
    assert (model["id"], model["model_version"], model["source"]) == (NAME, 2, "repository")
    assert model["path"] == str((repository / NAME / "2").resolve())
    assert model["repository"]["versions"] == [1, 2]
    assert model["repository"]["refused"] == []
    health = client.get("/health").get_json()
    assert (health["model"], health["model_version"]) == (NAME, 2)
    answer = client.post("/predict", json={"premise": "A man plays.", "hypothesis": "A person plays."})
    assert answer.status_code == 200
    assert (answer.get_json()["model"], answer.headers["X-Model-Version"]) == (NAME, "2")


def test_a_pinned_version_is_served(make_app, repository: Path) -> None:
    model = (
        make_app(NLI_MODEL=NAME, NLI_MODEL_REPOSITORY=repository, NLI_MODEL_VERSION=1)
        .test_client()
        .get("/model")
        .get_json()
    )
    assert model["model_version"] == 1
    assert model["repository"]["pinned_version"] == 1


def test_a_pin_on_a_missing_version_or_without_a_repository_stops_start_up(make_app, repository: Path) -> None:
    from nli_service.inference.loader import ModelLoadError

    with pytest.raises(ModelLoadError, match="NLI_MODEL_VERSION=7 is not in"):
        make_app(NLI_MODEL=NAME, NLI_MODEL_REPOSITORY=repository, NLI_MODEL_VERSION=7)
    with pytest.raises(ConfigError, match="NLI_MODEL_REPOSITORY is not"):
        Settings.from_env({"NLI_MODEL_VERSION": "1"})


def test_nli_model_names_the_model_when_the_repository_holds_several(
    make_app, repository: Path, model_dir: Path
) -> None:
    from nli_service.inference.loader import ModelLoadError

    add_version(repository, 5, model_dir, name="other")
    with pytest.raises(ModelLoadError, match="holds 2 model folders"):
        create_without_nli_model(repository)
    with pytest.raises(ModelLoadError, match="is no model folder in"):
        make_app(NLI_MODEL_REPOSITORY=repository)  # make_app's NLI_MODEL is a path
    model = make_app(NLI_MODEL_REPOSITORY=repository, NLI_MODEL="other").test_client().get("/model").get_json()
    assert (model["id"], model["model_version"]) == ("other", 5)


def create_without_nli_model(repository: Path):
    """An app with NLI_MODEL unset (make_app sets it): the repository's only model is served."""
    from nli_service import create_app

    return create_app({"TESTING": True, "NLI_MODEL_REPOSITORY": str(repository), "NLI_WORKER_CLASS": "sync"})


def test_nli_model_alone_works_as_before_with_no_version(client) -> None:
    model = client.get("/model").get_json()
    assert model["model_version"] is None and model["repository"] is None
    assert client.get("/health").get_json()["model_version"] is None
    answer = client.post("/predict", json={"premise": "A man plays.", "hypothesis": "A person plays."})
    assert "X-Model-Version" not in answer.headers


def test_a_broken_newest_version_at_start_is_refused_and_the_next_one_serves(
    make_app, repository: Path, model_dir: Path
) -> None:
    from prometheus_client import REGISTRY

    def refusals() -> float:
        return REGISTRY.get_sample_value("nli_model_versions_refused_total", {"model": NAME, "version": "3"}) or 0.0

    before = refusals()
    break_labels(add_version(repository, 3, model_dir))
    model = make_app(NLI_MODEL=NAME, NLI_MODEL_REPOSITORY=repository).test_client().get("/model").get_json()
    assert model["model_version"] == 2
    [refused] = model["repository"]["refused"]
    assert refused["version"] == 3 and "positive" in refused["reason"] and "not exactly" in refused["reason"]
    assert refusals() == before + 1


def test_the_access_log_names_the_model_and_its_version(make_app, repository: Path, tmp_path: Path) -> None:
    client = make_app(NLI_MODEL=NAME, NLI_MODEL_REPOSITORY=repository).test_client()
    client.post("/predict", json={"premise": "A man plays.", "hypothesis": "A person plays."})
    records = [json.loads(line) for line in (tmp_path / "logs" / "nli_service.log").read_text().splitlines()]
    [access] = [record for record in records if record.get("path") == "/predict"]
    assert (access["model"], access["model_version"]) == (NAME, 2)


def test_a_new_version_never_shares_cached_results_with_an_old_one(make_app, repository: Path) -> None:
    """Versions 1 and 2 hold the same files: still each keys its results apart (memory and Redis alike)."""
    pair = Pair(*SAMPLE_PAIRS[0])
    keys = [
        ResultKeys(engine_of(make_app(NLI_MODEL=NAME, NLI_MODEL_REPOSITORY=repository, NLI_MODEL_VERSION=version)))(
            pair
        )
        for version in (1, 2)
    ]
    assert keys[0] != keys[1]


# -- the rollout under real Gunicorn ------------------------------------------------------


@dataclass
class ClientLoop:
    """Requests sent back to back on new connections until stopped, each answer kept."""

    url: str
    answers: list[tuple[int, str | None, dict]] = field(default_factory=list)  # status, X-Model-Version, body
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, batch: bool, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds  # bounded even if the test never stops it
        premise, hypothesis = SAMPLE_PAIRS[0]
        while not self.stop.is_set() and time.monotonic() < deadline:
            if batch:
                path, body = "/batch-predict", {"pairs": [{"premise": p, "hypothesis": h} for p, h in SAMPLE_PAIRS]}
            else:
                path, body = "/predict", {"premise": premise, "hypothesis": hypothesis}
            try:
                answer = requests.post(f"{self.url}{path}", json=body, timeout=30)
            except requests.RequestException as error:
                self.failures.append(f"{path}: {type(error).__name__}: {error}")
                continue
            if answer.status_code != 200:
                self.failures.append(f"{path}: {answer.status_code} {answer.text[:200]}")
                continue
            self.answers.append((answer.status_code, answer.headers.get("X-Model-Version"), answer.json()))


def expected_scores(folder: Path) -> dict[str, float]:
    """What the version in ``folder`` answers (its classifier ignores the input)."""
    [prediction] = NLIEngine.from_pretrained(str(folder), device="cpu").predict([Pair(*SAMPLE_PAIRS[0])])
    return prediction.scores


def answered_by(scores: dict[str, float], by_version: dict[str, dict[str, float]]) -> str | None:
    for version, expected in by_version.items():
        if set(scores) == set(expected) and all(abs(scores[label] - expected[label]) < 1e-5 for label in expected):
            return version
    return None


def only_version_serves(service, version: str) -> bool:
    """Every worker serves ``version`` (nli_model_info counts live workers by version)."""
    samples = scrape(service.metrics_url)
    serving = {key for key, value in samples.items() if key.startswith("nli_model_info{") and value > 0}
    return metric_sum(samples, "nli_model_info", version=version) == 2 and len(serving) == 1


def model_version_of(service) -> int | None:
    return requests.get(f"{service.url}/model", timeout=10).json()["model_version"]


def test_a_new_version_rolls_out_worker_by_worker_a_broken_one_is_refused_a_withdrawn_one_rolls_back(
    services, tmp_path: Path, constant_model_dir: Path, reordered_model_dir: Path
) -> None:
    repository = tmp_path / "repository"
    add_version(repository, 1, constant_model_dir)
    by_version = {"1": expected_scores(constant_model_dir), "2": expected_scores(reordered_model_dir)}
    assert by_version["1"] != by_version["2"]  # the same numbers under other labels: answers tell versions apart
    assert list(REORDERED_ID2LABEL.values())[1].lower() == max(by_version["2"], key=by_version["2"].get)
    env = service_env(
        NLI_MODEL_REPOSITORY=repository,
        NLI_WORKERS=2,
        NLI_MODEL_POLL_SECONDS=POLL_SECONDS,
        NLI_LOG_DIR=tmp_path / "logs",
        NLI_CACHE_SIZE=0,  # every answer computed by the worker's own model
    )
    with services.running(GUNICORN, env) as service:
        loop = ClientLoop(service.url)
        clients = [threading.Thread(target=loop.run, args=(batch,)) for batch in (False, True)]
        for client in clients:
            client.start()
        try:
            wait_for(lambda: len(loop.answers) >= 10, timeout=30, what="answers from version 1")
            dropped = time.monotonic()
            add_version(repository, 2, reordered_model_dir)
            wait_for(lambda: model_version_of(service) == 2, timeout=60, what="/model reporting version 2")
            flipped = time.monotonic() - dropped

            wait_for(lambda: only_version_serves(service, "2"), timeout=60, what="both workers on version 2")
            replaced = time.monotonic() - dropped
            answers_before_broken = len(loop.answers)

            break_labels(add_version(repository, 3, reordered_model_dir))

            def refused_versions() -> list[int]:
                model = requests.get(f"{service.url}/model", timeout=10).json()
                return [refusal["version"] for refusal in model["repository"]["refused"]]

            wait_for(lambda: refused_versions() == [3], timeout=60, what="version 3 refused")
            service.process.send_signal(signal.SIGHUP)  # looks again, re-checking the refused version
            wait_for(lambda: refused_versions() == [3, 3], timeout=60, what="version 3 checked again on SIGHUP")
            wait_for(lambda: len(loop.answers) > answers_before_broken + 10, timeout=30, what="answers after")
            model = requests.get(f"{service.url}/model", timeout=10).json()

            answers_before_rollback = len(loop.answers)
            shutil.rmtree(repository / NAME / "2")  # the served version withdrawn: back to the highest one left
            wait_for(lambda: only_version_serves(service, "1"), timeout=60, what="both workers back on version 1")
            wait_for(lambda: len(loop.answers) > answers_before_rollback + 10, timeout=30, what="answers after")
        finally:
            loop.stop.set()
            for client in clients:
                client.join(timeout=60)
        samples = scrape(service.metrics_url)
        output = service.output()

    assert loop.failures == [], loop.failures[:5]
    versions_seen = []
    for _, header, body in loop.answers:
        results = body.get("results", [body])
        answered = {answered_by(result["scores"], by_version) for result in results}
        assert answered == {header}, (header, body)  # every answer wholly from the version it names
        versions_seen.append(header)
    assert versions_seen[0] == "1" and versions_seen[-1] == "1"
    assert "2" in versions_seen[:answers_before_broken]
    assert "1" not in versions_seen[answers_before_broken:answers_before_rollback]  # 2 served on through 3
    assert model["model_version"] == 2
    assert "not exactly" in model["repository"]["refused"][-1]["reason"]
    assert metric_sum(samples, "nli_model_versions_refused_total", model=NAME, version="3") == 2
    for version, label in (("1", "entailment"), ("2", "contradiction")):  # each version's only answer
        assert metric_sum(samples, "nli_predicted_label_total", model=NAME, version=version, label=label) > 0
        assert metric_sum(samples, "nli_inference_seconds_count", model=NAME, version=version) > 0
    assert metric_sum(samples, "nli_predicted_label_total", version="2", label="entailment") == 0
    assert "model version 2 of nli serves on every worker" in output
    assert "model version 1 of nli serves on every worker" in output
    print(f"/model flipped {flipped:.1f} s after version 2 appeared; both workers replaced after {replaced:.1f} s")


# -- the parts the master relies on ---------------------------------------------------------


def test_a_worker_counts_as_ready_once_it_said_so_under_its_own_age_and_pid() -> None:
    from nli_service.server.worker_table import WorkerTable

    table = WorkerTable(slots=4)
    assert not table.is_ready(5, 100)
    table.mark_ready(5, 100)
    assert table.is_ready(5, 100)
    assert not table.is_ready(5, 101) and not table.is_ready(6, 100)
    table.mark_ready(9, 200)  # age 9 shares age 5's row: the newer worker's pid replaces the older one's
    assert table.is_ready(9, 200) and not table.is_ready(5, 100)


def wait_for_verdict(check) -> str | None:
    wait_for(check.finished, timeout=120, what="the version check")
    return check.failure()


def test_the_version_check_passes_a_good_version_and_says_why_a_broken_one_fails(
    repository: Path, model_dir: Path
) -> None:
    from nli_service.serving.version_check import VersionCheck

    [first, second] = versions(str(repository), NAME)
    break_labels(second.path)
    (first.path / "model.safetensors").unlink()
    add_version(repository, 3, model_dir)
    good = versions(str(repository), NAME)[-1]
    assert wait_for_verdict(VersionCheck(good)) is None
    assert "cannot load model" in (wait_for_verdict(VersionCheck(first)) or "")
    assert "not exactly" in (wait_for_verdict(VersionCheck(second)) or "")
