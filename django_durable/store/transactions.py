"""The store's write transactions (``write_transaction``), begun as the database needs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.db import connection

from .dialects import dialect_for


@contextlib.contextmanager
def write_transaction() -> Iterator[None]:
    """``transaction.atomic()`` for a transaction that writes: every store transaction that
    writes begins here. On SQLite its outermost block takes the write lock at BEGIN
    (``BEGIN IMMEDIATE``), whatever ``OPTIONS["transaction_mode"]`` says (see the dialect)."""
    with dialect_for(connection).write_transaction():
        yield
