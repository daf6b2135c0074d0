"""``make fuzz`` / ``python -m fuzz``: the long fuzzing run; exit 1 on any failure.

1. A tiny model is built (tests/model_factory.py) and served by Gunicorn (gunicorn.conf.py, two
   workers); schemathesis sends ``--examples`` positive and as many negative cases to each operation
   with a body and ``--get-examples`` of each to the others (default: 2,400 requests over the seven
   operations of ``/openapi.json``); then no worker may have died and ``/health`` must answer.
2. The validation layer, in-process: ``--validation-examples`` hypothesis bodies per POST route.

Prints the requests per operation, the statuses, every failure with a request that reproduces it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="cases per POST operation and mode (200)")
    parser.add_argument("--get-examples", type=int, default=150, help="cases per GET operation and mode (150)")
    parser.add_argument("--validation-examples", type=int, default=2000, help="hypothesis bodies per route (2000)")
    parser.add_argument("--workers", type=int, default=2, help="Gunicorn workers (2)")
    parser.add_argument("--worker-class", default="gthread", help="NLI_WORKER_CLASS (gthread)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: drawn, and printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)  # --seed SEED runs the same cases again

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; nothing to ask the hub
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    import serving  # tests/serving.py
    from model_factory import build_model  # tests/model_factory.py

    from fuzz import api, validation
    from fuzz.service import fuzz_service
    from nli_service import create_app

    started = time.monotonic()
    failed = False
    with tempfile.TemporaryDirectory(prefix="nli-fuzz-") as scratch:
        model_dir = build_model(Path(scratch) / "tiny-bert")
        secrets = [str(model_dir)]
        print(f"model: {model_dir}; seed: {seed} (python -m fuzz --seed {seed} repeats this run)", flush=True)

        env = serving.service_env(
            NLI_MODEL=model_dir,
            NLI_WORKERS=args.workers,
            NLI_WORKER_CLASS=args.worker_class,
            NLI_MAX_PAIRS=8,
            NLI_LOG_DIR=Path(scratch) / "logs",
            NLI_LOG_LEVEL="WARNING",
        )
        with serving.running(serving.GUNICORN, env) as service:
            report, problems = fuzz_service(
                service.url,
                service.process.pid,
                args.workers,
                service.output,
                args.examples,
                get_examples=args.get_examples,
                secrets=secrets,
                seed=seed,
                on_found=lambda found: print(f"  found: {found.operation} [{found.check}] {found.title}", flush=True),
            )
        print(api.summary(report))
        print(f"service: {'; '.join(problems) if problems else 'no worker died, /health answers 200'}")
        failed |= bool(report.failures or problems)

        config = {
            "TESTING": True,
            "NLI_MODEL": str(model_dir),
            "NLI_LOG_DIR": str(Path(scratch) / "app-logs"),
            "NLI_WORKER_CLASS": "sync",
            "NLI_LOG_LEVEL": "ERROR",
            **validation.APP_SETTINGS,
        }
        app = create_app(config)
        checked = validation.run(app.test_client(), args.validation_examples, secrets=secrets, seed=seed)
        print(validation.summary(checked))
        failed |= bool(checked.failures)

    print(f"fuzz: {'FAILED' if failed else 'passed'} in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
