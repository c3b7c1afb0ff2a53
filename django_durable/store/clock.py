"""The database's clock (``db_now``), the test clock that replaces it, and the clock as an
ORM expression."""

from __future__ import annotations

import datetime
from collections.abc import Callable

from django.db import connection
from django.db.models import DateTimeField, Func

# Set by ``django_durable.testing`` to a controllable clock; None: the database's clock.
clock_override: Callable[[], datetime.datetime] | None = None


def db_now() -> datetime.datetime:
    """The database's clock: leases, due times and retries are compared with it."""
    if clock_override is not None:
        return clock_override()
    if connection.vendor == "sqlite":
        # SQLite runs in this process, on this machine's clock.
        return datetime.datetime.now(datetime.timezone.utc)
    with connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_TIMESTAMP")
        (now,) = cursor.fetchone()
    return now


class TransactionNow(Func):
    """The database's clock as ``db_now()`` reads it: the transaction's start (Django's
    ``Now()`` is the statement's on PostgreSQL, later within one transaction)."""

    template = "CURRENT_TIMESTAMP"
    output_field = DateTimeField()


def _seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)
