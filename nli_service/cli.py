"""``nli-service``: serve, classify one pair, zero-shot a text, or stream a JSONL file through the service.

Exit codes: 0 done; 1 some rows of a batch failed (each reported in the output);
2 bad usage; 3 the service could not be reached or answered an error; 4 the local
model or settings are unusable.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from nli_service.client import NLIClient, NLIConnectionError, NLIError, NLIHTTPError
from nli_service.inference.types import DEFAULT_TEMPLATE

OK, ROWS_FAILED, USAGE, SERVICE_ERROR, LOCAL_ERROR = 0, 1, 2, 3, 4
PROJECT_ROOT = Path(__file__).resolve().parents[1]


# -- one pair / one text ----------------------------------------------------------------


class LocalEngine:
    """The engine in this process, configured from the NLI_* environment (no server)."""

    def __init__(self) -> None:
        from nli_service.config import Settings
        from nli_service.inference.engine import NLIEngine

        self.engine = NLIEngine.from_settings(Settings.from_env())

    def predict(self, premise: str, hypothesis: str) -> Any:
        from nli_service.inference.types import Pair

        return self.engine.predict([Pair(premise, hypothesis)])[0]

    def zero_shot(self, text: str, labels: list[str], template: str, multi_label: bool) -> Any:
        from nli_service.inference.zero_shot import classify

        return classify(self.engine, [text], labels, template, multi_label)[0]


def _backend(args: argparse.Namespace) -> NLIClient | LocalEngine:
    return NLIClient(args.url, timeout=args.timeout, retries=args.retries) if args.url else LocalEngine()


def _print(result: Any) -> None:
    print(json.dumps(result.__dict__ if hasattr(result, "__dict__") else result, indent=2))


def cmd_predict(args: argparse.Namespace) -> int:
    _print(_backend(args).predict(args.premise, args.hypothesis))
    return OK


def cmd_zero_shot(args: argparse.Namespace) -> int:
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    _print(_backend(args).zero_shot(args.text, labels, args.template, args.multi_label))
    return OK


def cmd_serve(args: argparse.Namespace) -> int:
    command = [sys.executable, "-m", "gunicorn", "-c", str(PROJECT_ROOT / "gunicorn.conf.py"), "wsgi:app"]
    os.chdir(PROJECT_ROOT)
    os.execv(sys.executable, command)
    return OK  # not reached


# -- batch ------------------------------------------------------------------------------


Row = tuple[int, Any]  # (row number in the input file, its parsed JSON or the parse error)


def _rows(path: Path, skip: set[int]) -> Iterator[Row]:
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file):
            if line.strip() and number not in skip:
                try:
                    yield number, json.loads(line)
                except ValueError as error:
                    yield number, error


def _done_rows(out: Path) -> set[int]:
    """Rows already in ``out``, answered or reported failed (delete a line to redo its row)."""
    if not out.exists():
        return set()
    done = set()
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by an interrupted run is redone
        done.add(record["row"])
    return done


class BatchJob:
    """Sends groups of rows as one request each; a group the server refuses is retried row by row."""

    def __init__(self, client: NLIClient, labels: list[str] | None, template: str) -> None:
        self.client, self.labels, self.template = client, labels, template

    def _payload(self, item: Any) -> Any:
        if isinstance(item, Exception):
            raise ValueError(f"not JSON: {item}")
        if self.labels:
            return item["text"]
        return {"premise": item["premise"], "hypothesis": item["hypothesis"]}

    def _call(self, payloads: list[Any]) -> list[Any]:
        if self.labels:
            return self.client.zero_shot(payloads, self.labels, self.template)
        return self.client.batch_predict(payloads, chunk_size=len(payloads))

    def records(self, group: list[Row]) -> list[dict]:
        valid: list[tuple[int, Any]] = []
        records: dict[int, dict] = {}
        for number, item in group:
            try:
                valid.append((number, self._payload(item)))
            except (ValueError, KeyError, TypeError) as error:
                records[number] = {"row": number, "error": f"invalid row: {error}"}
        if valid:
            try:
                results = self._call([payload for _, payload in valid])
                records.update({n: {"row": n, **r.__dict__} for (n, _), r in zip(valid, results, strict=True)})
            except NLIHTTPError as error:
                if len(valid) == 1 or error.status not in (400, 413):
                    records.update({n: {"row": n, "error": error.message, "status": error.status} for n, _ in valid})
                else:  # find the bad rows: one request each
                    for number, item in ((n, item) for n, item in group if n not in records):
                        records.update({r["row"]: r for r in self.records([(number, item)])})
        return [records[number] for number, _ in group]


def cmd_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    skip = _done_rows(args.output) if args.resume else set()
    with args.input.open(encoding="utf-8") as file:
        total = sum(1 for line in file if line.strip())
    client = NLIClient(
        args.url,
        timeout=args.timeout,
        retries=args.retries,
        rate=args.rate,
        burst=args.burst,
        max_concurrency=args.concurrency,
    )
    job = BatchJob(client, labels, args.template)
    chunk_size = min(args.chunk_size, client.max_pairs() // (len(labels) if labels else 1) or 1)
    written = failed = 0
    rows = _rows(args.input, skip)
    groups = iter(lambda: list(itertools.islice(rows, chunk_size)), [])
    with (
        client,
        args.output.open("a" if args.resume else "w", encoding="utf-8") as out,
        tqdm(total=total, initial=len(skip), unit="pair", desc="rows", smoothing=0.1) as bar,
    ):
        window: list[Future] = []
        while True:
            # A bounded window of requests in flight; results are written in input order.
            room = args.concurrency * 2 - len(window)
            window += [client.submit(job.records, group) for group in itertools.islice(groups, room)]
            if not window:
                break
            for record in window.pop(0).result():
                out.write(json.dumps(record) + "\n")
                written += 1
                failed += "error" in record
                bar.update(1)
            out.flush()
    print(f"{written} rows written, {failed} failed, {len(skip)} skipped (already done)", file=sys.stderr)
    return ROWS_FAILED if failed else OK


# -- arguments --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="nli-service", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = main.add_subparsers(dest="command", required=True)

    def with_url(sub: argparse.ArgumentParser, required: bool = False) -> None:
        sub.add_argument(
            "--url",
            required=required,
            help="the service, e.g. http://localhost:5000"
            + ("" if required else " (default: the local engine, from NLI_* settings)"),
        )
        sub.add_argument("--timeout", type=float, default=60, help="seconds per HTTP request")
        sub.add_argument("--retries", type=int, default=3, help="retries on connection errors, 429 and 503")

    serve = commands.add_parser("serve", help="run the service under Gunicorn (gunicorn.conf.py, NLI_* settings)")
    serve.set_defaults(run=cmd_serve)

    predict = commands.add_parser("predict", help="classify one premise/hypothesis pair")
    predict.add_argument("premise")
    predict.add_argument("hypothesis")
    with_url(predict)
    predict.set_defaults(run=cmd_predict)

    zero_shot = commands.add_parser("zero-shot", help="rank candidate labels for a text")
    zero_shot.add_argument("text")
    zero_shot.add_argument("--labels", required=True, help="comma-separated candidate labels")
    zero_shot.add_argument("--template", default=DEFAULT_TEMPLATE)
    zero_shot.add_argument("--multi-label", action="store_true")
    with_url(zero_shot)
    zero_shot.set_defaults(run=cmd_zero_shot)

    batch = commands.add_parser("batch", help="stream a JSONL file of pairs (or texts with --labels)")
    batch.add_argument("input", type=Path, help='JSONL rows: {"premise", "hypothesis"} or {"text"} with --labels')
    batch.add_argument("-o", "--output", type=Path, required=True, help="JSONL results, one per row, in input order")
    batch.add_argument("--labels", help="comma-separated labels: zero-shot each row's text")
    batch.add_argument("--template", default=DEFAULT_TEMPLATE)
    batch.add_argument("--rate", type=float, help="requests per second at most (token bucket)")
    batch.add_argument("--burst", type=int, default=1, help="requests allowed at once above the rate")
    batch.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    batch.add_argument("--resume", action="store_true", help="skip rows already answered in OUTPUT")
    batch.add_argument("--chunk-size", type=int, default=32, help="rows per request (at most the server's limit)")
    with_url(batch, required=True)
    batch.set_defaults(run=cmd_batch)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except NLIConnectionError as error:
        print(f"nli-service: {error}", file=sys.stderr)
        return SERVICE_ERROR
    except NLIError as error:
        print(f"nli-service: {error}", file=sys.stderr)
        return SERVICE_ERROR
    except Exception as error:  # noqa: BLE001 - model/config errors of the local engine
        from nli_service.config import ConfigError
        from nli_service.inference.loader import ModelLoadError

        if isinstance(error, ConfigError | ModelLoadError):
            print(f"nli-service: {error}", file=sys.stderr)
            return LOCAL_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
