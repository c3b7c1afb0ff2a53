"""The SQL that differs by database: one module per database over the portable (ORM) base,
chosen once per database vendor. No other module tests ``connection.vendor``.

Dialects hold statements and their builders; they import only the store's records and the
test clock, so every store module may use them.
"""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper

from .base import Dialect, SqlNow
from .mysql import MySQLDialect
from .postgresql import PostgreSQLDialect
from .sqlite import SQLiteDialect

__all__ = ["Dialect", "SqlNow", "dialect_for"]

_DIALECTS: dict[str, type[Dialect]] = {
    "mysql": MySQLDialect,  # MariaDB too
    "postgresql": PostgreSQLDialect,
    "sqlite": SQLiteDialect,
}
_chosen: dict[str, Dialect] = {}


def dialect_for(connection: BaseDatabaseWrapper) -> Dialect:
    """The dialect of ``connection``'s database (a ``DatabaseWrapper``, or ``django.db.connection``).
    The store's statements run on ``django.db.connection``, as everywhere in the store."""
    vendor = connection.vendor
    dialect = _chosen.get(vendor)
    if dialect is None:
        dialect = _chosen[vendor] = _DIALECTS.get(vendor, Dialect)(vendor)
    return dialect
