"""The log when things go wrong: a log directory that cannot be written stops the start with one
line; a disk that fills (or turns read-only) while serving costs log lines, never the service,
and says so in a bounded number of stderr lines; processes rotating one file lose no line."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import time
from pathlib import Path

import pytest
import serving

from nli_service import logs
from nli_service.config import ConfigError, Settings
from nli_service.logs import LOG_FILE_NAME, configure_logging

# -- at start-up -------------------------------------------------------------------------


def _unwritable_log_dir(tmp_path: Path) -> Path:
    """A directory no one can create, root included: it would sit under a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    return blocker / "logs"


@pytest.mark.parametrize("command", [serving.GUNICORN, serving.DEV_SERVER], ids=["gunicorn", "app.py"])
def test_an_unwritable_log_directory_stops_the_start_with_exit_4_and_one_line(
    command: list[str], model_dir: Path, tmp_path: Path, services
) -> None:
    log_dir = _unwritable_log_dir(tmp_path)
    env = serving.service_env(NLI_MODEL=model_dir, NLI_LOG_DIR=log_dir, NLI_WORKERS=1)
    code, stderr, seconds = services.run_to_exit(command, env)
    assert code == 4, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "NLI_LOG_DIR" in lines[0] and str(log_dir) in lines[0]
    assert seconds < 30


def test_json_handlers_name_the_setting_when_the_log_file_cannot_be_opened(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NLI_LOG_DIR"):
        logs.json_handlers(Settings.from_env({"NLI_LOG_DIR": str(_unwritable_log_dir(tmp_path))}))
    directory_named_like_the_file = tmp_path / "logs"
    (directory_named_like_the_file / LOG_FILE_NAME).mkdir(parents=True)
    with pytest.raises(ConfigError, match="NLI_LOG_DIR"):
        logs.json_handlers(Settings.from_env({"NLI_LOG_DIR": str(directory_named_like_the_file)}))


# -- at run time -------------------------------------------------------------------------


def _service_logger(tmp_path: Path) -> tuple[logging.Logger, logs.ServiceFileHandler]:
    configure_logging(Settings.from_env({"NLI_LOG_DIR": str(tmp_path)}))
    logger = logging.getLogger("nli_service")
    file_handler = next(h for h in logger.handlers if isinstance(h, logs.ServiceFileHandler))
    return logging.getLogger("nli_service.test"), file_handler


def _disk_full(handler: logs.ServiceFileHandler, monkeypatch) -> None:
    """Every write of the log file now fails as on a full disk (/dev/full: ENOSPC on flush)."""
    if handler.stream is not None:
        handler.stream.close()
        handler.stream = None
    monkeypatch.setattr(handler, "do_open", lambda mode=None: open("/dev/full", "a", encoding="utf-8"))  # noqa: SIM115


@pytest.fixture
def restore_service_logger():
    logger = logging.getLogger("nli_service")
    before = list(logger.handlers)
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        if handler not in before:
            handler.close()
    for handler in before:
        logger.addHandler(handler)


def test_a_full_disk_costs_log_lines_not_the_service_and_warns_once(
    tmp_path: Path, monkeypatch, capfd, restore_service_logger
) -> None:
    log, file_handler = _service_logger(tmp_path)
    log.info("before the disk filled")
    _disk_full(file_handler, monkeypatch)
    for number in range(1000):
        log.info("record", extra={"number": number})
    out, err = capfd.readouterr()

    warnings = err.strip().splitlines()
    assert len(warnings) == 1, warnings[:5]
    assert "could not be written" in warnings[0] and "No space left on device" in warnings[0]
    assert "Traceback" not in err
    assert file_handler.failed_records == 1000
    # stdout kept every record, and the file what was written before the disk filled
    printed = [json.loads(line) for line in out.splitlines()]
    assert [r["number"] for r in printed if r["message"] == "record"] == list(range(1000))
    assert "before the disk filled" in (tmp_path / LOG_FILE_NAME).read_text()


def test_failures_are_reported_again_after_the_interval_with_their_count(
    tmp_path: Path, monkeypatch, capfd, restore_service_logger
) -> None:
    log, file_handler = _service_logger(tmp_path)

    def read_only(mode=None):
        raise OSError(errno.EROFS, "Read-only file system")

    if file_handler.stream is not None:
        file_handler.stream.close()
        file_handler.stream = None
    monkeypatch.setattr(file_handler, "do_open", read_only)
    monkeypatch.setattr(file_handler, "warn_every", 0.2)
    for _ in range(50):
        log.warning("lost")
    time.sleep(0.25)
    for _ in range(7):
        log.warning("lost too")
    warnings = capfd.readouterr().err.strip().splitlines()
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("nli-service: 1 log record(s)") and "Read-only file system" in warnings[0]
    assert warnings[1].startswith("nli-service: 50 log record(s)")  # 49 held back, plus the one that reports
    assert file_handler.failed_records == 57


def test_a_closed_stdout_does_not_stop_the_file_log(tmp_path: Path, capfd, restore_service_logger) -> None:
    log, _ = _service_logger(tmp_path)
    stream_handler = next(
        h for h in logging.getLogger("nli_service").handlers if isinstance(h, logs.ServiceStreamHandler)
    )

    class Broken:
        name = "<stdout>"

        def write(self, text: str) -> int:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    stream_handler.setStream(Broken())
    for number in range(200):
        log.info("to the file", extra={"number": number})
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Broken pipe" in err
    lines = (tmp_path / LOG_FILE_NAME).read_text().splitlines()
    assert [json.loads(line)["number"] for line in lines if "to the file" in line] == list(range(200))


# -- several processes, one rotating file ------------------------------------------------


def _write_lines(log_dir: str, writer: int, lines: int, max_bytes: int) -> None:
    configure_logging(Settings.from_env({"NLI_LOG_DIR": log_dir}), max_bytes=max_bytes, backup_count=10_000)
    logger = logging.getLogger("nli_service")
    for handler in list(logger.handlers):  # the file only: stdout would just slow the test down
        if not isinstance(handler, logs.ServiceFileHandler):
            logger.removeHandler(handler)
    log = logging.getLogger("nli_service.test")
    for line in range(lines):
        log.info("line", extra={"writer": writer, "line": line, "padding": "x" * 40})


def _four_writers_lose_no_line(log_dir: Path, lines: int, max_bytes: int) -> None:
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_lines, args=(str(log_dir), w, lines, max_bytes)) for w in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(300)
        assert process.exitcode == 0
    files = sorted(log_dir.glob(LOG_FILE_NAME + "*"))
    assert len(files) >= 4, f"the test must rotate at least 3 times: {[f.name for f in files]}"
    seen: list[tuple[int, int]] = []
    for file in files:
        for text in file.read_text().splitlines():
            record = json.loads(text)  # every line is whole JSON
            seen.append((record["writer"], record["line"]))
    assert len(seen) == 4 * lines, "a line was lost or written twice"
    assert set(seen) == {(writer, line) for writer in range(4) for line in range(lines)}


def test_four_processes_rotating_one_file_lose_no_line(tmp_path: Path) -> None:
    _four_writers_lose_no_line(tmp_path, lines=5_000, max_bytes=1_000_000)  # ~5 MB: ~5 rotations


@pytest.mark.slow  # 80,000 lines through the cross-process file lock
def test_four_processes_rotating_one_file_lose_none_of_80_000_lines(tmp_path: Path) -> None:
    _four_writers_lose_no_line(tmp_path, lines=20_000, max_bytes=2_000_000)  # ~20 MB: ~10 rotations
