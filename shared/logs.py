"""Logging for every process: JSON lines (python-json-logger) carrying the job id and the request id where known.

``job_id`` and ``request_id`` live in context variables: the API sets the request id for each request
(``api.logs``), the workers set the job id for each task (``worker.observability``), and a filter copies both onto
every record, so a line from any module (SQLAlchemy's, Celery's, ours) names what it was about. What goes into a
message is the caller's business: ids, codes, counts and timings; never prompt or memoir text (tests grep the
logs of real processes for the prompt they submitted).

``ILLUSTRATIONS_LOG_FORMAT=text`` gives one plain line per record for reading in a terminal.
Considered: structlog is richer but wants its own logger objects throughout; python-json-logger plugs into the
standard library's handlers, which Celery, gunicorn and SQLAlchemy already log through.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

JSON_FIELDS: Final = "%(asctime)s %(levelname)s %(name)s %(processName)s %(process)d %(message)s"
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(processName)s %(name)s%(context)s: %(message)s"


class ContextFilter(logging.Filter):
    """Adds ``job_id`` and ``request_id`` (from the context variables) to every record that lacks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get()
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        ids = [f"{name}={value}" for name in ("job_id", "request_id") if (value := getattr(record, name, None))]
        record.context = f" [{' '.join(ids)}]" if ids else ""
        return True


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: time, level, logger, process, message, job_id and request_id when set."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("rename_fields", {"asctime": "time", "levelname": "level", "name": "logger",
                                            "processName": "process_name", "process": "pid"})
        super().__init__(JSON_FIELDS, **kwargs)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.pop("context", None)
        for name in ("job_id", "request_id"):
            if log_data.get(name) is None:
                log_data.pop(name, None)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def configure(level: str, log_format: str) -> None:
    """Send every record of this process to stderr in ``log_format`` (replacing handlers set up before)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def gunicorn_logconfig(level: str, log_format: str) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its error and access logs in the same format as everything else."""
    style: dict[str, Any] = {"()": "shared.logs.JsonFormatter"} if log_format == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "shared.logs.ContextFilter"}},
        "formatters": {"default": style},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "default", "filters": ["context"]}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        },
    }


@contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    """Log lines inside name this job."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)
