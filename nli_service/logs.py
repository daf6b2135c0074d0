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

from nli_service.config import Settings

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


def configure_logging(settings: Settings, max_bytes: int = MAX_BYTES, backup_count: int = BACKUP_COUNT) -> Path:
    """(Re)configure the service's loggers; returns the log file's path."""
    log_dir = Path(settings.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / LOG_FILE_NAME
    file_handler = ConcurrentRotatingFileHandler(str(log_file), maxBytes=max_bytes, backupCount=backup_count)
    stdout_handler = logging.StreamHandler(sys.stdout)
    for handler in (file_handler, stdout_handler):
        handler.setFormatter(_formatter())
        handler.addFilter(_RequestIdFilter())
    logger = logging.getLogger(SERVICE_LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(file_handler)
    logger.addHandler(stdout_handler)
    logger.setLevel(settings.log_level)
    logger.propagate = False
    return log_file
