"""``nli-service``: serve, classify one pair, zero-shot a text, verify claims against a document, or stream a
JSONL file through the service.

Exit codes: 0 done; 1 some rows of a batch failed (each reported in the output; after
``--resume``, which redoes failed rows, those that failed again);
2 bad usage (arguments, files, zero-shot labels or template); 3 the service could not be
reached or answered an error; 4 the local model or settings are unusable.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, NoReturn

from nli_service.client import NLIClient, NLIConnectionError, NLIError, NLIHTTPError
from nli_service.inference.types import DEFAULT_TEMPLATE

OK, ROWS_FAILED, USAGE, SERVICE_ERROR, LOCAL_ERROR = 0, 1, 2, 3, 4
# Both inside the package, so ``serve`` works wherever the package is installed.
GUNICORN_CONFIG, WSGI_APP = "python:nli_service.server.gunicorn_conf", "nli_service.server.wsgi:app"
LOCAL_ENGINE = "nli_service.serving.local"


class UsageError(Exception):
    """Bad arguments or files: exit 2 with this message."""


def _open(path: Path, mode: str) -> IO:
    try:
        return path.open(mode, encoding=None if "b" in mode else "utf-8")
    except OSError as error:
        raise UsageError(f"cannot open {path}: {error.strerror}") from None


def _zero_shot_options(labels: str, template: str, text: str = "text") -> tuple[list[str], str]:
    """``--labels`` and ``--template`` checked by the rules of ``POST /zero-shot`` (UsageError otherwise).

    ``text`` defaults to a stand-in: ``batch`` rows' texts are checked by the service.
    """
    from nli_service.schemas import MAX_ZERO_SHOT_LABELS, Limits, RequestError, ZeroShotRequest, validate

    body = {"text": text, "labels": [label.strip() for label in labels.split(",") if label.strip()]}
    try:
        request = validate(
            ZeroShotRequest, {**body, "hypothesis_template": template}, Limits(max_pairs=MAX_ZERO_SHOT_LABELS)
        )
    except RequestError as error:
        raise UsageError(error.message) from None
    return request.labels, request.hypothesis_template


# -- one pair / one text ----------------------------------------------------------------


def _local(command: list[str]) -> int:
    """Run the engine in a child process (``serving/local.py``): the CLI itself never imports torch."""
    result = subprocess.run([sys.executable, "-m", LOCAL_ENGINE, *command])
    return result.returncode


def _client(args: argparse.Namespace) -> NLIClient:
    return NLIClient(args.url, timeout=args.timeout, retries=args.retries, api_key=args.api_key)


def _print(result: Any) -> None:
    print(json.dumps(result.__dict__ if hasattr(result, "__dict__") else result, indent=2))


def cmd_predict(args: argparse.Namespace) -> int:
    if not args.url:
        return _local(["predict", args.premise, args.hypothesis])
    _print(_client(args).predict(args.premise, args.hypothesis))
    return OK


def cmd_zero_shot(args: argparse.Namespace) -> int:
    labels, template = _zero_shot_options(args.labels, args.template, args.text)
    if not args.url:
        return _local(
            ["zero-shot", args.text, *labels, "--template", template, *(["--multi-label"] * args.multi_label)]
        )
    _print(_client(args).zero_shot(args.text, labels, template, args.multi_label))
    return OK


def cmd_verify(args: argparse.Namespace) -> int:
    document_file = args.document
    if not args.url:
        return _local(["verify", str(document_file), *args.claim])
    with _open(document_file, "r") as file:
        document = file.read()
    print(json.dumps([asdict(verdict) for verdict in _client(args).verify(document, args.claim)], indent=2))
    return OK


def cmd_serve(args: argparse.Namespace) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, WSGI_APP])
    return OK  # not reached


# -- batch ------------------------------------------------------------------------------


Row = tuple[int, Any]  # (row number in the input file, its parsed JSON or why it is not a row)


class BadRow(ValueError):
    """A line of the input that is not a row: not UTF-8, or not JSON."""


def _parse(number: int, line: bytes) -> Any:
    try:
        text = line.decode("utf-8-sig" if number == 0 else "utf-8")  # a byte-order mark may open the file
    except UnicodeDecodeError as error:
        return BadRow(f"not UTF-8: byte {line[error.start]:#04x} at column {error.start + 1}")
    try:
        return json.loads(text)
    except ValueError as error:
        return BadRow(f"not JSON: {error}")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The input's non-blank lines with their numbers (from 0, blank lines counted), read as bytes:
    a line that is not UTF-8 is one bad row, not the end of the job."""
    with _open(path, "rb") as file:
        for number, line in enumerate(file):
            if line.strip():
                yield number, line


def _rows(path: Path, skip: set[int]) -> Iterator[Row]:
    for number, line in _lines(path):
        if number not in skip:
            yield number, _parse(number, line)


def _answered(line: bytes) -> int | None:
    """The row a complete output line answers, or None for a failed row or a damaged line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if isinstance(record, dict) and isinstance(record.get("row"), int) and "error" not in record:
        return record["row"]
    return None


def _resume(out: Path) -> tuple[set[int], int]:
    """The rows answered in ``out`` (to skip), and how many of its lines are dropped to be redone.

    Rows reported failed are redone, as are damaged lines and a last line cut short by an interrupted
    run; a row answered twice keeps its first answer. When a line goes, ``out`` is rewritten without
    it (a new file, renamed over the old), so that it ends up with exactly one record per input row.
    """
    if not out.exists():
        return set(), 0
    done: set[int] = set()
    dropped = 0
    keep: list[tuple[int, int]] = []  # (offset, length) of the lines kept
    offset = 0
    with _open(out, "rb") as file:
        for line in file:
            row = _answered(line) if line.endswith(b"\n") else None
            if row is None or row in done:
                dropped += line.strip() != b""
            else:
                done.add(row)
                keep.append((offset, len(line)))
            offset += len(line)
    if dropped or offset != sum(length for _, length in keep):
        _rewrite(out, keep)
    return done, dropped


def _rewrite(out: Path, keep: list[tuple[int, int]]) -> None:
    """Replace ``out`` by the lines at ``keep``, atomically: an interruption leaves the old file whole."""
    with _replacing(out) as new, _open(out, "rb") as old:
        for offset, length in keep:
            old.seek(offset)
            new.write(old.read(length))


@contextlib.contextmanager
def _replacing(out: Path) -> Iterator[IO[bytes]]:
    """A file that replaces ``out`` when the block ends without error (never a half-written ``out``)."""
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with _open(temporary, "wb") as new:
            yield new
            new.flush()
            os.fsync(new.fileno())
        os.replace(temporary, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def _merge_in_order(out: Path, resumed_at: int) -> None:
    """After a resume, put the redone rows back in input order. ``out`` holds the rows kept (bytes up
    to ``resumed_at``), then the rows of this run, each part in row order: merge the two, streaming."""

    def part(file: IO[bytes], start: int, end: int | None) -> Iterator[tuple[int, bytes]]:
        file.seek(start)
        while end is None or file.tell() < end:
            line = file.readline()
            if not line:
                return
            yield json.loads(line)["row"], line

    with _replacing(out) as new, _open(out, "rb") as kept, _open(out, "rb") as redone:
        for _, line in heapq.merge(part(kept, 0, resumed_at), part(redone, resumed_at, None)):
            new.write(line)


class BatchJob:
    """Sends groups of rows as one request each; a group the server refuses is retried row by row."""

    def __init__(self, client: NLIClient, labels: list[str] | None, template: str) -> None:
        self.client, self.labels, self.template = client, labels, template

    def _payload(self, item: Any) -> Any:
        if isinstance(item, BadRow):
            raise item
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

    labels, template = _zero_shot_options(args.labels, args.template) if args.labels else (None, args.template)
    pairs_per_row = len(labels) if labels else 1  # the progress bar counts pairs
    total = sum(1 for _ in _lines(args.input))
    skip, redo = _resume(args.output) if args.resume else (set(), 0)
    resumed_at = args.output.stat().st_size if args.resume and args.output.exists() else 0
    client = NLIClient(
        args.url,
        timeout=args.timeout,
        retries=args.retries,
        api_key=args.api_key,
        rate=args.rate,
        burst=args.burst,
        max_concurrency=args.concurrency,
    )
    job = BatchJob(client, labels, template)
    rows = _rows(args.input, skip)
    first = next(rows, None)  # none left (a finished job resumed): the service is not asked anything
    chunk_size = min(args.chunk_size, client.max_pairs() // pairs_per_row or 1) if first else 1
    rows = itertools.chain([first] if first else [], rows)
    written = failed = 0
    groups = iter(lambda: list(itertools.islice(rows, chunk_size)), [])
    with (
        client,
        _open(args.output, "a" if args.resume else "w") as out,
        tqdm(
            total=total * pairs_per_row, initial=len(skip) * pairs_per_row, unit="pair", desc="pairs", smoothing=0.1
        ) as bar,
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
                bar.update(pairs_per_row)
            out.flush()
    if resumed_at and written:
        _merge_in_order(args.output, resumed_at)
    # Failed rows are never kept by a resume, so this run's failures are all the output's.
    redone = f", {redo} of them redone" if redo else ""
    print(f"{written} rows written{redone}, {failed} failed, {len(skip)} skipped (already answered)", file=sys.stderr)
    return ROWS_FAILED if failed else OK


# -- arguments --------------------------------------------------------------------------


def _number(kind: Callable[[str], float], low: float, above: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` at least ``low`` (more than ``low`` with ``above``)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid {kind.__name__}: {text!r}") from None
        if not math.isfinite(value) or value < low or above and value == low:
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {low}, got {text}")
        return value

    return parse


POSITIVE, COUNT, AT_LEAST_ZERO = _number(float, 0, above=True), _number(int, 1), _number(int, 0)


def _input_file(text: str) -> Path:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return Path(text)


def _output_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir() or not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"not a file in an existing directory: {text}")
    return path


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, exit 2 (``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    main = _Parser(prog="nli-service", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = main.add_subparsers(dest="command", required=True)

    def with_url(sub: argparse.ArgumentParser, required: bool = False) -> None:
        sub.add_argument(
            "--url",
            required=required,
            help="the service, e.g. http://localhost:5000"
            + ("" if required else " (default: the local engine, from NLI_* settings)"),
        )
        sub.add_argument("--timeout", type=POSITIVE, default=60, help="seconds per HTTP request")
        sub.add_argument(
            "--retries", type=AT_LEAST_ZERO, default=3, help="retries on connection errors, 429, 502, 503 and 504"
        )
        sub.add_argument(
            "--api-key",
            default=os.environ.get("NLI_API_KEY"),
            help="sent as Authorization: Bearer (default: $NLI_API_KEY)",
        )

    serve = commands.add_parser(
        "serve", help="run the service under Gunicorn (the packaged nli_service.gunicorn_conf, NLI_* settings)"
    )
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

    verify = commands.add_parser("verify", help="check claims against a whole document (read in windows; POST /verify)")
    verify.add_argument("document", type=_input_file, help="a UTF-8 text file: the document")
    verify.add_argument("--claim", action="append", required=True, help="a claim to check (repeat for more)")
    with_url(verify)
    verify.set_defaults(run=cmd_verify)

    batch = commands.add_parser("batch", help="stream a JSONL file of pairs (or texts with --labels)")
    batch.add_argument(
        "input", type=_input_file, help='JSONL rows: {"premise", "hypothesis"} or {"text"} with --labels'
    )
    batch.add_argument(
        "-o", "--output", type=_output_file, required=True, help="JSONL results, one per row, in input order"
    )
    batch.add_argument("--labels", help="comma-separated labels: zero-shot each row's text")
    batch.add_argument("--template", default=DEFAULT_TEMPLATE)
    batch.add_argument("--rate", type=POSITIVE, help="requests per second at most (token bucket)")
    batch.add_argument("--burst", type=COUNT, default=1, help="requests allowed at once above the rate")
    batch.add_argument("--concurrency", type=COUNT, default=4, help="requests in flight at once")
    batch.add_argument(
        "--resume", action="store_true", help="skip rows already answered in OUTPUT; redo the rows that failed"
    )
    batch.add_argument("--chunk-size", type=COUNT, default=32, help="rows per request (at most the server's limit)")
    with_url(batch, required=True)
    batch.set_defaults(run=cmd_batch)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        print(f"nli-service {args.command}: error: {error}", file=sys.stderr)
        return USAGE
    except NLIConnectionError as error:
        print(f"nli-service: {error}", file=sys.stderr)
        return SERVICE_ERROR
    except NLIError as error:
        print(f"nli-service: {error}", file=sys.stderr)
        return SERVICE_ERROR


if __name__ == "__main__":
    sys.exit(main())
