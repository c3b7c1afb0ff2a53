"""The portable dialect, through the ORM: every database's default, and what the others override.

A method that returns None has no statement of its own here: the store module that asked takes
its ORM path (claiming, finishing tasks and attempts, finding due timers are the store's own
logic there, not one statement).
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, TypedDict

from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import QuerySet

from ...engine.events import Event
from ...models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem
from .. import testclock
from ..records import EVENT_FIELDS, JSON, LOCKED_FIELDS, Claim, FinishedTask, LockedRun, StoredRun, StoredTask


class RunUpdates(TypedDict, total=False):
    """What a workflow task writes to its run's row (``Dialect.write_tasks``)."""

    history_length: int
    vars: dict[str, JSON]
    status: str
    waiting_on: str
    task_error: dict[str, JSON] | None
    updated_at: datetime.datetime
    started_at: datetime.datetime
    result: JSON
    error: dict[str, JSON] | None
    closed_at: datetime.datetime


# A due timer: its work item's id, its run's id, its task id and when it fell due.
DueTimer = tuple[int, int, int | None, datetime.datetime]


class SqlNow(NamedTuple):
    """The current time as a statement writes it: ``sql``, which takes ``params``."""

    sql: str
    params: list[datetime.datetime | str]  # str: a datetime as the driver takes it


class SchemaExtra(NamedTuple):
    """Schema that Django's migrations cannot express on a database (see ``Dialect.schema_extras``)."""

    name: str
    create: str
    drop: str


class ServerProblem(NamedTuple):
    """A server setting under which workers could run one activity twice (see ``checks``)."""

    setting: str  # "isolation" or "binlog_format"
    value: str
    hint: str


class Dialect:
    """The ORM's way, which every database understands."""

    # What the engine needs of the database's configuration (see ``checks``): Django's own
    # transaction management (``write_transaction`` begins the transactions itself), WAL
    # (readers and the writer not blocking each other), READ COMMITTED.
    needs_autocommit = False
    wants_wal = False
    needs_read_committed = False
    # The database's clock in SQL, in UTC (the transaction's start where the database has one).
    clock_sql = "CURRENT_TIMESTAMP"
    # Whether a claim by id (``claim_item``) skips its row while another transaction locks it:
    # yes where only a claimer or a finisher locks a work item. Where a scan locks, for a moment,
    # rows it passes over (InnoDB), a skip could pass over a free item: the claim waits instead.
    claim_by_id_skips_locked = True

    def __init__(self, vendor: str) -> None:
        self.vendor = vendor

    @property
    def has_listen_notify(self) -> bool:
        """Whether workers can be woken by notifications (see ``notify``)."""
        return False

    def schema_extras(self) -> list[SchemaExtra]:
        """What the models declare that this database would not get from Django's own
        migrations (migration 0007 creates it): none where Django creates every constraint."""
        return []

    def server_problems(self) -> list[ServerProblem]:
        """What the server's own settings break, read from the server (``OPTIONS`` are checked
        without a connection, in ``checks``)."""
        return []

    def write_transaction(self) -> AbstractContextManager[None]:
        """``transaction.atomic()`` for a transaction that writes (see ``store.write_transaction``)."""
        return transaction.atomic()

    def now(self, placeholder: str = "%s") -> SqlNow:
        """The current time in a statement: the transaction's clock, as ``db_now()`` reads it;
        under the test clock its value, bound to ``placeholder``, so that tests run the same
        statements as production."""
        if testclock.clock_override is None:
            return SqlNow(self.clock_sql, [])
        return SqlNow(placeholder, [testclock.clock_override()])

    def read_clock(self) -> datetime.datetime:
        """The database's clock (``db_now()`` without the test clock)."""
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {self.clock_sql}")
            (now,) = cursor.fetchone()
        return now

    def read_wall_clock(self) -> datetime.datetime:
        """The database's clock as it is now, even late in a transaction (the test clock's, when set)."""
        if testclock.clock_override is not None:
            return testclock.clock_override()
        return self.read_clock()

    def lock_run(self, instance_id: int, *, skip_locked: bool = False) -> LockedRun | None:
        """Lock the run's row and read LOCKED_FIELDS (and, where the statement can, ``now``)."""
        skip_locked = skip_locked and connection.features.has_select_for_update_skip_locked
        no_key = connection.features.has_select_for_no_key_update
        runs = WorkflowInstance.objects.select_for_update(skip_locked=skip_locked, no_key=no_key).filter(pk=instance_id)
        row = runs.values(*LOCKED_FIELDS).first()
        return None if row is None else LockedRun(**row)

    def lock_runs(self, ids: Sequence[int]) -> dict[int, LockedRun] | None:
        """``lock_run`` for the runs ``ids`` (sorted), each with its ``now``, in one statement."""
        return None

    def write_tasks(
        self, runs: Sequence[tuple[int, RunUpdates]], history: list[HistoryEvent], items: Sequence[WorkItem]
    ) -> list[int]:
        """Append the history, update each run and insert the work items; the items' ids, in
        their order, where the database returns them."""
        with connection.cursor() as cursor:
            if history:
                cursor.execute(*_insert_sql(history))
            for instance_id, updates in runs:
                cursor.execute(*_update_sql(WorkflowInstance, instance_id, updates))
            ids = []
            if items and connection.features.can_return_rows_from_bulk_insert:
                cursor.execute(*_insert_sql(items, returning_ids=True))
                ids = [row[0] for row in cursor.fetchall()]
            elif items:
                WorkItem.objects.bulk_create(items)
        return ids

    def history(self, instance_id: int, *, after: int = 0) -> list[Event]:
        """The run's history events after ``after``."""
        events = HistoryEvent.objects.filter(instance_id=instance_id)
        if after:
            events = events.filter(seq__gt=after)
        return [Event(**row) for row in events.values(*EVENT_FIELDS)]

    def read_task(self, instance_id: int, *, known_length: int | None) -> StoredTask | None:
        """A workflow task's run and inbox (and, where the statement can, the history after
        ``known_length``); None when the run is gone."""
        instance: StoredRun | None = (
            WorkflowInstance.objects.filter(pk=instance_id)
            .values("workflow_id", "run_id", "workflow_name", "queue", "status", "history_length")
            .first()
        )
        if instance is None:
            return None
        inbox_rows = list(
            InboxEvent.objects.filter(instance_id=instance_id).values(
                "id", "kind", "name", "task_id", "payload", "timestamp"
            )
        )
        inbox = [
            Event(
                kind=row["kind"],
                name=row["name"],
                task_id=row["task_id"],
                payload=row["payload"],
                timestamp=row["timestamp"],
            )
            for row in inbox_rows
        ]
        return StoredTask(instance, [row["id"] for row in inbox_rows], inbox, None)

    def read_tasks(self, runs: Sequence[tuple[int, int]]) -> dict[int, StoredTask] | None:
        """``read_task`` for ``(run id, known length)`` pairs, by run id, in one statement."""
        return None

    def delete_run_rows(self, rows: QuerySet[Any]) -> int:
        """Delete ``rows``, some of a run's work items or inbox events (``instance_id=``), its row locked."""
        return rows.delete()[0]

    def lock_first_due(
        self, candidates: QuerySet[WorkItem], queues: Sequence[str], limit: int
    ) -> list[tuple[int, str]]:
        """``(id, queue)`` of up to ``limit`` of ``candidates`` in ``queues``, earliest due first,
        locked (where the database locks rows) and skipping those another transaction locked."""
        candidates = candidates.filter(queue__in=list(queues)).order_by("due_at")
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        return list(candidates.values_list("id", "queue")[:limit])

    def claim(
        self, *, owner: str, kind: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[Claim] | None:
        """``claim()`` in one statement, its leases not yet capped by the attempts' timeouts."""
        return None

    def finish_workflow_task(
        self, item: Claim, inbox_ids: Sequence[int], *, closing: bool, check_signals: bool
    ) -> FinishedTask | None:
        """``_finish_workflow_task`` in one statement."""
        return None

    def finish_attempts(
        self, items: Sequence[Claim], runs: dict[int, LockedRun], *, live_only: bool
    ) -> set[int] | None:
        """``_finish_attempts`` in one statement."""
        return None

    def due_timers(self, *, kind: str, queues: Sequence[str], limit: int) -> list[DueTimer] | None:
        """Up to ``limit`` due timers of ``queues`` as ``(id, instance id, task id, due at)``,
        the clock read in the statement."""
        return None


# Fields whose Python value is already what the database driver takes: no preparation.
_PLAIN_FIELD_TYPES = frozenset(
    {
        "AutoField",
        "BigAutoField",
        "BigIntegerField",
        "BooleanField",
        "CharField",
        "ForeignKey",
        "IntegerField",
        "PositiveBigIntegerField",
        "PositiveIntegerField",
        "PositiveSmallIntegerField",
        "SmallIntegerField",
        "TextField",
    }
)


def _prepare(field: models.Field[Any, Any], value: Any, db: BaseDatabaseWrapper) -> Any:
    return (
        value if value is None or field.get_internal_type() in _PLAIN_FIELD_TYPES else field.get_db_prep_save(value, db)
    )


def _insert_sql(rows: Sequence[models.Model], *, returning_ids: bool = False) -> tuple[str, list[Any]]:
    """One INSERT of ``rows`` (model instances of one model), values prepared by their
    fields as ``bulk_create`` would; with ``returning_ids`` it returns their ids. Built by
    hand: the ORM's compiler costs more client CPU than the statement on every step."""
    db = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once, not per value
    into, placeholders, returning, fields = _insert_parts(type(rows[0]), db.vendor)
    text = f"{into} VALUES {', '.join([placeholders] * len(rows))}{returning if returning_ids else ''}"
    params = [_prepare(field, field.pre_save(row, True), db) for row in rows for field in fields]
    return text, params


@functools.cache
def _insert_parts(model: type[models.Model], vendor: str) -> tuple[str, str, str, list[models.Field[Any, Any]]]:
    """``INSERT INTO table (columns)``, one row's placeholders, ``RETURNING pk`` and the fields."""
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    into = f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(column(field)) for field in fields)})"
    placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
    return into, placeholders, f" RETURNING {quote(column(model._meta.pk))}", fields


def _update_sql(model: type[models.Model], pk: int, values: Mapping[str, object]) -> tuple[str, list[Any]]:
    """The UPDATE ``model.objects.filter(pk=pk).update(**values)`` would run (plain values only)."""
    db = connections[DEFAULT_DB_ALIAS]
    quote = db.ops.quote_name
    fields = [concrete_field(model, name) for name in values]
    assignments = ", ".join(f"{quote(column(field))} = %s" for field in fields)
    params = [_prepare(field, values[field.name], db) for field in fields]
    return (
        f"UPDATE {quote(model._meta.db_table)} SET {assignments} WHERE {quote(column(model._meta.pk))} = %s",
        [*params, pk],
    )


def concrete_field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    """``model``'s field ``name``, which has a column (not a relation's other side)."""
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field), f"{model.__name__}.{name} is not a concrete field"
    return field


def column(field: models.Field[Any, Any]) -> str:
    """The column of a concrete field (only fields without one, like many-to-many, have None)."""
    assert field.column is not None, f"{field} has no column"
    return field.column
