"""The ``nli-service`` command line, run as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from model_factory import SAMPLE_PAIRS
from serving import PROJECT_ROOT, service_env

CLI = [sys.executable, "-m", "nli_service.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [[], ["serve"], ["predict"], ["zero-shot"], ["batch"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0 and "usage: nli-service" in result.stdout


def test_usage_errors_exit_2() -> None:
    assert run("predict", "only-one-argument").returncode == 2


def test_predict_over_http_and_locally_agree(tiny_server, model_dir: Path) -> None:
    remote = run("predict", *SAMPLE_PAIRS[0], "--url", tiny_server.url)
    local = run("predict", *SAMPLE_PAIRS[0], env=service_env(NLI_MODEL=model_dir))
    assert remote.returncode == 0 == local.returncode, remote.stderr + local.stderr
    a, b = json.loads(remote.stdout), json.loads(local.stdout)
    assert a["label"] == b["label"] and abs(a["scores"]["entailment"] - b["scores"]["entailment"]) < 1e-5


def test_zero_shot_locally(model_dir: Path) -> None:
    result = run(
        "zero-shot", "A man plays a guitar.", "--labels", "music,sport,food", env=service_env(NLI_MODEL=model_dir)
    )
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(result.stdout)["labels"]) == ["food", "music", "sport"]


def test_an_unreachable_service_exits_3() -> None:
    result = run("predict", "a", "b", "--url", "http://127.0.0.1:9", "--retries", "0")
    assert result.returncode == 3 and "cannot reach" in result.stderr


def test_batch_writes_in_order_reports_failed_rows_and_resumes(tiny_server, tmp_path: Path) -> None:
    rows = [{"premise": p, "hypothesis": h} for p, h in SAMPLE_PAIRS] * 5  # 20 rows
    rows[7] = {"premise": "", "hypothesis": "empty premise"}
    rows[12] = {"text": "no premise"}
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows) + "not json\n")
    out = tmp_path / "out.jsonl"
    first = run(
        "batch", str(source), "-o", str(out), "--url", tiny_server.url, "--chunk-size", "4", "--concurrency", "3"
    )
    assert first.returncode == 1, first.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in records] == list(range(21))
    failed = {r["row"] for r in records if "error" in r}
    assert failed == {7, 12, 20}
    assert "premise must not be empty" in records[7]["error"]
    assert all(r["label"] for r in records if "error" not in r)
    assert "21 rows written, 3 failed" in first.stderr

    out.write_text("".join(line + "\n" for line in out.read_text().splitlines()[:10]))  # as if interrupted
    second = run("batch", str(source), "-o", str(out), "--url", tiny_server.url, "--resume")
    assert "11 rows written" in second.stderr and "10 skipped" in second.stderr
    assert [json.loads(line)["row"] for line in out.read_text().splitlines()] == list(range(21))


def test_batch_zero_shot(tiny_server, tmp_path: Path) -> None:
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["A dog runs.", "A man sings."]))
    out = tmp_path / "labels.jsonl"
    result = run("batch", str(source), "-o", str(out), "--url", tiny_server.url, "--labels", "animal,music")
    assert result.returncode == 0, result.stderr
    assert [sorted(json.loads(line)["labels"]) for line in out.read_text().splitlines()] == [["animal", "music"]] * 2


def test_serve_runs_gunicorn_with_the_projects_config(model_dir: Path, tmp_path: Path) -> None:
    import requests
    from serving import RunningService

    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=1, NLI_LOG_DIR=tmp_path, PYTHONPATH=PROJECT_ROOT)
    service = RunningService(
        subprocess.Popen(
            [*CLI, "serve"], env=env, text=True, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ),
        env,
    )
    try:
        service.wait_ready()
        assert requests.post(
            f"{service.url}/predict",
            json=dict(zip(("premise", "hypothesis"), SAMPLE_PAIRS[0], strict=True)),
            timeout=10,
        ).ok
    finally:
        assert service.stop() == 0
