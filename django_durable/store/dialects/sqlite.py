"""SQLite: the portable statements, with the clock read in this process, and transactions that
take the write lock at BEGIN."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator

from django.db import connection, transaction

from .base import Dialect


class SQLiteDialect(Dialect):
    # No row locks: writers are serialised by IMMEDIATE transactions (``write_transaction``),
    # which Django begins only when it manages transactions itself (AUTOCOMMIT on).
    needs_autocommit = True
    wants_wal = True

    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[None]:
        """The outermost block begins IMMEDIATE (it takes the write lock at BEGIN), whatever
        ``OPTIONS["transaction_mode"]`` says: two deferred transactions that both read, then
        write, deadlock on the lock upgrade and SQLite fails one at once, its busy timeout
        not applying, where immediate ones wait their turn."""
        if connection.in_atomic_block:
            with transaction.atomic():
                yield
            return
        connection.ensure_connection()  # connecting sets transaction_mode from the settings
        # The ignores: django-stubs does not know SQLite's transaction_mode (Django 5.1).
        configured, connection.transaction_mode = connection.transaction_mode, "IMMEDIATE"  # type: ignore[attr-defined]
        try:
            with transaction.atomic():
                # It began: nested blocks are savepoints.
                connection.transaction_mode = configured  # type: ignore[attr-defined]
                yield
        finally:
            connection.transaction_mode = configured  # type: ignore[attr-defined]

    def read_clock(self) -> datetime.datetime:
        # SQLite runs in this process, on this machine's clock.
        return datetime.datetime.now(datetime.timezone.utc)
