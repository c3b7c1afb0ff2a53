"""The database's clock (``db_now``), as the test clock may replace it, and the clock as an
ORM expression."""

from __future__ import annotations

import datetime
from typing import Any

from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import DateTimeField, Func
from django.db.models.sql.compiler import SQLCompiler

from . import testclock
from .dialects import dialect_for


def db_now() -> datetime.datetime:
    """The database's clock: leases, due times and retries are compared with it."""
    if testclock.clock_override is not None:
        return testclock.clock_override()
    return dialect_for(connection).read_clock()


class TransactionNow(Func):
    """The database's clock as ``db_now()`` reads it: the transaction's start (Django's
    ``Now()`` is the statement's on PostgreSQL, later within one transaction)."""

    output_field = DateTimeField()

    def as_sql(
        self,
        compiler: SQLCompiler,
        connection: BaseDatabaseWrapper,
        function: str | None = None,
        template: str | None = None,
        arg_joiner: str | None = None,
        **extra_context: Any,
    ) -> tuple[str, tuple[str | int, ...]]:
        template = dialect_for(connection).clock_sql
        return super().as_sql(compiler, connection, function, template, arg_joiner, **extra_context)


def _seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)
