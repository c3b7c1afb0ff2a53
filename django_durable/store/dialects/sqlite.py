"""SQLite: the portable statements, with the clock read in this process."""

from __future__ import annotations

import datetime

from .base import Dialect


class SQLiteDialect(Dialect):
    # No row locks: writers are serialised by IMMEDIATE transactions, or fail with "database is locked".
    needs_immediate_transactions = True

    def read_clock(self) -> datetime.datetime:
        # SQLite runs in this process, on this machine's clock.
        return datetime.datetime.now(datetime.timezone.utc)
