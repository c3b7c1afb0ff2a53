"""Structured log lines, one for every state change the store commits.

Each line goes to the ``django_durable.state`` logger at INFO once the change's
transaction commits (a rolled-back change logs nothing). The message reads
``<change> key=value ...``; the same fields are on the record as ``record.durable``
(a dict), which ``JSONFormatter`` writes as one JSON object per line::

    LOGGING = {
        "version": 1,
        "formatters": {"json": {"()": "django_durable.statelog.JSONFormatter"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
        "loggers": {"django_durable.state": {"handlers": ["console"], "level": "INFO"}},
    }

Changes: ``run_created``, ``history`` (an event appended to a run's history: a run
started, an activity scheduled, completed or failed, a timer started or fired, a
signal received, the run completed, failed, canceled, continued, terminated,
suspended or resumed), ``inbox`` (an event reached a run, for its next workflow
task), ``claimed``, ``retry_scheduled``, ``lease_expired``, ``task_failed``
(a workflow task's code failed; ``parked`` when it stopped retrying),
``task_unparked``, ``purged`` and ``pruned`` (a ``durable_prune`` batch).
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
from typing import Any

from django.db import transaction

logger = logging.getLogger("django_durable.state")


def state_change(change: str, **fields: Any) -> None:
    """Log ``change`` with ``fields`` when the current transaction commits (now, outside one)."""
    if logger.isEnabledFor(logging.INFO):
        transaction.on_commit(functools.partial(_emit, change, fields))


def _emit(change: str, fields: dict[str, Any]) -> None:
    text = " ".join(f"{key}={_text(value)}" for key, value in fields.items() if value is not None)
    logger.info("%s %s", change, text, extra={"durable": {"change": change, **fields}})


def _text(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    text = str(value)
    # Quoted as JSON, which escapes control characters: a value (an error message a token
    # holder wrote, say) must not carry terminal escapes or line breaks into a log file.
    plain = text.isprintable() and not any(c.isspace() or c in '"=' for c in text)
    return text if text and plain else json.dumps(text)


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and a ``durable``
    record's fields at the top level (a traceback, if any, as ``exc_info``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "durable", {}),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
