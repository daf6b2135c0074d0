"""Several processes logging to one rotating file lose no line."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from nli_service.config import Settings
from nli_service.logs import LOG_FILE_NAME, configure_logging

LINES_PER_PROCESS = 1500


def _write_lines(log_dir: str, writer: int) -> None:
    import logging

    configure_logging(Settings.from_env({"NLI_LOG_DIR": log_dir}), max_bytes=40_000, backup_count=10_000)
    log = logging.getLogger("nli_service.test")
    for line in range(LINES_PER_PROCESS):
        log.info("line", extra={"writer": writer, "line": line, "padding": "x" * 50})


def test_no_line_is_lost_when_four_processes_rotate_one_file(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_lines, args=(str(tmp_path), w)) for w in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    files = sorted(tmp_path.glob(LOG_FILE_NAME + "*"))
    assert len(files) > 5, "the test must actually rotate"
    seen = set()
    for file in files:
        for text in file.read_text().splitlines():
            record = json.loads(text)  # every line is whole JSON
            seen.add((record["writer"], record["line"]))
    assert len(seen) == 4 * LINES_PER_PROCESS
