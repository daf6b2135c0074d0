"""JSON log lines to ``<NLI_LOG_DIR>/nli_service.log`` (rotated) and stdout.

Several Gunicorn workers write the same file, so rotation goes through
``concurrent-log-handler``: a plain ``RotatingFileHandler`` per process loses
lines when two processes rotate at once. The current request id is attached to
every record through a context variable, so this module needs no Flask.

A log that cannot be written at run time (disk full, file system turned read-only,
stdout closed) never stops the service: each handler counts its failed records and
says so on stderr in one line, at most once a minute, instead of logging's
traceback per record.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
import time
from pathlib import Path

from concurrent_log_handler import ConcurrentRotatingFileHandler
from pythonjsonlogger.json import JsonFormatter

from nli_service.config import ConfigError, Settings

LOG_FILE_NAME = "nli_service.log"
MAX_BYTES = 10 * 1024 * 1024
BACKUP_COUNT = 5
SERVICE_LOGGER = "nli_service"

current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id.get()
        return True


class _CountedErrors:
    """``handleError`` without a traceback per record: failures are counted, and reported on
    stderr in one line at the first one, then at most once per ``warn_every`` seconds."""

    warn_every = 60.0
    target = "the log"

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        error = sys.exc_info()[1]
        lock = self.__dict__.setdefault("_errors_lock", threading.Lock())
        with lock:
            self.failed_records = getattr(self, "failed_records", 0) + 1
            unreported = getattr(self, "_unreported", 0) + 1
            last = getattr(self, "_last_warning", None)
            now = time.monotonic()
            if last is not None and now - last < self.warn_every:
                self._unreported = unreported
                return
            self._unreported, self._last_warning = 0, now
        reason = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
        since = "" if last is None else f" in the last {now - last:.0f} s"
        warning = (
            f"nli-service: {unreported} log record(s) could not be written to {self.target}{since} ({reason}); "
            f"still serving, next report in {self.warn_every:.0f} s at the earliest\n"
        )
        try:
            sys.stderr.write(warning)
            sys.stderr.flush()
        except Exception:  # noqa: BLE001, S110 - stderr itself is gone: nothing left to tell
            pass


class ServiceFileHandler(_CountedErrors, ConcurrentRotatingFileHandler):
    """The rotating JSON log file, shared by the workers."""

    def __init__(self, filename: str, **kwargs) -> None:
        super().__init__(filename, **kwargs)
        self.target = filename

    def close(self) -> None:
        """Close, even when the last buffered bytes cannot be written (a full disk)."""
        try:
            super().close()
        except OSError:
            self.stream = None
            if self.stream_lock is not None:
                with contextlib.suppress(OSError):
                    self.stream_lock.close()
                self.stream_lock = None


class ServiceStreamHandler(_CountedErrors, logging.StreamHandler):
    """JSON lines on stdout (or stderr)."""

    def __init__(self, stream=None) -> None:
        super().__init__(stream)
        self.target = getattr(self.stream, "name", "the console")


def _formatter() -> JsonFormatter:
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(process)d %(request_id)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def json_handlers(
    settings: Settings, stream=None, max_bytes: int = MAX_BYTES, backup_count: int = BACKUP_COUNT
) -> list[logging.Handler]:
    """The rotating log file and a stream (stdout by default), both writing JSON lines.

    Raises :class:`ConfigError` naming NLI_LOG_DIR when the file cannot be opened for writing.
    The service's records then go to stdout, so the one-line reason is all that reaches stderr.
    """
    log_file = Path(settings.log_dir) / LOG_FILE_NAME
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("a"):  # writable now, not at the first record
            pass
        file_handler = ServiceFileHandler(str(log_file), maxBytes=max_bytes, backupCount=backup_count)
    except OSError as error:
        _records_to_stdout()
        raise ConfigError(f"NLI_LOG_DIR={settings.log_dir!r} cannot hold the log file: {error}") from None
    handlers = [file_handler, ServiceStreamHandler(stream or sys.stdout)]
    for handler in handlers:
        handler.setFormatter(_formatter())
        handler.addFilter(_RequestIdFilter())
    return handlers


def _records_to_stdout() -> None:
    """Give the service's logger a JSON stdout handler if it has none, so a record logged before
    logging is configured (the start-up failure itself) is not printed on stderr by logging's
    last-resort handler."""
    logger = logging.getLogger(SERVICE_LOGGER)
    if not logger.handlers:
        handler = ServiceStreamHandler(sys.stdout)
        handler.setFormatter(_formatter())
        handler.addFilter(_RequestIdFilter())
        logger.addHandler(handler)
        logger.propagate = False


def configure_logging(settings: Settings, max_bytes: int = MAX_BYTES, backup_count: int = BACKUP_COUNT) -> Path:
    """(Re)configure the service's loggers; returns the log file's path."""
    handlers = json_handlers(settings, max_bytes=max_bytes, backup_count=backup_count)
    logger = logging.getLogger(SERVICE_LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(settings.log_level)
    logger.propagate = False
    return Path(settings.log_dir) / LOG_FILE_NAME
