"""JSON log lines to ``<NLI_LOG_DIR>/nli_service.log`` (rotated) and stdout.

Several Gunicorn workers write the same file, so rotation goes through
``concurrent-log-handler``: a plain ``RotatingFileHandler`` per process loses
lines when two processes rotate at once. The current request id is attached to
every record through a context variable, so this module needs no Flask.
"""

from __future__ import annotations

import contextvars
import logging
import sys
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

    Raises :class:`ConfigError` naming NLI_LOG_DIR when the file cannot be opened.
    """
    log_file = Path(settings.log_dir) / LOG_FILE_NAME
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = ConcurrentRotatingFileHandler(str(log_file), maxBytes=max_bytes, backupCount=backup_count)
    except OSError as error:
        raise ConfigError(f"NLI_LOG_DIR={settings.log_dir!r} cannot hold the log file: {error}") from None
    handlers = [file_handler, logging.StreamHandler(stream or sys.stdout)]
    for handler in handlers:
        handler.setFormatter(_formatter())
        handler.addFilter(_RequestIdFilter())
    return handlers


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
