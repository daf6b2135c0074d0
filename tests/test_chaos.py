"""Chaos under load (issue 14), the short version of ``make chaos`` (reliability/chaos.py).

One real Gunicorn service with 4 workers and 8 clients sending /predict throughout: a
stalled-client flood and the zero-shot template attacks (each gets its 4xx, /health stays
under 1 s, the clients get only 200s, no worker dies); kill -9 of a worker (no more failures
than requests in flight on it, full capacity back in < 10 s); SIGTERM to the master (every
accepted request answered, exit 0).
"""

from __future__ import annotations

from pathlib import Path

from serving import GUNICORN, service_env

from reliability import chaos
from reliability.report import write_section


def test_attacks_kill_9_and_sigterm_under_load(services, model_dir: Path, tmp_path: Path) -> None:
    env = service_env(
        NLI_MODEL=model_dir, NLI_WORKERS=4, NLI_CLIENT_TIMEOUT=2, NLI_DRAIN_SECONDS=1.5, NLI_LOG_DIR=tmp_path
    )
    service = services.start(GUNICORN, env)
    service.wait_ready()
    chaos.wait_for_workers(service, 4)
    results = [
        chaos.attacks(service, stalled=40, client_timeout=2.0, clients=8),
        chaos.kill_worker(service, clients=8, measure=2.0),
        chaos.sigterm_master(service, clients=8, drain_seconds=1.5),
    ]
    report = "\n".join(str(row) for result in results for row in result["rows"])
    failures = [failure for result in results for failure in result["failures"]]
    assert not failures, f"{failures}\n{report}\n{service.output()[-3000:]}"


def test_a_run_rewrites_only_its_own_section_of_the_reliability_doc(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text("# Reliability\n\n## Fuzzing\n\nfuzz text\n\n### The last long run\n\nfigures\n")
    write_section("Chaos", "first chaos figures", doc)
    write_section("Goodput", "goodput figures", doc)
    write_section("Chaos", "second chaos figures\n\n| a | b |", doc)
    assert doc.read_text() == (
        "# Reliability\n\n## Fuzzing\n\nfuzz text\n\n### The last long run\n\nfigures\n\n"
        "## Chaos\n\nsecond chaos figures\n\n| a | b |\n\n## Goodput\n\ngoodput figures\n"
    )
