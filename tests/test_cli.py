"""The ``nli-service`` command line, run as a subprocess."""

from __future__ import annotations

import json
import shutil
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


def _one_line_usage_error(result: subprocess.CompletedProcess, wanted: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert wanted in result.stderr


@pytest.mark.parametrize(
    ("arguments", "wanted"),
    [
        (["missing.jsonl"], "no such file: missing.jsonl"),
        (["IN", "--rate", "0"], "argument --rate: must be > 0, got 0"),
        (["IN", "--rate", "nan"], "argument --rate: must be > 0"),
        (["IN", "--concurrency", "0"], "argument --concurrency: must be >= 1"),
        (["IN", "--burst", "x"], "argument --burst: not a valid int"),
        (["IN", "--chunk-size", "-1"], "argument --chunk-size: must be >= 1"),
        (["IN", "--timeout", "0"], "argument --timeout: must be > 0"),
        (["IN", "--retries", "-1"], "argument --retries: must be >= 0"),
        (["IN", "-o", "no/such/dir/out.jsonl"], "argument -o/--output: not a file in an existing directory"),
        (["IN", "--labels", ","], "labels must hold 1 to 64 labels, got 0"),
    ],
)
def test_bad_batch_arguments_exit_2_with_one_line(arguments: list[str], wanted: str, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"premise": "a", "hypothesis": "b"}\n')
    arguments = [str(source) if a == "IN" else a for a in arguments]
    output = [] if "-o" in arguments else ["-o", str(tmp_path / "out.jsonl")]
    # the URL is never contacted: the arguments are checked first
    _one_line_usage_error(run("batch", *arguments, *output, "--url", "http://127.0.0.1:9"), wanted)


def test_an_unusable_local_model_exits_4_with_the_reason() -> None:
    result = run("predict", "a", "b", env=service_env(NLI_MODEL="/nonexistent"))
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr and "/nonexistent" in result.stderr and "does not exist" in result.stderr


def test_predict_over_http_and_locally_agree(tiny_server, model_dir: Path) -> None:
    remote = run("predict", *SAMPLE_PAIRS[0], "--url", tiny_server.url)
    local = run("predict", *SAMPLE_PAIRS[0], env=service_env(NLI_MODEL=model_dir))
    assert remote.returncode == 0 == local.returncode, remote.stderr + local.stderr
    a, b = json.loads(remote.stdout), json.loads(local.stdout)
    assert a["label"] == b["label"] and abs(a["scores"]["entailment"] - b["scores"]["entailment"]) < 1e-5


def test_zero_shot_locally_and_over_http_agree(tiny_server, model_dir: Path) -> None:
    command = ["zero-shot", "A man plays a guitar.", "--labels", "music, sport,food", "--template", "It is {}."]
    local = run(*command, env=service_env(NLI_MODEL=model_dir))
    remote = run(*command, "--url", tiny_server.url)
    assert local.returncode == 0 == remote.returncode, local.stderr + remote.stderr
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert sorted(a["labels"]) == ["food", "music", "sport"] and a["labels"] == b["labels"]
    assert all(abs(x - y) < 1e-5 for x, y in zip(a["scores"], b["scores"], strict=True))


ZERO_SHOT_MISTAKES = [
    (["--labels", "a,b", "--template", "no slot"], 'hypothesis_template must contain "{}"'),
    (["--labels", "a,b,a"], "labels must be unique; repeated: ['a']"),
    (["--labels", ","], "labels must hold 1 to 64 labels, got 0"),
]


@pytest.mark.parametrize(("arguments", "wanted"), ZERO_SHOT_MISTAKES)
def test_local_zero_shot_applies_the_services_rules(arguments: list[str], wanted: str, model_dir: Path) -> None:
    _one_line_usage_error(run("zero-shot", "A dog runs.", *arguments, env=service_env(NLI_MODEL=model_dir)), wanted)


@pytest.mark.parametrize(("arguments", "wanted"), ZERO_SHOT_MISTAKES[:1])
def test_zero_shot_over_http_checks_the_options_before_sending(arguments: list[str], wanted: str) -> None:
    _one_line_usage_error(run("zero-shot", "A dog runs.", *arguments, "--url", "http://127.0.0.1:9"), wanted)


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

    lines = out.read_text().splitlines()
    out.write_text("".join(line + "\n" for line in lines[:10]) + lines[10][:15])  # interrupted mid-line
    second = run("batch", str(source), "-o", str(out), "--url", tiny_server.url, "--resume")
    # the failed row 7 is redone, and the cut row 10 with the rest: 9 answered rows are skipped
    assert "12 rows written, 2 of them redone, 3 failed, 9 skipped" in second.stderr, second.stderr
    resumed = [json.loads(line) for line in out.read_text().splitlines()]  # none glued to the cut one
    assert [(r["row"], r.get("label"), r.get("error")) for r in resumed] == [
        (r["row"], r.get("label"), r.get("error")) for r in records
    ]

    third = run("batch", str(source), "-o", str(out), "--url", tiny_server.url, "--resume")
    # the 3 bad rows are tried again (and fail again: exit 1); the 18 answered ones are skipped
    assert third.returncode == 1 and "3 rows written" in third.stderr and "18 skipped" in third.stderr
    assert [json.loads(line)["row"] for line in out.read_text().splitlines()] == list(range(21))


def test_batch_zero_shot(tiny_server, tmp_path: Path) -> None:
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["A dog runs.", "A man sings."]))
    out = tmp_path / "labels.jsonl"
    result = run("batch", str(source), "-o", str(out), "--url", tiny_server.url, "--labels", "animal,music,food")
    assert result.returncode == 0, result.stderr
    labels = [sorted(json.loads(line)["labels"]) for line in out.read_text().splitlines()]
    assert labels == [["animal", "food", "music"]] * 2
    assert "6/6" in result.stderr and "pair/s" in result.stderr  # the bar counts pairs: rows x labels


def test_the_installed_command_serves_from_any_directory(model_dir: Path, tmp_path: Path, services) -> None:
    """``pip install .`` then ``nli-service serve`` away from the source tree (Gunicorn's config is packaged)."""
    import requests

    source, target, elsewhere = tmp_path / "source", tmp_path / "installed", tmp_path / "elsewhere"
    source.mkdir()
    elsewhere.mkdir()
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy(PROJECT_ROOT / name, source)
    shutil.copytree(PROJECT_ROOT / "nli_service", source / "nli_service", ignore=shutil.ignore_patterns("__pycache__"))
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*install, str(target), str(source)], check=True, capture_output=True, timeout=300)
    assert not (target / "gunicorn.conf.py").exists() and not (target / "wsgi.py").exists()

    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=1, NLI_LOG_DIR=tmp_path / "logs", PYTHONPATH=target)
    where = [sys.executable, "-c", "import nli_service; print(nli_service.__file__)"]
    assert subprocess.run(where, cwd=elsewhere, env=env, capture_output=True, text=True).stdout.startswith(str(target))
    command = str(target / "bin" / "nli-service")
    shown = subprocess.run([command, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "usage: nli-service" in shown.stdout

    pair = dict(zip(("premise", "hypothesis"), SAMPLE_PAIRS[0], strict=True))
    service = services.start([command, "serve"], env, cwd=elsewhere)
    try:
        service.wait_ready()
        assert requests.post(f"{service.url}/predict", json=pair, timeout=10).ok
        assert requests.get(service.metrics_url, timeout=10).ok  # the packaged config's when_ready hook ran
    finally:
        assert service.stop() == 0, service.output()
