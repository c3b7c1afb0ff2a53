"""Checking a worker thread's database connections without a query per step."""

from __future__ import annotations

import threading
import time

from django.db import close_old_connections, connections

_last_connection_check = threading.local()


def refresh_connections(*, at_most_every: float = 1.0) -> None:
    """``close_old_connections()``, skipped when this thread ran it less than
    ``at_most_every`` seconds ago and its connections saw no error since. With the
    worker's health-checked persistent connections each run costs a query on the
    next use: once per step under load, where a connection just used is known good."""
    checked = getattr(_last_connection_check, "at", None)
    now = time.monotonic()
    if (
        checked is not None
        and now - checked < at_most_every
        and not any(conn.errors_occurred for conn in connections.all(initialized_only=True))
    ):
        return
    _last_connection_check.at = now
    close_old_connections()
