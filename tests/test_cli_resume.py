"""``nli-service batch``: bad lines are bad rows, not a dead job; ``--resume`` redoes failed rows
and leaves exactly one record per input row, in order; the exit code speaks for the whole output."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nli_service import cli

PAIR = {"premise": "A man plays a guitar.", "hypothesis": "A person makes music."}


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def _batch(url: str, source: Path, out: Path, *extra: str) -> int:
    return cli.main(["batch", str(source), "-o", str(out), "--url", url, "--retries", "0", *extra])


# -- against the real service (tiny model, at most 4 pairs per request) ------------------


def test_lines_that_are_not_utf8_or_not_json_are_bad_rows_and_the_job_goes_on(tiny_server, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    lines = [json.dumps(PAIR).encode()] * 3 + [b'{"premise": "caf\xe9", "hypothesis": "x"}', b"{not json"]
    lines += [b"", json.dumps(PAIR).encode(), json.dumps({"premise": "only"}).encode()] + [json.dumps(PAIR).encode()]
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"

    assert _batch(tiny_server.url, source, out) == 1

    records = _records(out)
    assert [r["row"] for r in records] == [0, 1, 2, 3, 4, 6, 7, 8]  # row 5 is blank
    by_row = {r["row"]: r for r in records}
    assert "not UTF-8" in by_row[3]["error"] and "0xe9" in by_row[3]["error"]
    assert "not JSON" in by_row[4]["error"]
    assert "hypothesis" in by_row[7]["error"]
    assert all("label" in by_row[n] for n in (0, 1, 2, 6, 8))


def test_resume_redoes_fixed_rows_and_exits_0_once_every_row_is_answered(tiny_server, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    rows = [PAIR] * 10
    broken = {2: b"\xff\xfe", 5: b'{"premise": "no hypothesis"}', 9: b"[1, 2"}
    source.write_bytes(b"".join(broken.get(n, json.dumps(row).encode()) + b"\n" for n, row in enumerate(rows)))
    out = tmp_path / "out.jsonl"
    assert _batch(tiny_server.url, source, out) == 1
    assert sorted(r["row"] for r in _records(out) if "error" in r) == [2, 5, 9]

    # the same input: the failed rows fail again, and still appear once each
    assert _batch(tiny_server.url, source, out, "--resume") == 1
    records = _records(out)
    assert [r["row"] for r in records] == list(range(10))
    assert sorted(r["row"] for r in records if "error" in r) == [2, 5, 9]

    # the input fixed: only the failed rows are sent again; exit 0, one answer per row, in order
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    answered_before = {r["row"]: r for r in records if "error" not in r}
    assert _batch(tiny_server.url, source, out, "--resume") == 0
    records = _records(out)
    assert [r["row"] for r in records] == list(range(10))
    assert not any("error" in r for r in records)
    assert all(records[n] == answered_before[n] for n in answered_before)


def test_resume_of_a_complete_answered_output_sends_nothing_and_exits_0(tiny_server, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(PAIR) + "\n" for _ in range(5)))
    out = tmp_path / "out.jsonl"
    assert _batch(tiny_server.url, source, out) == 0
    before = out.read_bytes()
    assert _batch("http://127.0.0.1:9", source, out, "--resume") == 0  # nothing to send: the URL is not used
    assert out.read_bytes() == before


# -- a transient failure: a stub that answers 503 until told otherwise ---------------------


class _Stub(BaseHTTPRequestHandler):
    failing = True
    calls: list[int] = []  # pairs per /batch-predict call

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._send(200, {"id": "stub", "labels": ["entailment", "neutral", "contradiction"], "max_pairs": 4})

    def do_POST(self) -> None:  # noqa: N802
        pairs = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["pairs"]
        type(self).calls.append(len(pairs))
        if type(self).failing and any(pair["premise"].startswith("flaky") for pair in pairs):
            self._send(503, {"error": "overloaded, try again", "status": 503})
            return
        results = [{"label": "entailment", "scores": {"entailment": 1.0}} for _ in pairs]
        self._send(200, {"results": results})


@pytest.fixture
def stub() -> Iterator[tuple[str, type[_Stub]]]:
    handler = type("Stub", (_Stub,), {"failing": True, "calls": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_rows_that_met_a_transient_503_are_redone_by_resume(stub, tmp_path: Path) -> None:
    url, handler = stub
    source = tmp_path / "in.jsonl"
    premises = [f"{'flaky' if n in (5, 6) else 'steady'} {n}" for n in range(12)]
    source.write_text("".join(json.dumps({"premise": p, "hypothesis": "h"}) + "\n" for p in premises))
    out = tmp_path / "out.jsonl"

    assert _batch(url, source, out, "--chunk-size", "4") == 1
    failed = sorted(r["row"] for r in _records(out) if "error" in r)
    assert failed == [4, 5, 6, 7]  # the whole request of rows 4-7 met the 503
    assert all(r["status"] == 503 for r in _records(out) if "error" in r)

    handler.failing, handler.calls = False, []
    assert _batch(url, source, out, "--chunk-size", "4", "--resume") == 0
    assert handler.calls == [4], "only the failed rows are sent again"
    records = _records(out)
    assert [r["row"] for r in records] == list(range(12))
    assert all(r["label"] == "entailment" for r in records)


def test_resume_drops_failed_damaged_cut_and_repeated_lines_before_appending(stub, tmp_path: Path) -> None:
    url, handler = stub
    handler.failing = False
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"premise": f"p{n}", "hypothesis": "h"}) + "\n" for n in range(6)))
    out = tmp_path / "out.jsonl"
    answer = {"label": "neutral", "scores": {"neutral": 1.0}}
    out.write_text(
        json.dumps({"row": 0, **answer})
        + "\n"
        + json.dumps({"row": 1, "error": "overloaded", "status": 503})
        + "\n"
        + "garbage that is not JSON\n"
        + json.dumps({"row": 0, "label": "entailment", "scores": {}})  # a second answer to row 0
        + "\n"
        + json.dumps({"row": 3, **answer})
        + "\n"
        + '{"row": 4, "lab'  # cut short by an interrupted run
    )
    assert _batch(url, source, out, "--resume") == 0
    records = _records(out)
    assert [r["row"] for r in records] == list(range(6))
    assert records[0]["label"] == "neutral" and records[3]["label"] == "neutral"  # the first answers kept
    assert sorted(handler.calls) == [4]  # rows 1, 2, 4, 5 in one request
    assert not list(tmp_path.glob(".out.jsonl.*")), "no temporary file left behind"


def test_a_non_utf8_line_is_a_bad_row_without_a_server(stub, tmp_path: Path) -> None:
    url, handler = stub
    handler.failing = False
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\xef\xbb\xbf" + json.dumps(PAIR).encode() + b"\n\x80\x81\n" + json.dumps(PAIR).encode())
    out = tmp_path / "out.jsonl"
    assert _batch(url, source, out) == 1
    records = _records(out)
    assert [("error" in r) for r in records] == [False, True, False]  # a byte-order mark is not an error
    assert records[1]["error"].startswith("invalid row: not UTF-8: byte 0x80 at column 1")
