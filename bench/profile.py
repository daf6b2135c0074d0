"""``make profile``: where a default worker's time goes under 16 concurrent single-pair clients.

Starts the default service (``make bench``'s "default" settings), drives ``/predict`` at
concurrency 16 from the load-generator process, and samples one worker with py-spy
(every thread, idle ones included). Prints, per thread kind, the share of samples in
each stage: model forward, padding, tokenisation, Flask and JSON, waiting.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.__main__ import DEFAULT_WORKERS, RESULTS, _drive, default_settings
from bench.models import generated_model
from bench.server import Service
from bench.workloads import as_json, snli_pairs

STAGES = (  # first match wins, searched in the whole stack
    ("model forward", "NLIEngine.forward"),
    ("padding", "NLIEngine._pad"),
    ("tokenisation", "NLIEngine._tokenize"),
    ("waiting for the batcher", "MicroBatcher.scores"),
    ("waiting in the batcher's queue", "MicroBatcher._gather"),
    ("Flask, JSON, logging, metrics", "Flask.wsgi_app"),
    ("Gunicorn's connection loop", "gthread.py"),
    ("idle, no request", "_worker (concurrent/futures/thread.py"),
)


def stage_of(stack: str) -> str:
    return next((name for name, marker in STAGES if marker in stack), "other")


def summarise(raw: Path) -> dict[str, dict[str, float]]:
    """py-spy's raw output as {thread kind: {stage: share of that kind's samples}}."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        thread = stack.split(";", 1)[0]
        kind = "batcher" if "nli-batcher" in thread else "request threads" if "ThreadPool" in thread else "main"
        counts[kind][stage_of(stack)] += int(samples)
    return {kind: {stage: round(n / sum(c.values()), 3) for stage, n in c.most_common()} for kind, c in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the generated distilroberta-base-sized model)")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    model = args.model or str(generated_model(RESULTS / "models"))
    settings = default_settings({"NLI_MODEL": model, "NLI_LOG_DIR": str(RESULTS / "logs")})
    service = Service(settings)
    raw = Path(tempfile.mkdtemp()) / "profile.txt"
    try:
        service.wait_ready(DEFAULT_WORKERS)
        worker = service.pids()[1]
        py_spy = str(Path(sys.executable).with_name("py-spy"))
        command = [py_spy, "record", "--pid", str(worker), "--duration", str(int(args.seconds))]
        command += ["--format", "raw", "--output", str(raw), "--nonblocking", "--threads", "--idle"]
        sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        load = _drive(service, "/predict", as_json(snli_pairs(256)), 16, args.seconds)
        if sampler.wait() != 0:
            sys.exit(f"py-spy failed: {sampler.stderr.read().strip()}")
    finally:
        service.stop()
    print(f"/predict at concurrency 16: {load['pairs_per_second']} pairs/s, p50 {load['p50_ms']} ms")
    for kind, stages in summarise(raw).items():
        print(f"{kind}: " + ", ".join(f"{stage} {share:.1%}" for stage, share in stages.items()))


if __name__ == "__main__":
    main()
