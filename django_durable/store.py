"""Every database read and write of the engine.

Locking order, everywhere: a run's ``WorkflowInstance`` row first (it is the
per-run mutex for history, inbox and work items), then work items. Claims lock
only work items, with ``SKIP LOCKED``, in a transaction of their own that
touches no instance. Every write that finishes claimed work is fenced: it only
applies while the item still carries the claimer's lease and attempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.db.models import (
    Count,
    DateTimeField,
    Exists,
    F,
    Func,
    Min,
    OuterRef,
    Q,
    Sum,
    TextField,
    Value,
)
from django.db.models.functions import Cast, Greatest, Length
from django.utils.dateparse import parse_datetime

from . import notify
from .conf import durable_settings
from .engine.events import COMMAND_KINDS, COMPLETION_KINDS, Event, EventKind, ParentClosePolicy
from .exceptions import (
    ActivityNotPending,
    WorkflowAlreadyExists,
    WorkflowNotFound,
    WorkflowNotOpen,
    WorkflowStateError,
    WorkflowStillOpen,
)
from .faults import crash_point
from .models import (
    OPEN_STATUSES,
    HistoryEvent,
    IdReusePolicy,
    InboxEvent,
    WorkerHeartbeat,
    WorkflowInstance,
    WorkflowStatus,
    WorkItem,
    WorkItemKind,
)
from .retry import RetryPolicy
from .statelog import state_change
from .tokens import TaskToken

logger = logging.getLogger("django_durable.store")

EVENT_FIELDS = ("seq", "kind", "name", "task_id", "payload", "timestamp")
CLAIM_FIELDS = (
    "id", "kind", "instance_id", "queue", "name", "task_id", "payload", "attempt", "claimed_at",
    "lease_expires_at", "created_at", "failures", "heartbeat_details", "heartbeat_at",
)


def _claim_rows(items: Any, *extra: str) -> Any:
    """``values()`` for building ``Claim``s, with the run's ids joined in (no query per item)."""
    return items.values(*CLAIM_FIELDS, *extra, workflow_id=F("instance__workflow_id"), run_id=F("instance__run_id"))


class LeaseLost(Exception):
    """The claimed item is no longer ours: nothing was written."""


@dataclasses.dataclass
class Claim:
    id: int
    kind: str
    instance_id: int
    queue: str
    name: str
    task_id: int | None
    payload: dict[str, Any]
    attempt: int
    owner: str
    claimed_at: datetime.datetime
    lease_expires_at: datetime.datetime
    created_at: datetime.datetime
    failures: int = 0
    heartbeat_details: Any = None
    heartbeat_at: datetime.datetime | None = None
    workflow_id: str = ""
    run_id: str = ""


@dataclasses.dataclass
class WorkflowTaskInput:
    workflow_id: str
    run_id: str
    workflow_name: str
    queue: str
    status: str
    history: list[Event]  # the whole run's, or only the events after ``known_length``
    inbox: list[Event]
    inbox_ids: list[int]
    history_length: int = 0
    known_length: int | None = None


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


@contextlib.contextmanager
def write_transaction() -> Iterator[None]:
    """``transaction.atomic()`` for a transaction that writes. On SQLite its outermost
    block takes the write lock at BEGIN (``BEGIN IMMEDIATE``), whatever
    ``OPTIONS["transaction_mode"]`` says: two deferred transactions that both read, then
    write, deadlock on the lock upgrade and SQLite fails one at once, its busy timeout
    not applying, where immediate ones wait their turn."""
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        with transaction.atomic():
            yield
        return
    connection.ensure_connection()  # connecting sets transaction_mode from the settings
    configured, connection.transaction_mode = connection.transaction_mode, "IMMEDIATE"
    try:
        with transaction.atomic():
            connection.transaction_mode = configured  # it began: nested blocks are savepoints
            yield
    finally:
        connection.transaction_mode = configured


def _lock_instance(instance_id: int, *, skip_locked: bool = False) -> dict[str, Any] | None:
    """Lock the run's row and read LOCKED_FIELDS; on PostgreSQL also ``now`` (the database's
    clock, as ``db_now()``)."""
    if clock_override is None and connection.vendor == "postgresql":
        # Hand-written: on every step's path, and the ORM's query building costs more
        # client CPU than the query. NO KEY: the row's key never changes, and a plain
        # FOR UPDATE would conflict with the FOR KEY SHARE that PostgreSQL's deferred
        # foreign-key checks take on it at commit.
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_SQL_SKIP_LOCKED if skip_locked else _LOCK_SQL, [instance_id])
            row = cursor.fetchone()
        return None if row is None else dict(zip((*LOCKED_FIELDS, "now"), row))
    skip_locked = skip_locked and connection.features.has_select_for_update_skip_locked
    no_key = connection.features.has_select_for_no_key_update
    runs = WorkflowInstance.objects.select_for_update(skip_locked=skip_locked, no_key=no_key).filter(pk=instance_id)
    return runs.values(*LOCKED_FIELDS).first()


LOCKED_FIELDS = (
    "status", "history_length", "queue", "workflow_id", "run_id", "workflow_name", "started_at",
    "cancel_requested_at", "parent_id", "parent_task_id", "parent_close_policy",
)
CLOSING_STATUSES = (
    WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELED, WorkflowStatus.CONTINUED_AS_NEW,
)
_LOCK_SQL = "SELECT {columns}, CURRENT_TIMESTAMP FROM {table} WHERE id = %s FOR NO KEY UPDATE".format(
    columns=", ".join(WorkflowInstance._meta.get_field(name).column for name in LOCKED_FIELDS),
    table=WorkflowInstance._meta.db_table,
)
_LOCK_SQL_SKIP_LOCKED = _LOCK_SQL + " SKIP LOCKED"
_LOCK_MANY_SQL = "SELECT id, {columns}, CURRENT_TIMESTAMP FROM {table} WHERE id = ANY(%s::bigint[]) ORDER BY id FOR NO KEY UPDATE".format(
    columns=", ".join(WorkflowInstance._meta.get_field(name).column for name in LOCKED_FIELDS),
    table=WorkflowInstance._meta.db_table,
)


def _int_array(values: Iterable[int]) -> str:
    """A PostgreSQL array literal: psycopg's list dumper inspects every element."""
    return "{" + ",".join(str(int(value)) for value in values) + "}"


def _lock_instances(instance_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """``_lock_instance`` for several runs, locked in id order (so that two such batches
    cannot deadlock), each with its ``now``; runs that no longer exist are left out."""
    ids = sorted(set(instance_ids))
    if clock_override is None and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_MANY_SQL, [_int_array(ids)])
            return {row[0]: dict(zip((*LOCKED_FIELDS, "now"), row[1:])) for row in cursor.fetchall()}
    runs = {}
    for instance_id in ids:
        instance = _lock_instance(instance_id)
        if instance is not None:
            instance["now"] = db_now()
            runs[instance_id] = instance
    return runs


def _parked_at(instance: dict[str, Any], now: datetime.datetime) -> datetime.datetime | None:
    """New work of a suspended run is created parked; ``resume()`` releases it."""
    return now if instance["status"] == WorkflowStatus.SUSPENDED else None


def _lock_open_run(workflow_id: str, run_id: str | None) -> tuple[int, dict[str, Any]]:
    """Lock the run a verb addresses, following continue-as-new to the run the chain has
    reached (it may have continued since we looked); ``WorkflowNotOpen`` if it is closed."""
    instance_id = get_instance(workflow_id, run_id).pk
    while True:
        instance = _lock_instance(instance_id)
        successor = (
            continuation_of(instance_id)
            if instance is not None and instance["status"] == WorkflowStatus.CONTINUED_AS_NEW
            else None
        )
        if successor is None:
            return instance_id, _require_open(workflow_id, instance)
        instance_id = successor.pk


def _require_open(workflow_id: str, instance: dict[str, Any] | None) -> dict[str, Any]:
    if instance is None or instance["status"] not in OPEN_STATUSES:
        raise WorkflowNotOpen(
            f"Workflow {workflow_id!r} is not running (it is {instance['status'] if instance else 'gone'})."
        )
    return instance


def _seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


# -- starting and reading runs ----------------------------------------------------


def create_instance(
    *,
    workflow_name: str,
    workflow_id: str,
    queue: str,
    args: list[Any],
    kwargs: dict[str, Any],
    start_at: datetime.datetime | None,
    id_reuse_policy: IdReusePolicy = IdReusePolicy.ALLOW_DUPLICATE,
) -> WorkflowInstance:
    """A new run: the instance, its ``ExecutionStarted`` event and its first workflow task."""
    try:
        with write_transaction():
            now = db_now()
            _apply_id_reuse_policy(workflow_id, IdReusePolicy(id_reuse_policy), now)
            return _create_run(
                workflow_id=workflow_id, workflow_name=workflow_name, queue=queue, args=args, kwargs=kwargs,
                now=now, start_at=start_at,
            )
    except IntegrityError:
        # Another transaction started a run with this id between our check and insert.
        raise WorkflowAlreadyExists(f"Workflow {workflow_id!r} is already running.") from None


def _create_run(
    *,
    workflow_id: str,
    workflow_name: str,
    queue: str,
    args: list[Any],
    kwargs: dict[str, Any],
    now: datetime.datetime,
    start_at: datetime.datetime | None = None,
    history: Sequence[Event] = (),
    **relations: Any,
) -> WorkflowInstance:
    """Insert a run, its history (by default just ``ExecutionStarted``) and a due workflow task."""
    history = list(history) or [
        Event(
            kind=EventKind.EXECUTION_STARTED,
            name=workflow_name,
            payload={"args": args, "kwargs": kwargs, "queue": queue},
            timestamp=now,
        )
    ]
    instance = WorkflowInstance.objects.create(
        workflow_id=workflow_id,
        workflow_name=workflow_name,
        queue=queue,
        input={"args": args, "kwargs": kwargs},
        history_length=len(history),
        scheduled_start_at=start_at,
        created_at=now,
        **relations,
    )
    _append_history(instance.pk, 1, history)
    WorkItem.objects.create(
        kind=WorkItemKind.WORKFLOW,
        instance=instance,
        queue=queue,
        name=workflow_name,
        due_at=max(start_at, now) if start_at else now,
        created_at=now,
    )
    notify.notify_work(queue)
    state_change(
        "run_created", workflow_id=workflow_id, run_id=str(instance.run_id), workflow_name=workflow_name,
        queue=queue, start_at=start_at, history_length=len(history),
    )
    return instance


def _append_history(instance_id: int, first_seq: int, events: Iterable[Event]) -> None:
    HistoryEvent.objects.bulk_create(_history_rows(instance_id, first_seq, events))


def _history_rows(instance_id: int, first_seq: int, events: Iterable[Event]) -> list[HistoryEvent]:
    return [
        HistoryEvent(
            instance_id=instance_id,
            seq=first_seq + offset,
            kind=event.kind,
            name=event.name,
            task_id=event.task_id,
            payload=event.payload,
            timestamp=event.timestamp,
        )
        for offset, event in enumerate(events)
    ]


# Fields whose Python value is already what the database driver takes: no preparation.
_PLAIN_FIELD_TYPES = frozenset({
    "AutoField", "BigAutoField", "BigIntegerField", "BooleanField", "CharField", "ForeignKey", "IntegerField",
    "PositiveBigIntegerField", "PositiveIntegerField", "PositiveSmallIntegerField", "SmallIntegerField", "TextField",
})


def _prepare(field: Any, value: Any, db: Any) -> Any:
    return value if value is None or field.get_internal_type() in _PLAIN_FIELD_TYPES else field.get_db_prep_save(
        value, db
    )


def _insert_sql(rows: Sequence[Any], *, returning_ids: bool = False) -> tuple[str, list[Any]]:
    """One INSERT of ``rows`` (model instances of one model), values prepared by their
    fields as ``bulk_create`` would; with ``returning_ids`` it returns their ids. Built by
    hand: the ORM's compiler costs more client CPU than the statement on every step."""
    db = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once, not per value
    into, placeholders, returning, fields = _insert_parts(type(rows[0]), db.vendor)
    text = f"{into} VALUES {', '.join([placeholders] * len(rows))}{returning if returning_ids else ''}"
    params = [_prepare(field, field.pre_save(row, True), db) for row in rows for field in fields]
    return text, params


@functools.cache
def _insert_parts(model: type[Any], vendor: str) -> tuple[str, str, str, list[Any]]:
    """``INSERT INTO table (columns)``, one row's placeholders, ``RETURNING pk`` and the fields."""
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    into = f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(field.column) for field in fields)})"
    placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
    return into, placeholders, f" RETURNING {quote(model._meta.pk.column)}", fields


def _update_sql(model: type[Any], pk: int, values: dict[str, Any]) -> tuple[str, list[Any]]:
    """The UPDATE ``model.objects.filter(pk=pk).update(**values)`` would run (plain values only)."""
    db = connections[DEFAULT_DB_ALIAS]
    quote = db.ops.quote_name
    fields = [model._meta.get_field(name) for name in values]
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    params = [_prepare(field, values[field.name], db) for field in fields]
    return (
        f"UPDATE {quote(model._meta.db_table)} SET {assignments} WHERE {quote(model._meta.pk.column)} = %s",
        [*params, pk],
    )


def _recordset(fields: Sequence[Any], db: Any) -> str:
    """``json_to_recordset(%s::json) AS r (column type, ...)`` for ``fields``."""
    quote = db.ops.quote_name
    return f"json_to_recordset(%s::json) AS r ({', '.join(f'{quote(f.column)} {f.db_type(db)}' for f in fields)})"


def _json_records(records: list[dict[str, Any]]) -> str:
    return json.dumps(records, default=_json_scalar, separators=(",", ":"))


def _json_scalar(value: Any) -> Any:
    """Column values JSON has no type for: PostgreSQL reads them from their text."""
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    return str(value)  # UUID, Decimal


def _insert_json_sql(rows: Sequence[Any], *, returning_ids: bool = False) -> tuple[str, list[Any]]:
    """``_insert_sql`` on PostgreSQL, the rows sent as one JSON document: the statement's
    text is the same whatever their number, so psycopg converts it once (a long VALUES
    list is parsed again on every execution), and the rows are dumped by one json.dumps."""
    text, fields = _insert_json_parts(type(rows[0]), returning_ids)
    return text, [_json_records([{field.column: field.pre_save(row, True) for field in fields} for row in rows])]


@functools.cache
def _insert_json_parts(model: type[Any], returning_ids: bool) -> tuple[str, list[Any]]:
    db = connections[DEFAULT_DB_ALIAS]
    quote = db.ops.quote_name
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    columns = ", ".join(quote(field.column) for field in fields)
    text = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) SELECT {columns} FROM {_recordset(fields, db)}"
    return text + (f" RETURNING {quote(model._meta.pk.column)}" if returning_ids else ""), fields


def _update_json_sql(model: type[Any], rows: Sequence[tuple[int, dict[str, Any]]]) -> tuple[str, list[Any]]:
    """One PostgreSQL UPDATE giving each row (pk, values) its own values, sent as one JSON
    document (see ``_insert_json_sql``); every row's values have the same keys."""
    db = connections[DEFAULT_DB_ALIAS]
    quote = db.ops.quote_name
    pk = model._meta.pk
    fields = [pk, *(model._meta.get_field(name) for name in rows[0][1])]
    assignments = ", ".join(f"{quote(field.column)} = r.{quote(field.column)}" for field in fields[1:])
    text = (
        f"UPDATE {quote(model._meta.db_table)} AS t SET {assignments} FROM {_recordset(fields, db)} "
        f"WHERE t.{quote(pk.column)} = r.{quote(pk.column)}"
    )
    records = [{pk.column: key, **{model._meta.get_field(name).column: value for name, value in values.items()}}
               for key, values in rows]
    return text, [_json_records(records)]


def _write_task(
    instance_id: int, history: list[HistoryEvent], updates: dict[str, Any], items: Sequence[WorkItem] = ()
) -> None:
    """Append a workflow task's history, update its run and insert its work items (their
    ``pk`` set where the database returns it): on PostgreSQL in one statement."""
    _write_tasks([(instance_id, updates)], history, items)


def _write_tasks(
    runs: Sequence[tuple[int, dict[str, Any]]], history: list[HistoryEvent], items: Sequence[WorkItem] = ()
) -> None:
    """``_write_task`` for the tasks of several runs (each run's updates with the same
    keys): on PostgreSQL still one statement."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            update_sql, update_params = _update_json_sql(WorkflowInstance, runs)
            ctes: list[str] = []
            params: list[Any] = []
            for name, rows in (("history", history), ("work", items)):
                if rows:
                    text, values = _insert_json_sql(rows, returning_ids=name == "work")
                    ctes.append(f"{name} AS ({text})")
                    params += values
            with_clause = f"WITH {', '.join(ctes)} " if ctes else ""
            returning = " RETURNING (SELECT array_agg(id ORDER BY id) FROM work)" if items else ""
            cursor.execute(f"{with_clause}{update_sql}{returning}", params + update_params)
            # Ids come from the sequence in the records' order, so sorted they match ``items``.
            ids = cursor.fetchone()[0] if items else []
        else:
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
    for item, pk in zip(items, ids):
        item.pk = pk


def _apply_id_reuse_policy(workflow_id: str, policy: IdReusePolicy, now: datetime.datetime) -> None:
    latest = WorkflowInstance.objects.filter(workflow_id=workflow_id).order_by("-id").values("pk", "status").first()
    if latest is None:
        return
    if latest["status"] in OPEN_STATUSES:
        if policy != IdReusePolicy.TERMINATE_IF_RUNNING:
            raise WorkflowAlreadyExists(f"Workflow {workflow_id!r} is already running.")
        instance = _lock_instance(latest["pk"])
        if instance is not None and instance["status"] in OPEN_STATUSES:
            _terminate_locked(latest["pk"], instance, "terminated by a new run with the same id", now)
    elif policy == IdReusePolicy.REJECT_DUPLICATE or (
        policy == IdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY and latest["status"] == WorkflowStatus.COMPLETED
    ):
        raise WorkflowAlreadyExists(
            f"Workflow id {workflow_id!r} was used before ({latest['status']}) and the id reuse policy "
            f"{policy.value!r} does not allow another run."
        )


def get_instance(workflow_id: str, run_id: str | None = None) -> WorkflowInstance:
    runs = WorkflowInstance.objects.filter(workflow_id=workflow_id)
    if run_id is not None:
        runs = runs.filter(run_id=run_id)
    # Runs of one id are strictly sequential (one open run at a time): the newest has the highest id.
    instance = runs.order_by("-id").first()
    if instance is None:
        raise WorkflowNotFound(f"No workflow with id {workflow_id!r}" + (f" and run {run_id}." if run_id else "."))
    return instance


def get_history(instance_id: int, *, after: int = 0) -> list[Event]:
    if connection.vendor == "postgresql":
        # Read in one JSON document: a step that replays inline reads the whole history, and
        # building model rows cost more client CPU than the query.
        with connection.cursor() as cursor:
            cursor.execute(_HISTORY_SQL, [after, instance_id])
            row = cursor.fetchone()
        return [] if row is None else [Event(**event) for event in _json_events(row[0])]
    events = HistoryEvent.objects.filter(instance_id=instance_id)
    if after:
        events = events.filter(seq__gt=after)
    return [Event(**row) for row in events.values(*EVENT_FIELDS)]


@dataclasses.dataclass(frozen=True)
class HistorySize:
    events: int
    bytes: int  # of the payloads' JSON, as the database renders it (about what the engine counts)


def history_size(instance_id: int) -> HistorySize:
    """How long and how large a run's history is, measured by the database without reading it."""
    totals = HistoryEvent.objects.filter(instance_id=instance_id).aggregate(
        events=Count("pk"), bytes=Sum(Length(Cast("payload", TextField())))
    )
    return HistorySize(events=totals["events"], bytes=totals["bytes"] or 0)


def history_window(instance_id: int, first: int, last: int) -> list[Event]:
    """Events ``first .. last`` (by ``seq``) of a run's history."""
    events = HistoryEvent.objects.filter(instance_id=instance_id, seq__gte=first, seq__lte=last)
    return [Event(**row) for row in events.order_by("seq").values(*EVENT_FIELDS)]


def runs_to_replay(
    *, names: Sequence[str], workflow_ids: Sequence[str], include_closed: bool, limit: int | None
) -> Iterator[dict[str, Any]]:
    """Runs for ``durable_replay`` to check, by workflow name, each name's newest first."""
    runs = WorkflowInstance.objects.all()
    if not include_closed:
        runs = runs.filter(status__in=OPEN_STATUSES)
    if workflow_ids:
        runs = runs.filter(workflow_id__in=workflow_ids)
    if names:
        runs = runs.filter(workflow_name__in=names)
    present = sorted(set(runs.order_by().values_list("workflow_name", flat=True).distinct()))
    for name in present:
        of_name = runs.filter(workflow_name=name).order_by("-id").values(
            "id", "workflow_id", "run_id", "workflow_name", "queue", "status"
        )
        yield from of_name[:limit] if limit is not None else of_name.iterator()


def pending_work(instance_id: int) -> list[dict[str, Any]]:
    return list(
        WorkItem.objects.filter(instance_id=instance_id).values(
            "kind", "name", "task_id", "queue", "due_at", "attempt", "lease_owner",
            "lease_expires_at", "failures", "parked_at", "last_error",
        )
    )


# -- claiming ---------------------------------------------------------------------


def _claimable(now: datetime.datetime | TransactionNow, **filters: Any) -> Any:
    """Work items anyone may claim now: unleased, unparked and due."""
    return WorkItem.objects.filter(lease_owner__isnull=True, parked_at__isnull=True, due_at__lte=now, **filters)


def claim(*, owner: str, kind: str, queues: Sequence[str], limit: int, lease_seconds: float) -> list[Claim]:
    """Claim up to ``limit`` due items of ``kind`` in one short transaction."""
    if limit <= 0:
        return []
    if connection.vendor == "postgresql" and clock_override is None:
        claims = _claim_postgresql(owner=owner, kind=kind, queues=queues, limit=limit, lease_seconds=lease_seconds)
    else:
        with write_transaction():
            now = db_now()
            candidates = _claimable(now, kind=kind, queue__in=list(queues)).order_by("due_at")
            if connection.features.has_select_for_update_skip_locked:
                candidates = candidates.select_for_update(skip_locked=True)
            ids = list(candidates.values_list("id", flat=True)[:limit])
            claims = _lease_items(ids, owner=owner, now=now, lease_seconds=lease_seconds) if ids else []
    _log_claims(claims)
    return claims


def _log_claims(claims: Iterable[Claim], **fields: Any) -> None:
    for item in claims:
        state_change(
            "claimed", workflow_id=item.workflow_id, run_id=item.run_id, kind=item.kind, name=item.name or None,
            task_id=item.task_id, item=item.id, attempt=item.attempt, owner=item.owner,
            lease_expires_at=item.lease_expires_at, **fields,
        )


_CLAIM_SQL = """
WITH picked AS (
    SELECT id FROM {items}
    WHERE kind = %(kind)s AND queue = ANY(%(queues)s) AND lease_owner IS NULL
      AND parked_at IS NULL AND due_at <= CURRENT_TIMESTAMP
    ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
UPDATE {items} AS item
SET lease_owner = %(owner)s, claimed_at = CURRENT_TIMESTAMP,
    lease_expires_at = CURRENT_TIMESTAMP + %(lease)s * INTERVAL '1 second',
    attempt = item.attempt + 1, heartbeat_at = NULL, awaiting_completion = FALSE
FROM picked, {runs} AS run
WHERE item.id = picked.id AND run.id = item.instance_id
RETURNING {fields}, run.workflow_id, run.run_id
"""


def _claim_postgresql(*, owner: str, kind: str, queues: Sequence[str], limit: int, lease_seconds: float) -> list[Claim]:
    """``claim()`` in one statement (one round trip, no transaction block): the ORM needs
    four (the clock, the locking select, the update, the read back)."""
    columns = {field: WorkItem._meta.get_field(field).column for field in CLAIM_FIELDS}
    sql = _CLAIM_SQL.format(
        items=connection.ops.quote_name(WorkItem._meta.db_table),
        runs=connection.ops.quote_name(WorkflowInstance._meta.db_table),
        fields=", ".join(f"item.{connection.ops.quote_name(column)}" for column in columns.values()),
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, {"kind": kind, "queues": list(queues), "limit": limit, "owner": owner, "lease": lease_seconds})
        rows = cursor.fetchall()
    json_fields = {"payload", "heartbeat_details"}
    claims = []
    for row in rows:
        values = dict(zip(CLAIM_FIELDS, row[:-2]))
        for field in json_fields:  # Django reads jsonb as text and decodes it itself
            if isinstance(values[field], str):
                values[field] = json.loads(values[field])
        claims.append(Claim(owner=owner, workflow_id=row[-2], run_id=str(row[-1]), **values))
    _cap_leases(claims)
    return claims


def _cap_leases(claims: list[Claim]) -> None:
    """An attempt's lease never outlives its timeout (start-to-close, heartbeat, schedule-to-close)."""
    for item in claims:
        deadline = attempt_deadline(item, None)
        if deadline is not None and deadline < item.lease_expires_at:
            WorkItem.objects.filter(id=item.id).update(lease_expires_at=deadline)
            item.lease_expires_at = deadline


def _lease_items(ids: list[int], *, owner: str, now: datetime.datetime, lease_seconds: float) -> list[Claim]:
    """Lease the (claimable) items ``ids`` to ``owner``, inside the caller's transaction."""
    # On SQLite there are no row locks: the lease condition makes this a
    # compare-and-set, and IMMEDIATE transactions serialise claimers.
    WorkItem.objects.filter(id__in=ids, lease_owner__isnull=True).update(
        lease_owner=owner,
        lease_expires_at=now + _seconds(lease_seconds),
        claimed_at=now,
        attempt=F("attempt") + 1,
        heartbeat_at=None,
        awaiting_completion=False,
    )
    rows = _claim_rows(WorkItem.objects.filter(id__in=ids, lease_owner=owner, claimed_at=now))
    claims = [Claim(owner=owner, **{**row, "run_id": str(row["run_id"])}) for row in rows]
    _cap_leases(claims)
    return claims


def dispatch(
    *, kind: str, queues: Sequence[str], limit: int, dispatch_timeout: float
) -> list[tuple[int, str]]:
    """Mark up to ``limit`` claimable items of ``kind`` as sent to a remote executor, and
    return their ``(id, queue)``: those never sent since they last became claimable, or
    sent more than ``dispatch_timeout`` seconds ago and still unclaimed (the message was lost)."""
    if limit <= 0:
        return []
    with write_transaction():
        now = db_now()
        candidates = (
            _claimable(now, kind=kind, queue__in=list(queues))
            .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lte=now - _seconds(dispatch_timeout)))
            .order_by("due_at")
        )
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        rows = list(candidates.values_list("id", "queue")[:limit])
        if rows:
            WorkItem.objects.filter(id__in=[item_id for item_id, _ in rows]).update(dispatched_at=now)
        return rows


def dispatch_activities(*, queues: Sequence[str], limit: int, dispatch_timeout: float) -> list[tuple[int, str]]:
    return dispatch(kind=WorkItemKind.ACTIVITY, queues=queues, limit=limit, dispatch_timeout=dispatch_timeout)


def claim_item(
    item_id: int, *, owner: str, lease_seconds: float, kind: str = WorkItemKind.ACTIVITY
) -> Claim | None:
    """Claim the item ``item_id`` of ``kind`` by the rules of ``claim()`` (unleased, unparked,
    due); None when it is not claimable (a duplicate message, or already finished)."""
    with write_transaction():
        now = db_now()
        claimable = _claimable(now, id=item_id, kind=kind)
        if connection.features.has_select_for_update_skip_locked:
            claimable = claimable.select_for_update(skip_locked=True)
        if not claimable.exists():
            # Parked or not yet due: forget the sending, so it is sent again once claimable.
            WorkItem.objects.filter(id=item_id, lease_owner__isnull=True).filter(
                Q(parked_at__isnull=False) | Q(due_at__gt=now)
            ).update(dispatched_at=None)
            return None
        claims = _lease_items([item_id], owner=owner, now=now, lease_seconds=lease_seconds)
        _log_claims(claims)
        return claims[0] if claims else None


def renew_leases(
    *, owner: str, leases: Sequence[tuple[int, int, datetime.datetime | None]], lease_seconds: float
) -> set[int]:
    """Extend the leases of ``(item id, attempt, cap)`` still ours; a cap (the attempt's
    timeout) bounds the extension. Returns the ids whose lease was lost."""
    if not leases:
        return set()
    wanted = {(item_id, attempt): cap for item_id, attempt, cap in leases}
    with write_transaction():
        now = db_now()
        candidates = WorkItem.objects.filter(
            id__in=[item_id for item_id, _, _ in leases],
            lease_owner=owner,
            awaiting_completion=False,
            lease_expires_at__gt=now,  # an expired lease is the reaper's now
        ).order_by("id")
        if connection.features.has_select_for_update_skip_locked:
            # Rows locked by a transaction finishing them are skipped, not waited on:
            # waiting could deadlock with a run's close, which locks its items in turn.
            candidates = candidates.select_for_update(skip_locked=True)
        ours = [key for key in candidates.values_list("id", "attempt") if key in wanted]
        by_expiry: dict[datetime.datetime, list[int]] = {}
        for key in ours:
            cap = wanted[key]
            expiry = now + _seconds(lease_seconds)
            by_expiry.setdefault(min(expiry, cap) if cap else expiry, []).append(key[0])
        for expiry, ids in by_expiry.items():
            # Greatest: a heartbeat may have pushed the lease further meanwhile.
            WorkItem.objects.filter(id__in=ids).update(lease_expires_at=Greatest("lease_expires_at", Value(expiry)))
        missing = {item_id for item_id, _ in set(wanted) - set(ours)}
        if not missing:
            return set()
        # Not renewed and not simply finished or busy being finished: lost.
        lost = WorkItem.objects.filter(id__in=missing).exclude(
            lease_owner=owner, lease_expires_at__gt=now, awaiting_completion=False
        )
        return set(lost.values_list("id", flat=True))


def _fence(item: Claim) -> Any:
    return WorkItem.objects.filter(id=item.id, lease_owner=item.owner, attempt=item.attempt)


def lease_lost(item: Claim) -> LeaseLost:
    """The error for an outcome of ``item`` that came too late: nothing of it was written."""
    return LeaseLost(f"{item.kind} {item.name!r} attempt {item.attempt} is no longer leased by {item.owner}")


def discard(item: Claim) -> None:
    """Drop a claimed item that has nothing left to do (its run is gone or closed)."""
    _fence(item).delete()


# -- workflow tasks -------------------------------------------------------------


def load_workflow_tasks(
    items: Sequence[Claim], *, known_lengths: dict[int, int] | None = None
) -> dict[int, WorkflowTaskInput | None]:
    """``load_workflow_task`` for several claimed tasks (by item id; ``known_lengths``
    by item id too): on PostgreSQL one statement, whatever their number."""
    known_lengths = known_lengths or {}
    if len(items) < 2 or connection.vendor != "postgresql":
        return {item.id: load_workflow_task(item, known_length=known_lengths.get(item.id)) for item in items}
    runs = sorted({item.instance_id: known_lengths.get(item.id) or 0 for item in items}.items())
    with connection.cursor() as cursor:
        cursor.execute(_LOAD_TASKS_SQL, [_int_array(run for run, _ in runs), _int_array(after for _, after in runs)])
        rows = {row[0]: row[1:] for row in cursor.fetchall()}
    return {
        item.id: _task_input(item, rows[item.instance_id], known_lengths.get(item.id))
        if item.instance_id in rows else None
        for item in items
    }


def load_workflow_task(item: Claim, *, known_length: int | None = None) -> WorkflowTaskInput | None:
    """What a workflow task needs: the run, its inbox and its history, or with
    ``known_length`` (the worker holds the run's code up to there) only the history
    events after it. ``history_length`` tells whether the held code is still current."""
    if connection.vendor == "postgresql":
        # One statement (one snapshot) instead of three ORM queries, on every task's path.
        with connection.cursor() as cursor:
            cursor.execute(_LOAD_TASK_SQL, [known_length or 0, item.instance_id])
            row = cursor.fetchone()
        return None if row is None else _task_input(item, row, known_length)
    instance = (
        WorkflowInstance.objects.filter(pk=item.instance_id)
        .values("workflow_id", "run_id", "workflow_name", "queue", "status", "history_length")
        .first()
    )
    if instance is None:
        return None
    inbox_rows = list(
        InboxEvent.objects.filter(instance_id=item.instance_id).values(
            "id", "kind", "name", "task_id", "payload", "timestamp"
        )
    )
    return _task_input_of(item, instance, inbox_rows, None, known_length)


def _task_input(item: Claim, row: Sequence[Any], known_length: int | None) -> WorkflowTaskInput:
    """A task's input from a row of ``_LOAD_TASK_SQL`` (run, inbox and history as JSON)."""
    instance = dict(zip(("workflow_id", "run_id", "workflow_name", "queue", "status", "history_length"), row))
    history = [Event(**event) for event in _json_events(row[-1])]
    return _task_input_of(item, instance, _json_events(row[-2]), history, known_length)


def _task_input_of(
    item: Claim, instance: dict[str, Any], inbox_rows: list[dict[str, Any]], history: list[Event] | None,
    known_length: int | None,
) -> WorkflowTaskInput:
    inbox_ids = [row.pop("id") for row in inbox_rows]
    if known_length is not None and known_length > instance["history_length"]:
        known_length, history = None, None  # cannot be ours: read it all
    return WorkflowTaskInput(
        workflow_id=instance["workflow_id"],
        run_id=str(instance["run_id"]),
        workflow_name=instance["workflow_name"],
        queue=instance["queue"],
        status=instance["status"],
        history=history if history is not None else get_history(item.instance_id, after=known_length or 0),
        inbox=[Event(**row) for row in inbox_rows],
        inbox_ids=inbox_ids,
        history_length=instance["history_length"],
        known_length=known_length,
    )


def _json_events(events: list[dict[str, Any]] | str) -> list[dict[str, Any]]:
    """Events aggregated with ``json_agg`` (timestamps arrive as ISO strings)."""
    rows = json.loads(events) if isinstance(events, str) else events
    for row in rows:
        # Not fromisoformat: before Python 3.11 it refuses the 1-5 fraction digits PostgreSQL writes.
        row["timestamp"] = parse_datetime(row["timestamp"])
    return rows


def _events_json(table: str, key: str, condition: str = "") -> str:
    """A subquery: the run's events in ``table`` as one JSON array, in ``key`` order."""
    fields = ", ".join(f"'{name}', {name}" for name in ("kind", "name", "task_id", "payload", "timestamp", key))
    return (
        f"(SELECT COALESCE(json_agg(json_build_object({fields}) ORDER BY {key}), '[]') "
        f"FROM {table} WHERE instance_id = run.id{condition})"
    )


_HISTORY_SQL = (
    f"SELECT {_events_json(HistoryEvent._meta.db_table, 'seq', ' AND seq > %s')} "
    f"FROM {WorkflowInstance._meta.db_table} run WHERE id = %s"
)
_LOAD_TASK_SQL = (
    "SELECT workflow_id, run_id, workflow_name, queue, status, history_length, "
    f"{_events_json(InboxEvent._meta.db_table, 'id')}, "
    f"{_events_json(HistoryEvent._meta.db_table, 'seq', ' AND seq > %s')} "
    f"FROM {WorkflowInstance._meta.db_table} run WHERE id = %s"
)
_LOAD_TASKS_SQL = (
    "SELECT run.id, workflow_id, run_id, workflow_name, queue, status, history_length, "
    f"{_events_json(InboxEvent._meta.db_table, 'id')}, "
    f"{_events_json(HistoryEvent._meta.db_table, 'seq', ' AND seq > k.after')} "
    f"FROM {WorkflowInstance._meta.db_table} run "
    "JOIN unnest(%s::bigint[], %s::integer[]) AS k (id, after) ON run.id = k.id"
)


@dataclasses.dataclass
class Eager:
    """Activities a worker takes at once from the commit that schedules them: leased to
    ``owner``, up to ``limit``, on ``queues``; they skip a claim round trip."""

    owner: str
    queues: Sequence[str]
    limit: int
    lease_seconds: float
    claims: list[Claim] = dataclasses.field(default_factory=list)
    # Beyond ``limit``: activities with neither a start-to-close nor a heartbeat timeout,
    # which may wait for a thread in the worker (no clock of theirs runs while they do).
    spare: int = 0


@dataclasses.dataclass
class TaskDecisions:
    """What one workflow task decided (see ``run_workflow_task``'s outcome)."""

    new_events: Sequence[Event]
    status: str
    vars: dict[str, Any]
    result: Any = None
    error: dict[str, Any] | None = None
    waiting_on: str | None = None


@dataclasses.dataclass
class TaskCompletion:
    """A workflow task's decisions for ``complete_workflow_tasks``, which sets ``committed``
    (they are written) or ``lost`` (the task is no longer ours: nothing of it was written).
    Neither: the run would close while an event it has not seen arrived, and the task was
    handed back to run again with it."""

    item: Claim
    decisions: TaskDecisions
    inbox_ids: Sequence[int]
    committed: bool = False
    lost: bool = False


def complete_workflow_task(
    item: Claim,
    *,
    new_events: Sequence[Event],
    inbox_ids: Sequence[int],
    status: str,
    vars: dict[str, Any],
    result: Any = None,
    error: dict[str, Any] | None = None,
    waiting_on: str | None = None,
    eager: Eager | None = None,
) -> bool:
    """Commit one workflow task's decisions atomically, or raise ``LeaseLost`` and write nothing.

    Returns False, having written nothing but the task's release, when the run would
    close while an event it has not seen arrived: the task runs again with it.
    """
    task = TaskCompletion(item, TaskDecisions(new_events, status, vars, result, error, waiting_on), inbox_ids)
    complete_workflow_tasks([task], eager=eager)
    if task.lost:
        raise lease_lost(item)
    return task.committed


def complete_workflow_tasks(tasks: Sequence[TaskCompletion], *, eager: Eager | None = None) -> None:
    """``complete_workflow_task`` for tasks of different runs, in one transaction: on
    PostgreSQL the runs are locked and their ordinary steps written with one statement
    each, whatever their number. A task that is no longer ours is marked ``lost`` and
    the others still commit."""
    closing_runs = [task.item.instance_id for task in tasks if task.decisions.status in CLOSING_STATUSES]
    with write_transaction():
        # A closing run tells its parent: the parents are locked with the runs, in id order,
        # not after them (a parent's id is lower: against another batch that would deadlock).
        runs = _lock_instances([*(task.item.instance_id for task in tasks), *_parent_ids(closing_runs)])
        writes: list[_TaskWrite] = []
        for task in tasks:
            instance = runs.get(task.item.instance_id)
            if instance is None:
                task.lost = True  # the run is gone (purged)
                continue
            item, decisions, now = task.item, task.decisions, instance.pop("now")
            closing = decisions.status in CLOSING_STATUSES
            # A run that would close while a signal it has not seen waits gets its task again.
            check_signals = closing and decisions.status != WorkflowStatus.CONTINUED_AS_NEW
            more_inbox, unseen_signal, fenced = _finish_workflow_task(item, task.inbox_ids, closing, check_signals)
            if unseen_signal or (more_inbox and not closing):
                # Events arrived while this task ran: leave the task claimable at once.
                if not _release_workflow_task(item, instance, now):
                    raise lease_lost(item)  # cannot be, under the run's lock: write nothing at all
                if unseen_signal:
                    continue
            elif not fenced:
                task.lost = True
                continue
            _commit_task(item.instance_id, instance, decisions, now, inbox_ids=task.inbox_ids, eager=eager, batch=writes)
            task.committed = True
        _write_batch(writes, eager)


def _parent_ids(instance_ids: Sequence[int]) -> list[int]:
    """The runs' parents (a run's parent never changes: read without a lock)."""
    if not instance_ids:
        return []
    return list(
        WorkflowInstance.objects.filter(pk__in=instance_ids, parent_id__isnull=False).values_list("parent_id", flat=True)
    )


def _finish_workflow_task(
    item: Claim, inbox_ids: Sequence[int], closing: bool, check_signals: bool
) -> tuple[bool, bool, bool]:
    """Under the run's lock: whether inbox events arrived that the task did not see, and
    (with ``check_signals``) whether a signal is among them. Unless one is, the task's
    inbox events are deleted, and its item too (and reported) when it is closing or saw
    everything: then ``(more, False, deleted)``. A task no longer ours writes nothing:
    ``(False, False, False)`` (a batch's other tasks still commit)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_FINISH_TASK_SQL, {
                "run": item.instance_id, "ids": list(inbox_ids), "check_signals": check_signals,
                "signal": EventKind.EVENT_RAISED.value, "closing": closing,
                "item": item.id, "owner": item.owner, "attempt": item.attempt,
            })
            more, unseen_signal, deleted = cursor.fetchone()
        return more, unseen_signal, bool(deleted)
    if not _fence(item).exists():
        return False, False, False
    unseen = InboxEvent.objects.filter(instance_id=item.instance_id).exclude(id__in=inbox_ids)
    if check_signals and unseen.filter(kind=EventKind.EVENT_RAISED).exists():
        return True, True, False
    more = unseen.exists()
    if inbox_ids:
        InboxEvent.objects.filter(id__in=inbox_ids).delete()
    deleted = _fence(item).delete()[0] if closing or not more else 0
    return more, False, bool(deleted)


_FINISH_TASK_SQL = f"""
    WITH held AS (
        SELECT EXISTS (
            SELECT 1 FROM {WorkItem._meta.db_table}
            WHERE id = %(item)s AND lease_owner = %(owner)s AND attempt = %(attempt)s
        ) AS held
    ), seen AS (
        SELECT (SELECT held FROM held) AND EXISTS (
            SELECT 1 FROM {InboxEvent._meta.db_table} WHERE instance_id = %(run)s AND NOT (id = ANY(%(ids)s))
        ) AS more,
        (SELECT held FROM held) AND %(check_signals)s AND EXISTS (
            SELECT 1 FROM {InboxEvent._meta.db_table}
            WHERE instance_id = %(run)s AND kind = %(signal)s AND NOT (id = ANY(%(ids)s))
        ) AS unseen_signal
    ), consumed AS (
        DELETE FROM {InboxEvent._meta.db_table}
        WHERE id = ANY(%(ids)s) AND (SELECT held FROM held) AND NOT (SELECT unseen_signal FROM seen)
    ), gone AS (
        DELETE FROM {WorkItem._meta.db_table}
        WHERE id = %(item)s AND lease_owner = %(owner)s AND attempt = %(attempt)s
        AND NOT (SELECT unseen_signal FROM seen) AND (%(closing)s OR NOT (SELECT more FROM seen))
        RETURNING 1
    )
    SELECT more, unseen_signal, (SELECT count(*) FROM gone) FROM seen
"""


def _commit_task(
    instance_id: int,
    instance: dict[str, Any],
    decisions: TaskDecisions,
    now: datetime.datetime,
    *,
    inbox_ids: Sequence[int] = (),
    eager: Eager | None = None,
    batch: list[_TaskWrite] | None = None,
) -> None:
    """Write a workflow task's decisions for the locked run (its task item is dealt with).

    With ``batch``, an ordinary step (the run stays open and starts no child) is added to
    it instead, for ``_write_batch`` to write with the other runs' in one statement."""
    new_events, status = decisions.new_events, decisions.status
    closing = status in CLOSING_STATUSES
    first_seq = instance["history_length"] + 1
    history = _history_rows(instance_id, first_seq, new_events)
    updates: dict[str, Any] = {
        "history_length": first_seq + len(new_events) - 1,
        "vars": decisions.vars,
        # A run suspended while this task ran stays suspended.
        "status": WorkflowStatus.SUSPENDED if instance["status"] == WorkflowStatus.SUSPENDED and not closing else status,
        "waiting_on": (decisions.waiting_on or "")[:500],
        "task_error": None,
        "updated_at": now,
    }
    if instance["started_at"] is None:
        updates["started_at"] = new_events[0].timestamp
    if closing:
        updates.update(result=decisions.result, error=decisions.error, closed_at=now)
        late: list[dict[str, Any]] = []
        if status == WorkflowStatus.CONTINUED_AS_NEW:
            # Signals and a cancel request that arrived while this task ran go to the next run.
            late = list(
                InboxEvent.objects.filter(
                    instance_id=instance_id, kind__in=(EventKind.EVENT_RAISED, EventKind.CANCEL_REQUESTED)
                ).exclude(id__in=inbox_ids).values("kind", "name", "payload")
            )
        # Outstanding activities and timers die with the run; late results find no item.
        WorkItem.objects.filter(instance_id=instance_id).delete()
        InboxEvent.objects.filter(instance_id=instance_id).delete()
        _write_task(instance_id, history, updates)
        if status == WorkflowStatus.CONTINUED_AS_NEW:
            _continue_as_new(instance_id, instance, new_events[-1].payload, late, now)
        else:
            _notify_parent(instance, status, decisions.result, decisions.error, now)
        # Children called in the closing task still start; their parent-close policy
        # applies right after (an abandoned child is how to fire and forget).
        _start_children(instance_id, instance, new_events, now, parent_open=False)
        notify.notify_closed(str(instance["run_id"]))
    else:
        canceled_timers = {e.task_id for e in new_events if e.kind == EventKind.TIMER_CANCELED}
        if canceled_timers:
            WorkItem.objects.filter(
                instance_id=instance_id, kind=WorkItemKind.TIMER, task_id__in=canceled_timers
            ).delete()
        # A timer started and canceled in this very task gets no work item.
        scheduled = [
            e for e in new_events if not (e.kind == EventKind.TIMER_STARTED and e.task_id in canceled_timers)
        ]
        items = _work_items_for(instance_id, instance, scheduled, now)
        leased = _lease_eagerly(items, eager, now)
        write = _TaskWrite(instance_id, instance, now, updates, history, items, leased, first_seq, new_events)
        if batch is not None and not any(e.kind == EventKind.CHILD_WORKFLOW_SCHEDULED for e in new_events):
            batch.append(write)
            return
        _write_task(instance_id, history, updates, items)
        _announce_work_items(items, leased, instance, now, eager)
        _start_children(instance_id, instance, new_events, now)
    _log_history(instance, first_seq, new_events)
    crash_point("before_task_commit")


@dataclasses.dataclass
class _TaskWrite:
    """A workflow task's writes that ``_commit_task`` left to ``_write_batch``."""

    instance_id: int
    instance: dict[str, Any]
    now: datetime.datetime
    updates: dict[str, Any]
    history: list[HistoryEvent]
    items: list[WorkItem]
    leased: list[WorkItem]
    first_seq: int
    new_events: Sequence[Event]


def _write_batch(writes: Sequence[_TaskWrite], eager: Eager | None) -> None:
    """Write batched workflow tasks: one statement for all runs whose updates match."""
    groups: dict[tuple[str, ...], list[_TaskWrite]] = {}
    for write in writes:
        groups.setdefault(tuple(write.updates), []).append(write)
    for group in groups.values():
        _write_tasks(
            [(write.instance_id, write.updates) for write in group],
            [row for write in group for row in write.history],
            [item for write in group for item in write.items],
        )
    for queue in sorted(set().union(*(_queues_to_wake(write.items) for write in writes))):
        notify.notify_work(queue)  # once a queue, not once a run
    for write in writes:
        _hand_over(write.leased, write.instance, write.now, eager)
        _log_history(write.instance, write.first_seq, write.new_events)
        crash_point("before_task_commit")


def _log_history(instance: dict[str, Any], first_seq: int, events: Sequence[Event]) -> None:
    for offset, event in enumerate(events):
        state_change(
            "history", workflow_id=instance["workflow_id"], run_id=str(instance["run_id"]), seq=first_seq + offset,
            kind=event.kind, name=event.name or None, task_id=event.task_id,
        )


def _lease_eagerly(items: list[WorkItem], eager: Eager | None, now: datetime.datetime) -> list[WorkItem]:
    """Lease new activities, up to ``eager.limit``, to ``eager.owner`` as they are inserted."""
    leased: list[WorkItem] = []
    if eager is None or not connection.features.can_return_rows_from_bulk_insert:
        return leased
    for item in items:
        if item.kind != WorkItemKind.ACTIVITY or item.parked_at is not None or item.queue not in eager.queues:
            continue
        # The room is shared by every task of a batch.
        if eager.limit > 0:
            eager.limit -= 1
        elif eager.spare > 0 and not _attempt_clock_runs(item.payload.get("options") or {}):
            eager.spare -= 1
        else:
            continue
        item.lease_owner, item.attempt, item.claimed_at = eager.owner, 1, now
        item.lease_expires_at = now + _seconds(eager.lease_seconds)
        leased.append(item)
    return leased


def _attempt_clock_runs(options: dict[str, Any]) -> bool:
    """Whether an attempt has a timeout that starts with its claim."""
    return options.get("start_to_close_timeout") is not None or options.get("heartbeat_timeout") is not None


def _announce_work_items(
    items: list[WorkItem], leased: list[WorkItem], instance: dict[str, Any], now: datetime.datetime,
    eager: Eager | None,
) -> None:
    """Wake workers for the inserted unleased work, and hand the leased activities to ``eager``."""
    for queue in sorted(_queues_to_wake(items)):
        notify.notify_work(queue)
    _hand_over(leased, instance, now, eager)


def _queues_to_wake(items: Iterable[WorkItem]) -> set[str]:
    return {item.queue for item in items if item.lease_owner is None and item.kind != WorkItemKind.TIMER}


def _hand_over(leased: list[WorkItem], instance: dict[str, Any], now: datetime.datetime, eager: Eager | None) -> None:
    """Give the activities leased as they were inserted to ``eager``, once committed."""
    if not leased or eager is None:
        return
    claims = [
        Claim(
            id=item.pk, kind=item.kind, instance_id=item.instance_id, queue=item.queue, name=item.name,
            task_id=item.task_id, payload=item.payload, attempt=1, owner=eager.owner,
            claimed_at=now, lease_expires_at=item.lease_expires_at, created_at=now,
            workflow_id=instance["workflow_id"], run_id=str(instance["run_id"]),
        )
        for item in leased
    ]
    _cap_leases(claims)
    _log_claims(claims, eager=True)
    # Only once committed: a rolled-back schedule must not run anything.
    transaction.on_commit(lambda: eager.claims.extend(claims))


def _release_workflow_task(item: Claim, instance: dict[str, Any], now: datetime.datetime) -> int:
    """Hand a claimed workflow task back, claimable at once (or parked if the run is suspended)."""
    notify.notify_work(item.queue)
    return _fence(item).update(
        lease_owner=None, lease_expires_at=None, due_at=now, failures=0, last_error=None,
        parked_at=_parked_at(instance, now), dispatched_at=None,
    )


def _work_items_for(
    instance_id: int, instance: dict[str, Any], events: Iterable[Event], now: datetime.datetime
) -> list[WorkItem]:
    items = []
    for event in events:
        if event.kind == EventKind.ACTIVITY_SCHEDULED:
            options = event.payload.get("options") or {}
            items.append(
                WorkItem(
                    kind=WorkItemKind.ACTIVITY,
                    instance_id=instance_id,
                    queue=options.get("queue") or instance["queue"],
                    name=event.name,
                    task_id=event.task_id,
                    payload={"args": event.payload["args"], "kwargs": event.payload["kwargs"], "options": options},
                    due_at=now,
                    created_at=now,
                    parked_at=_parked_at(instance, now),
                )
            )
        elif event.kind == EventKind.TIMER_STARTED:
            items.append(
                WorkItem(
                    kind=WorkItemKind.TIMER,
                    instance_id=instance_id,
                    queue=instance["queue"],
                    task_id=event.task_id,
                    due_at=datetime.datetime.fromisoformat(event.payload["fire_at"]),
                    created_at=now,
                )
            )
    return items


def _start_children(
    parent_id: int, parent: dict[str, Any], events: Iterable[Event], now: datetime.datetime, *, parent_open: bool = True
) -> None:
    for event in events:
        if event.kind != EventKind.CHILD_WORKFLOW_SCHEDULED:
            continue
        spec = event.payload
        try:
            with transaction.atomic():  # a savepoint: a clash must not undo the parent's commit
                _apply_id_reuse_policy(spec["workflow_id"], IdReusePolicy.ALLOW_DUPLICATE, now)
                _create_run(
                    workflow_id=spec["workflow_id"],
                    workflow_name=event.name,
                    queue=spec.get("queue") or parent["queue"],
                    args=spec["args"],
                    kwargs=spec["kwargs"],
                    now=now,
                    parent_id=parent_id,
                    parent_task_id=event.task_id,
                    parent_close_policy=spec.get("parent_close_policy") or ParentClosePolicy.TERMINATE.value,
                )
        except (WorkflowAlreadyExists, IntegrityError):
            if not parent_open:
                continue  # nobody is left to tell
            _deliver(
                parent_id,
                parent,
                Event(
                    kind=EventKind.CHILD_WORKFLOW_FAILED,
                    timestamp=now,
                    name=event.name,
                    task_id=event.task_id,
                    payload={
                        "status": "not_started",
                        "workflow_id": spec["workflow_id"],
                        "error": {
                            "type": "django_durable.exceptions.WorkflowAlreadyExists",
                            "message": f"Child workflow {spec['workflow_id']!r} could not start: a run with "
                            "that id is already open.",
                        },
                    },
                ),
            )


def _notify_parent(
    child: dict[str, Any], status: str, result: Any, error: dict[str, Any] | None, now: datetime.datetime
) -> None:
    """A child closed: tell its parent run, if that is still open. Locks child, then parent."""
    if child["parent_id"] is None:
        return
    parent = _lock_instance(child["parent_id"])
    if parent is None or parent["status"] not in OPEN_STATUSES:
        return
    ids = {"workflow_id": child["workflow_id"], "run_id": str(child["run_id"])}
    if status == WorkflowStatus.COMPLETED:
        event = Event(
            kind=EventKind.CHILD_WORKFLOW_COMPLETED, timestamp=now, name=child["workflow_name"],
            task_id=child["parent_task_id"], payload={"result": result, **ids},
        )
    else:
        event = Event(
            kind=EventKind.CHILD_WORKFLOW_FAILED, timestamp=now, name=child["workflow_name"],
            task_id=child["parent_task_id"], payload={"error": error, "status": status, **ids},
        )
    _deliver(child["parent_id"], parent, event)


def _continue_as_new(
    instance_id: int,
    instance: dict[str, Any],
    request: dict[str, Any],
    late: Sequence[dict[str, Any]],
    now: datetime.datetime,
) -> None:
    """Start the next run of a run that continued as new (same transaction, same workflow id)."""
    successor = _create_run(
        workflow_id=instance["workflow_id"],
        workflow_name=instance["workflow_name"],
        queue=instance["queue"],
        args=request["args"],
        kwargs=request["kwargs"],
        now=now,
        continued_from_id=instance_id,
        parent_id=instance["parent_id"],
        parent_task_id=instance["parent_task_id"],
        parent_close_policy=instance["parent_close_policy"],
    )
    carried = [
        {"kind": EventKind.EVENT_RAISED, "name": event["name"], "payload": event["payload"]}
        for event in request.get("events", ())
    ]
    InboxEvent.objects.bulk_create(
        InboxEvent(instance_id=successor.pk, kind=event["kind"], name=event["name"], payload=event["payload"], timestamp=now)
        for event in [*carried, *late]
    )
    if any(event["kind"] == EventKind.CANCEL_REQUESTED for event in late):
        WorkflowInstance.objects.filter(pk=successor.pk).update(cancel_requested_at=now)


def continuation_of(instance_id: int) -> WorkflowInstance | None:
    """The run that ``instance_id`` continued as, if it continued as new."""
    return WorkflowInstance.objects.filter(continued_from_id=instance_id).first()


def last_of_chain(instance: WorkflowInstance) -> WorkflowInstance:
    """The run a chain of continue-as-new runs starting at ``instance`` has reached."""
    while instance.status == WorkflowStatus.CONTINUED_AS_NEW:
        successor = continuation_of(instance.pk)
        if successor is None:  # purged
            break
        instance = successor
    return instance


def fail_workflow_task(
    item: Claim,
    error: dict[str, Any],
    *,
    max_failures: int,
    backoff: float,
    backoff_max: float,
    expired_only: bool = False,
) -> bool:
    """Record an engine-level failure; back off, or park after ``max_failures``. Returns parked.
    With ``expired_only`` (the reaper), a run locked by someone else is skipped (``LeaseLost``)."""
    with write_transaction():
        instance = _lock_instance(item.instance_id, skip_locked=expired_only)
        if instance is None:
            raise LeaseLost(f"run of work item {item.id} no longer exists")
        now = db_now()
        failures = item.failures + 1
        parked = failures >= max_failures
        delay = min(backoff * 2 ** (failures - 1), backoff_max)
        fence = _fence(item).filter(lease_expires_at__lte=now) if expired_only else _fence(item)
        fenced = fence.update(
            lease_owner=None,
            lease_expires_at=None,
            failures=failures,
            last_error=error,
            due_at=now + _seconds(delay),
            parked_at=now if parked else _parked_at(instance, now),
            dispatched_at=None,
        )
        if not fenced:
            raise lease_lost(item)
        WorkflowInstance.objects.filter(pk=item.instance_id).update(task_error=error, updated_at=now)
        state_change(
            "task_failed", workflow_id=instance["workflow_id"], run_id=str(instance["run_id"]), item=item.id,
            failures=failures, parked=parked, retry_at=None if parked else now + _seconds(delay),
            error_type=error.get("type"), error=error.get("message"),
        )
    return parked


def unpark_workflow_task(instance_id: int) -> bool:
    """Make a parked (or backing-off) workflow task claimable now, e.g. after a code fix."""
    with write_transaction():
        instance = _lock_instance(instance_id)
        if instance is None or instance["status"] == WorkflowStatus.SUSPENDED:
            return False  # resume() releases a suspended run's work
        notify.notify_work(instance["queue"])
        unparked = bool(
            WorkItem.objects.filter(instance_id=instance_id, kind=WorkItemKind.WORKFLOW, lease_owner__isnull=True)
            .update(parked_at=None, failures=0, due_at=db_now(), dispatched_at=None)
        )
        if unparked:
            state_change("task_unparked", workflow_id=instance["workflow_id"], run_id=str(instance["run_id"]))
        return unparked


# -- activities and timers --------------------------------------------------------


def _deliver(instance_id: int, instance: dict[str, Any], event: Event) -> None:
    """Put ``event`` in the run's inbox and make sure a workflow task will read it.

    Must run under the instance's lock. An existing workflow task is left as it
    is: due, running (its commit sees the new event), backing off or parked.
    """
    InboxEvent.objects.create(
        instance_id=instance_id,
        kind=event.kind,
        name=event.name,
        task_id=event.task_id,
        payload=event.payload,
        timestamp=event.timestamp,
    )
    # At most one workflow task per run (a partial unique index): an existing one stays.
    WorkItem.objects.bulk_create(
        [
            WorkItem(
                kind=WorkItemKind.WORKFLOW,
                instance_id=instance_id,
                queue=instance["queue"],
                name=instance["workflow_name"],
                due_at=event.timestamp,
                created_at=event.timestamp,
                parked_at=_parked_at(instance, event.timestamp),
            )
        ],
        ignore_conflicts=True,
    )
    notify.notify_work(instance["queue"])
    state_change(
        "inbox", workflow_id=instance["workflow_id"], run_id=str(instance["run_id"]), kind=event.kind,
        name=event.name or None, task_id=event.task_id,
    )


def _attempt_fence(item: Claim, now: datetime.datetime, *, live_only: bool) -> Any:
    """The item while it still is this attempt; with ``live_only`` also not timed out
    (a lease that has expired but is not reaped yet is no longer pending)."""
    fence = _fence(item)
    if live_only:
        fence = fence.filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__gt=now))
    return fence


def _finish_attempt(item: Claim, instance: dict[str, Any], now: datetime.datetime, *, live_only: bool) -> bool:
    """Delete the attempt's item if it still is this attempt (else False), and set the
    locked run's ``has_workflow_task`` and ``has_inbox`` (on PostgreSQL see ``_finish_attempts``)."""
    deleted, _ = _attempt_fence(item, now, live_only=live_only).delete()
    instance["has_workflow_task"] = WorkItem.objects.filter(
        instance_id=item.instance_id, kind=WorkItemKind.WORKFLOW
    ).exists()
    instance["has_inbox"] = InboxEvent.objects.filter(instance_id=item.instance_id).exists()
    return bool(deleted)


_WORK_ITEMS = WorkItem._meta.db_table
_INBOX = InboxEvent._meta.db_table


def _finish_attempts(items: Sequence[Claim], runs: dict[int, dict[str, Any]], *, live_only: bool) -> set[int]:
    """``_finish_attempt`` for attempts of the locked ``runs`` (each run's busy flags
    set): the ids of the items deleted, on PostgreSQL in one statement."""
    if not items:
        return set()
    if clock_override is not None or connection.vendor != "postgresql":
        return {
            item.id for item in items
            if _finish_attempt(item, runs[item.instance_id], runs[item.instance_id]["now"], live_only=live_only)
        }
    live = " AND (w.lease_expires_at IS NULL OR w.lease_expires_at > CURRENT_TIMESTAMP)" if live_only else ""
    # After the runs' locks were granted: this statement's snapshot sees what their
    # previous holders committed (a subquery of the locking SELECT would not).
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH gone AS (DELETE FROM {_WORK_ITEMS} w USING json_to_recordset(%s::json) "
            f"AS a (id bigint, owner text, attempt integer) "
            f"WHERE w.id = a.id AND w.lease_owner = a.owner AND w.attempt = a.attempt"
            f"{live} RETURNING w.id, w.instance_id) "
            f"SELECT id, instance_id, EXISTS (SELECT 1 FROM {_WORK_ITEMS} WHERE instance_id = gone.instance_id "
            f"AND kind = %s), EXISTS (SELECT 1 FROM {_INBOX} WHERE instance_id = gone.instance_id) FROM gone",
            [_json_records([{"id": item.id, "owner": item.owner, "attempt": item.attempt} for item in items]),
             WorkItemKind.WORKFLOW.value],
        )
        finished = set()
        for item_id, instance_id, has_workflow_task, has_inbox in cursor.fetchall():
            runs[instance_id].update(has_workflow_task=has_workflow_task, has_inbox=has_inbox)
            finished.add(item_id)
    return finished


def attempt_deadline(item: Claim, heartbeat_at: datetime.datetime | None) -> datetime.datetime | None:
    """When this attempt times out: its start-to-close or heartbeat timeout, or None."""
    options = item.payload.get("options") or {}
    deadlines = []
    if options.get("start_to_close_timeout") is not None:
        deadlines.append(item.claimed_at + _seconds(options["start_to_close_timeout"]))
    if options.get("heartbeat_timeout") is not None:
        deadlines.append((heartbeat_at or item.claimed_at) + _seconds(options["heartbeat_timeout"]))
    if options.get("schedule_to_close_timeout") is not None:
        deadlines.append(item.created_at + _seconds(options["schedule_to_close_timeout"]))
    return min(deadlines, default=None)


@dataclasses.dataclass
class Continuation:
    """A run whose next workflow task may run inside an activity's completion: it is
    running, has no workflow task and no inbox, and its row is locked."""

    instance_id: int
    workflow_id: str
    run_id: str
    workflow_name: str
    queue: str
    history_length: int
    now: datetime.datetime
    inbox: list[Event]


@dataclasses.dataclass
class Completion:
    """An attempt's result for ``complete_activities``, which sets ``ran`` (the run's next
    workflow task ran in the same transaction, see ``continue_run``) or ``lost`` (the
    attempt is no longer ours: nothing of it was written)."""

    item: Claim
    result: Any
    continue_run: Callable[[Continuation], TaskDecisions | None] | None = None
    ran: bool = False
    lost: bool = False


def complete_activity(
    item: Claim,
    result: Any,
    *,
    live_only: bool = False,
    continue_run: Callable[[Continuation], TaskDecisions | None] | None = None,
    eager: Eager | None = None,
) -> bool:
    """Record the attempt's result, or raise ``LeaseLost`` and write nothing.

    With ``continue_run`` (a worker that holds the run's code), the run's next workflow
    task may run right here, in the same transaction: ``continue_run`` gets the result
    as the task's inbox and returns the task's decisions, or None to leave the result
    to an ordinary workflow task. Returns whether the task ran here. It must not raise.
    """
    completion = Completion(item, result, continue_run)
    complete_activities([completion], live_only=live_only, eager=eager)
    if completion.lost:
        raise lease_lost(item)
    return completion.ran


def complete_activities(
    completions: Sequence[Completion], *, live_only: bool = False, eager: Eager | None = None
) -> None:
    """``complete_activity`` for many attempts, in one transaction (group commit): on
    PostgreSQL the runs are locked, the attempts deleted and the ordinary steps written
    with one statement each, whatever their number. Results of one run make one step
    (the first completion's ``continue_run`` gets them all, in order). An attempt that
    is no longer ours is marked ``lost`` and the others still commit."""
    with write_transaction():
        runs = _lock_instances(completion.item.instance_id for completion in completions)
        finished = _finish_attempts(
            [completion.item for completion in completions if completion.item.instance_id in runs],
            runs, live_only=live_only,
        )
        by_run: dict[int, list[Completion]] = {}
        for completion in completions:
            if completion.item.id in finished:
                by_run.setdefault(completion.item.instance_id, []).append(completion)
            else:
                completion.lost = True
        writes: list[_TaskWrite] = []
        for instance_id, group in by_run.items():
            instance = runs[instance_id]
            now = instance.pop("now")
            events = []
            for completion in group:
                crash_point("before_activity_commit")
                item = completion.item
                events.append(Event(
                    kind=EventKind.ACTIVITY_COMPLETED,
                    timestamp=now,
                    name=item.name,
                    task_id=item.task_id,
                    payload={"result": completion.result, "attempt": item.attempt},
                ))
            continue_run = group[0].continue_run
            if (
                continue_run is not None
                and instance["status"] == WorkflowStatus.RUNNING
                and not instance["has_workflow_task"]
                and not instance["has_inbox"]
            ):
                decisions = continue_run(
                    Continuation(
                        instance_id=instance_id, workflow_id=instance["workflow_id"],
                        run_id=str(instance["run_id"]), workflow_name=instance["workflow_name"],
                        queue=instance["queue"], history_length=instance["history_length"], now=now, inbox=events,
                    )
                )
                if decisions is not None:
                    _commit_task(instance_id, instance, decisions, now, eager=eager, batch=writes)
                    for completion in group:
                        completion.ran = True
                    continue
            for event in events:
                _deliver(instance_id, instance, event)
        _write_batch(writes, eager)


def await_completion(item: Claim, heartbeat_at: datetime.datetime | None) -> None:
    """The attempt's function raised ResultPending: it is finished later, by token.

    The worker stops renewing its lease; from now on only the attempt's own
    timeouts (start-to-close, heartbeat) bound it.
    """
    updated = _fence(item).update(awaiting_completion=True, lease_expires_at=attempt_deadline(item, heartbeat_at))
    if not updated:
        raise lease_lost(item)


def record_heartbeat(
    item: Claim, details: Any, *, lease_seconds: float, live_only: bool = False
) -> datetime.datetime:
    """Keep ``details`` for the next attempt and push out the attempt's heartbeat deadline."""
    with write_transaction():
        now = db_now()
        fence = _attempt_fence(item, now, live_only=live_only)
        # A heartbeat without details keeps what an earlier one reported.
        updates = {"heartbeat_at": now} if details is None else {"heartbeat_details": details, "heartbeat_at": now}
        if not fence.update(**updates):
            raise lease_lost(item)
        deadline = attempt_deadline(item, now)
        fence.filter(awaiting_completion=True).update(lease_expires_at=deadline)
        renewed = now + _seconds(lease_seconds)
        fence.filter(awaiting_completion=False).update(
            lease_expires_at=min(renewed, deadline) if deadline else renewed
        )
    return now


def pending_attempt(token: TaskToken) -> Claim:
    """The activity attempt a task token names, while it is leased; else ActivityNotPending."""
    row = _claim_rows(WorkItem.objects.filter(id=token.item_id, kind=WorkItemKind.ACTIVITY), "lease_owner").first()
    if (
        row is None
        or str(row["run_id"]) != token.run_id
        or row["task_id"] != token.task_id
        or row["attempt"] != token.attempt
        or row["lease_owner"] is None
    ):
        raise ActivityNotPending()
    return Claim(owner=row.pop("lease_owner"), **{**row, "run_id": str(row["run_id"])})


def current_attempt_token(workflow_id: str, activity_id: str, run_id: str | None = None) -> TaskToken:
    """The token of an activity's current attempt, by workflow id and activity id."""
    instance = get_instance(workflow_id, run_id)
    try:
        task_id = int(activity_id)
    except (TypeError, ValueError):
        raise ActivityNotPending(f"Workflow {workflow_id!r} has no activity {activity_id!r}.") from None
    row = (
        WorkItem.objects.filter(instance=instance, kind=WorkItemKind.ACTIVITY, task_id=task_id)
        .values("id", "attempt")
        .first()
    )
    if row is None or row["attempt"] == 0:
        raise ActivityNotPending(f"Activity {activity_id} of workflow {workflow_id!r} is not pending.")
    return TaskToken(item_id=row["id"], run_id=str(instance.run_id), task_id=task_id, attempt=row["attempt"])


def terminate(workflow_id: str, run_id: str | None, reason: str) -> None:
    """Close an open run at once: no workflow code runs; outstanding work is dropped."""
    with write_transaction():
        instance_id, instance = _lock_open_run(workflow_id, run_id)
        _terminate_locked(instance_id, instance, reason, db_now())


def _terminate_locked(instance_id: int, instance: dict[str, Any], reason: str, now: datetime.datetime) -> None:
    error = {"type": "django_durable.Terminated", "message": reason}
    seq = _append_event(instance_id, instance, Event(
        kind=EventKind.WORKFLOW_TERMINATED, payload={"reason": reason}, timestamp=now
    ))
    WorkItem.objects.filter(instance_id=instance_id).delete()
    InboxEvent.objects.filter(instance_id=instance_id).delete()
    WorkflowInstance.objects.filter(pk=instance_id).update(
        status=WorkflowStatus.TERMINATED, error=error, history_length=seq, closed_at=now,
        updated_at=now, waiting_on="",
    )
    _notify_parent(instance, WorkflowStatus.TERMINATED, None, error, now)
    notify.notify_closed(str(instance["run_id"]))


def _append_event(instance_id: int, instance: dict[str, Any], event: Event) -> int:
    """Write one event straight into the history of a locked run; returns its seq."""
    seq = instance["history_length"] + 1
    _append_history(instance_id, seq, [event])
    _log_history(instance, seq, [event])
    instance["history_length"] = seq
    return seq


# -- control verbs ------------------------------------------------------------------


def signal(workflow_id: str, run_id: str | None, name: str, payload: Any) -> None:
    """Put an external event in the run's inbox; waits consume them in arrival order."""
    with write_transaction():
        instance_id, instance = _lock_open_run(workflow_id, run_id)
        _deliver(
            instance_id, instance,
            Event(kind=EventKind.EVENT_RAISED, timestamp=db_now(), name=name, payload={"payload": payload}),
        )


def request_cancel(workflow_id: str, run_id: str | None) -> None:
    """Ask the run to cancel: its code sees ``CancelledError`` at its next durable call."""
    with write_transaction():
        instance_id, instance = _lock_open_run(workflow_id, run_id)
        _request_cancel_locked(instance_id, instance, db_now())


def _request_cancel_locked(instance_id: int, instance: dict[str, Any], now: datetime.datetime) -> None:
    if instance["cancel_requested_at"] is not None:
        return  # asked already
    WorkflowInstance.objects.filter(pk=instance_id).update(cancel_requested_at=now, updated_at=now)
    _deliver(instance_id, instance, Event(kind=EventKind.CANCEL_REQUESTED, timestamp=now))


def cancel_requested(instance_id: int) -> bool:
    return WorkflowInstance.objects.filter(pk=instance_id, cancel_requested_at__isnull=False).exists()


def suspend(workflow_id: str, run_id: str | None, reason: str = "") -> None:
    """Stop the run's progress: its workflow tasks and activities not yet started wait
    (parked) until ``resume``; events that arrive meanwhile are kept."""
    with write_transaction():
        instance_id, instance = _lock_open_run(workflow_id, run_id)
        if instance["status"] == WorkflowStatus.SUSPENDED:
            raise WorkflowStateError(f"Workflow {workflow_id!r} is already suspended.")
        now = db_now()
        seq = _append_event(
            instance_id, instance,
            Event(kind=EventKind.EXECUTION_SUSPENDED, payload={"reason": reason}, timestamp=now),
        )
        WorkItem.objects.filter(
            instance_id=instance_id, kind__in=(WorkItemKind.WORKFLOW, WorkItemKind.ACTIVITY),
            lease_owner__isnull=True, parked_at__isnull=True,
        ).update(parked_at=now)
        WorkflowInstance.objects.filter(pk=instance_id).update(
            status=WorkflowStatus.SUSPENDED, history_length=seq, updated_at=now
        )


def resume(workflow_id: str, run_id: str | None) -> None:
    """Let a suspended run go on from where it stood."""
    with write_transaction():
        instance_id, instance = _lock_open_run(workflow_id, run_id)
        if instance["status"] != WorkflowStatus.SUSPENDED:
            raise WorkflowStateError(f"Workflow {workflow_id!r} is not suspended (it is {instance['status']}).")
        now = db_now()
        seq = _append_event(instance_id, instance, Event(kind=EventKind.EXECUTION_RESUMED, timestamp=now))
        # A workflow task parked for failing before the suspension gets one more try.
        WorkItem.objects.filter(instance_id=instance_id, parked_at__isnull=False).update(parked_at=None, dispatched_at=None)
        notify.notify_work(instance["queue"])
        WorkflowInstance.objects.filter(pk=instance_id).update(
            status=WorkflowStatus.RUNNING if instance["started_at"] else WorkflowStatus.PENDING,
            history_length=seq, updated_at=now,
        )


def purge(workflow_id: str, run_id: str | None) -> int:
    """Delete closed runs with their history: the given run, or every run of the id.
    Refuses (``WorkflowStillOpen``) while one of them is open. Returns the runs deleted."""
    runs = WorkflowInstance.objects.filter(workflow_id=workflow_id)
    if run_id is not None:
        runs = runs.filter(run_id=run_id)
    for parent_id in runs.exclude(status__in=OPEN_STATUSES).values_list("pk", flat=True):
        # Settle the children's parent-close policy, then unlink each under its own lock:
        # the delete's SET_NULL would lock them after their parent, against the lock order.
        apply_parent_close_policies(parent_id=parent_id)
        for child_id in WorkflowInstance.objects.filter(parent_id=parent_id).values_list("pk", flat=True):
            with write_transaction():
                _lock_instance(child_id)
                WorkflowInstance.objects.filter(pk=child_id).update(parent=None)
    with write_transaction():
        ids = list(runs.select_for_update().values_list("pk", "status"))
        if not ids:
            raise WorkflowNotFound(f"No workflow with id {workflow_id!r}" + (f" and run {run_id}." if run_id else "."))
        if any(status in OPEN_STATUSES for _, status in ids):
            raise WorkflowStillOpen(f"Workflow {workflow_id!r} is still open; terminate or cancel it first.")
        WorkflowInstance.objects.filter(pk__in=[pk for pk, _ in ids]).delete()
        state_change("purged", workflow_id=workflow_id, run_id=run_id, runs=len(ids))
    return len(ids)


def rerun(workflow_id: str, run_id: str | None, from_seq: int, new_workflow_id: str | None = None) -> WorkflowInstance:
    """A new run whose history is events ``1 .. from_seq - 1`` of a closed run: the
    workflow goes on from just before event ``from_seq`` under the current code."""
    source = get_instance(workflow_id, run_id)
    if source.is_open:
        raise WorkflowStillOpen(f"Workflow {workflow_id!r} is still open; only a closed run can be rerun.")
    if not 2 <= from_seq <= source.history_length:
        raise WorkflowStateError(
            f"Cannot rerun from event {from_seq}: pick an event between 2 and {source.history_length}."
        )
    prefix = [Event(**row) for row in source.history.filter(seq__lt=from_seq).values(*EVENT_FIELDS)]
    target_id = new_workflow_id or workflow_id
    try:
        with write_transaction():
            now = db_now()
            _apply_id_reuse_policy(target_id, IdReusePolicy.ALLOW_DUPLICATE, now)
            instance = _create_run(
                workflow_id=target_id, workflow_name=source.workflow_name, queue=source.queue,
                args=source.input.get("args", []), kwargs=source.input.get("kwargs", {}),
                now=now, history=prefix, rerun_of=source, rerun_from_seq=from_seq,
                started_at=source.started_at if len(prefix) > 1 else None,
            )
            locked = _lock_instance(instance.pk)
            assert locked is not None
            outstanding = _outstanding_commands(prefix)
            WorkItem.objects.bulk_create(_work_items_for(instance.pk, locked, outstanding, now))
            _start_children(instance.pk, locked, outstanding, now)
    except IntegrityError:
        # The new run refers to its source: a purge or prune that deleted the source
        # meanwhile fails the commit too, and an open run under the id is not the cause.
        if not WorkflowInstance.objects.filter(pk=source.pk).exists():
            raise WorkflowNotFound(
                f"Run {source.run_id} of workflow {workflow_id!r} was purged while it was being rerun."
            ) from None
        raise WorkflowAlreadyExists(f"Workflow {target_id!r} is already running.") from None
    return instance


def _outstanding_commands(history: Sequence[Event]) -> list[Event]:
    """Commands in ``history`` that nothing in it answers (to be issued again)."""
    answered = {
        event.task_id for event in history if event.kind in COMPLETION_KINDS or event.kind == EventKind.TIMER_CANCELED
    }
    return [event for event in history if event.kind in COMMAND_KINDS and event.task_id not in answered]


def _has_open_children(parent_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(_OPEN_CHILDREN_SQL, [parent_id, *map(str, OPEN_STATUSES)])
        return cursor.fetchone() is not None


_OPEN_CHILDREN_SQL = (
    f"SELECT 1 FROM {WorkflowInstance._meta.db_table} WHERE parent_id = %s "
    f"AND status IN ({', '.join(['%s'] * len(OPEN_STATUSES))}) LIMIT 1"
)


def apply_parent_close_policies(*, parent_id: int | None = None, limit: int = 100) -> int:
    """Terminate, or ask to cancel, open children whose parent has closed (by their policy).

    Runs after a parent closes and periodically, each child in its own transaction,
    so that a parent never locks its children (children lock their parent).
    """
    orphans = (
        WorkflowInstance.objects.filter(status__in=OPEN_STATUSES, parent__isnull=False)
        .exclude(parent__status__in=OPEN_STATUSES)
        .filter(
            Q(parent_close_policy=ParentClosePolicy.TERMINATE.value)
            | Q(parent_close_policy=ParentClosePolicy.CANCEL.value, cancel_requested_at__isnull=True)
        )
    )
    if parent_id is not None:
        if not _has_open_children(parent_id):
            return 0  # most runs: one indexed lookup instead of compiling the query above on every close
        orphans = orphans.filter(parent_id=parent_id)
    handled = 0
    for child_id in list(orphans.values_list("pk", flat=True)[:limit]):
        with write_transaction():
            # The periodic sweep (every worker's loop) skips a busy child; the next sweep settles it.
            child = _lock_instance(child_id, skip_locked=parent_id is None)
            if child is None or child["status"] not in OPEN_STATUSES:
                continue
            now = db_now()
            if child["parent_close_policy"] == ParentClosePolicy.TERMINATE.value:
                _terminate_locked(child_id, child, "its parent workflow closed (parent_close_policy=terminate)", now)
            else:
                _request_cancel_locked(child_id, child, now)
            handled += 1
    return handled


def fail_activity(
    item: Claim, failure: dict[str, Any], *, retryable: bool = True, live_only: bool = False
) -> datetime.datetime | None:
    """Record a failed attempt: schedule the next one by the retry policy, or fail the
    activity for good. Returns when the retry is due, or None when it gave up."""
    with write_transaction():
        instance = _lock_instance(item.instance_id)
        if instance is None:
            raise lease_lost(item)
        now = db_now()
        fence = _attempt_fence(item, now, live_only=live_only)
        return _fail_attempt(item, fence, instance, failure, retryable=retryable, now=now)


def fail_late_attempt(item: Claim) -> bool:
    """Fail, without running it, an attempt claimed after its schedule-to-close
    deadline: with the previous attempt's error (a retry due just before the deadline
    was claimed just after it), or a TimeoutError when no attempt ever started.
    Returns False (and writes nothing) when the attempt is not late."""
    limit = (item.payload.get("options") or {}).get("schedule_to_close_timeout")
    if limit is None or item.claimed_at < item.created_at + _seconds(limit):
        return False
    with write_transaction():
        instance = _lock_instance(item.instance_id)
        if instance is None:
            raise lease_lost(item)
        now = db_now()
        fence = _fence(item)
        last_error = fence.values_list("last_error", flat=True).first()
        if not fence.delete()[0]:
            raise lease_lost(item)
        if item.attempt > 1 and last_error:
            attempt = item.attempt - 1
            failure = {
                **last_error,
                "message": f"{last_error.get('message', '')} (no retry: schedule_to_close_timeout of {limit}s reached)",
            }
        else:
            attempt = item.attempt
            failure = {
                "type": "django_durable.exceptions.TimeoutError",
                "message": f"activity {item.name!r} reached its schedule_to_close_timeout of {limit}s "
                           f"before attempt {item.attempt} started",
                "mro": ["TimeoutError"],
            }
        _deliver_activity_failure(item, instance, failure, attempt, now)
    return True


def _fail_attempt(
    item: Claim,
    fence: Any,
    instance: dict[str, Any],
    failure: dict[str, Any],
    *,
    retryable: bool,
    now: datetime.datetime,
) -> datetime.datetime | None:
    options = item.payload.get("options") or {}
    policy = RetryPolicy.from_json(options["retry"]) if options.get("retry") else RetryPolicy()
    retry_at = None
    if retryable and policy.allows_retry(item.attempt, failure.get("type", ""), tuple(failure.get("mro", ()))):
        retry_at = now + _seconds(policy.delay(item.attempt))
        limit = options.get("schedule_to_close_timeout")
        if limit is not None and retry_at >= item.created_at + _seconds(limit):
            retry_at = None
            failure = {
                **failure,
                "message": f"{failure.get('message', '')} (no retry: schedule_to_close_timeout of {limit}s reached)",
            }
    if retry_at is not None:
        applied = fence.update(
            lease_owner=None, lease_expires_at=None, due_at=retry_at, last_error=failure,
            parked_at=_parked_at(instance, now), dispatched_at=None,
        )
    else:
        applied, _ = fence.delete()
    if not applied:
        raise lease_lost(item)
    if retry_at is not None:
        state_change(
            "retry_scheduled", workflow_id=item.workflow_id, run_id=item.run_id, name=item.name, task_id=item.task_id,
            item=item.id, attempt=item.attempt, retry_at=retry_at, error_type=failure.get("type"),
            error=failure.get("message"),
        )
        return retry_at
    _deliver_activity_failure(item, instance, failure, item.attempt, now)
    return None


def _deliver_activity_failure(
    item: Claim, instance: dict[str, Any], failure: dict[str, Any], attempt: int, now: datetime.datetime
) -> None:
    """The activity failed for good (its ``attempt`` was the last): tell the run."""
    event = Event(
        kind=EventKind.ACTIVITY_FAILED, timestamp=now, name=item.name, task_id=item.task_id,
        payload={"error": failure, "attempt": attempt},
    )
    _deliver(item.instance_id, instance, event)


def fire_due_timers(*, queues: Sequence[str], limit: int) -> int:
    """Deliver ``TimerFired`` for due timers; each in its own transaction under its run's lock."""
    if connection.vendor == "postgresql" and clock_override is None:
        # Every worker loop asks: hand-written (the ORM's query building costs more than
        # the query), and the clock is read in the query, not before it.
        with connection.cursor() as cursor:
            cursor.execute(_DUE_TIMERS_SQL, [WorkItemKind.TIMER.value, list(queues), limit])
            due = cursor.fetchall()
    else:
        due = list(
            _claimable(db_now(), kind=WorkItemKind.TIMER, queue__in=list(queues)).values_list(
                "id", "instance_id", "task_id", "due_at"
            )[:limit]
        )
    fired = 0
    for item_id, instance_id, task_id, due_at in due:
        with write_transaction():
            # A run locked by someone else is skipped: they may be firing this very timer.
            instance = _lock_instance(instance_id, skip_locked=True)
            now = (instance.pop("now", None) if instance else None) or db_now()
            deleted, _ = WorkItem.objects.filter(id=item_id).delete() if instance else (0, None)
            if not deleted:
                continue  # fired by another worker, the run is busy or closed: next round
            _deliver(
                instance_id,
                instance,
                Event(
                    kind=EventKind.TIMER_FIRED,
                    timestamp=now,
                    task_id=task_id,
                    payload={"fire_at": due_at.isoformat()},
                ),
            )
            crash_point("before_timer_commit")
            fired += 1
    return fired


_DUE_TIMERS_SQL = (
    f"SELECT id, instance_id, task_id, due_at FROM {WorkItem._meta.db_table} WHERE lease_owner IS NULL "
    "AND parked_at IS NULL AND kind = %s AND queue = ANY(%s) AND due_at <= CURRENT_TIMESTAMP LIMIT %s"
)


def reap_expired_leases(*, limit: int, workflow_backoff: float, workflow_backoff_max: float, max_failures: int) -> int:
    """Take back work whose claimer stopped renewing its lease (died, hung, or timed out).

    An expired activity attempt counts as failed (a timeout) and goes through the
    retry policy; an expired workflow task counts as an engine-level failure.
    """
    now = db_now()
    expired = list(
        _claim_rows(WorkItem.objects.filter(lease_owner__isnull=False, lease_expires_at__lte=now), "lease_owner")[
            :limit
        ]
    )
    reaped = 0
    for row in expired:
        item = Claim(owner=row.pop("lease_owner"), **{**row, "run_id": str(row["run_id"])})
        try:
            if item.kind == WorkItemKind.ACTIVITY:
                _reap_activity(item)
            else:
                fail_workflow_task(
                    item,
                    {"type": "django_durable.LeaseExpired", "message": f"lease of {item.owner} expired"},
                    max_failures=max_failures,
                    backoff=workflow_backoff,
                    backoff_max=workflow_backoff_max,
                    expired_only=True,
                )
        except LeaseLost:
            continue  # renewed, completed or reaped by someone else meanwhile
        logger.warning(
            "Reaped %s %s of workflow run %s (attempt %s): lease of %s expired",
            item.kind, item.name or "", item.instance_id, item.attempt, item.owner,
        )
        state_change(
            "lease_expired", workflow_id=item.workflow_id, run_id=item.run_id, kind=item.kind,
            name=item.name or None, item=item.id, attempt=item.attempt, owner=item.owner,
        )
        reaped += 1
    return reaped


def _reap_activity(item: Claim) -> None:
    with write_transaction():
        # A run locked by someone else (a worker frozen mid-commit) is skipped, not waited
        # for: the reaper runs in every worker's loop and must not stall it.
        instance = _lock_instance(item.instance_id, skip_locked=True)
        now = db_now()
        if instance is None:
            raise LeaseLost(f"run of work item {item.id} no longer exists")
        options = item.payload.get("options") or {}
        timeout = options.get("start_to_close_timeout")
        heartbeat_timeout = options.get("heartbeat_timeout")
        total_timeout = options.get("schedule_to_close_timeout")
        if total_timeout is not None and item.lease_expires_at >= item.created_at + _seconds(total_timeout):
            message = (
                f"activity {item.name!r} attempt {item.attempt} exceeded its schedule_to_close_timeout "
                f"of {total_timeout}s"
            )
        elif timeout is not None and item.lease_expires_at >= item.claimed_at + _seconds(timeout):
            message = f"activity {item.name!r} attempt {item.attempt} exceeded its start_to_close_timeout of {timeout}s"
        elif heartbeat_timeout is not None and item.lease_expires_at >= (
            item.heartbeat_at or item.claimed_at
        ) + _seconds(heartbeat_timeout):
            message = (
                f"activity {item.name!r} attempt {item.attempt} missed its heartbeat_timeout of {heartbeat_timeout}s"
            )
        else:
            message = f"activity {item.name!r} attempt {item.attempt} was lost: {item.owner} stopped renewing its lease"
        failure = {"type": "django_durable.exceptions.TimeoutError", "message": message, "mro": ["TimeoutError"]}
        _fail_attempt(item, _fence(item).filter(lease_expires_at__lte=now), instance, failure, retryable=True, now=now)


def next_wakeup(*, queues: Sequence[str] | None = None) -> datetime.datetime | None:
    """When something next happens on its own on ``queues`` (all if None): an item
    falls due or a lease expires. Parked work waits for a person, not for time."""
    items = WorkItem.objects.filter(parked_at__isnull=True)
    if queues is not None:
        items = items.filter(queue__in=list(queues))
    times = items.aggregate(
        due=Min("due_at", filter=Q(lease_owner__isnull=True)),
        expiry=Min("lease_expires_at", filter=Q(lease_owner__isnull=False)),
    )
    return min((value for value in times.values() if value is not None), default=None)


def seconds_until_due(*, queues: Sequence[str]) -> float | None:
    """Seconds until the next item on ``queues`` is due or a lease expires (0 if one
    is due now or awaits reaping), or None if there is nothing."""
    wakeup = next_wakeup(queues=queues)
    if wakeup is None:
        return None
    return max(0.0, (wakeup - db_now()).total_seconds())


def queues_with_work() -> list[str]:
    return list(WorkItem.objects.order_by().values_list("queue", flat=True).distinct())


# -- workers and the dashboard ----------------------------------------------------

# Heartbeat rows of workers not seen for this long are deleted when a worker starts.
WORKER_ROW_RETENTION = datetime.timedelta(days=7)
# Unclaimed work due longer ago than this is overdue: no worker keeps up with its queue.
OVERDUE_AFTER = datetime.timedelta(minutes=1)
# The dashboard's window for failures and for the workers it lists.
RECENT_WINDOW = datetime.timedelta(hours=1)


def worker_heartbeat_interval() -> float:
    """Seconds between a worker's heartbeats: every REAP_INTERVAL, checked at each lease
    renewal (every LEASE_SECONDS / 3), so at most their sum."""
    return float(durable_settings.REAP_INTERVAL) + float(durable_settings.LEASE_SECONDS) / 3


def worker_stale_after() -> datetime.timedelta:
    """A worker that has not reported for this long (and did not say it stopped) is presumed dead."""
    return datetime.timedelta(seconds=max(60.0, 3 * worker_heartbeat_interval()))


def record_worker_heartbeat(
    name: str, hostname: str, pid: int, queues: Sequence[str], concurrency: int, *, starting: bool = False
) -> None:
    """Upsert the worker's row: seen now (and started now if ``starting``)."""
    now = db_now()
    fields = {
        "hostname": hostname, "pid": pid, "queues": list(queues), "concurrency": concurrency,
        "last_seen_at": now, "stopped_at": None,
    }
    if starting:
        fields["started_at"] = now
        WorkerHeartbeat.objects.filter(last_seen_at__lt=now - WORKER_ROW_RETENTION).delete()
    if WorkerHeartbeat.objects.filter(name=name).update(**fields):
        return
    try:
        with write_transaction():
            WorkerHeartbeat.objects.create(name=name, **{"started_at": now, **fields})
    except IntegrityError:
        # Another process with the same --name inserted it first.
        WorkerHeartbeat.objects.filter(name=name).update(**fields)


def worker_stopped(name: str) -> None:
    now = db_now()
    WorkerHeartbeat.objects.filter(name=name).update(last_seen_at=now, stopped_at=now)


def dashboard_stats(
    now: datetime.datetime | None = None, *, failing_tasks_limit: int = 10, workers_limit: int = 50
) -> dict[str, Any]:
    """The operator's overview, in a fixed number of queries whatever the number of runs,
    work items and workers: runs by status (and closed within RECENT_WINDOW), work by kind
    (due, overdue, running, lease expired, awaiting completion, parked, scheduled), the
    oldest unclaimed due item, workflow tasks failing or parked after failing, and the
    workers seen within RECENT_WINDOW (alive, stale or stopped)."""
    now = now or db_now()
    since = now - RECENT_WINDOW
    stale_before = now - worker_stale_after()

    by_status = {status: {"count": 0, "recent": 0} for status in WorkflowStatus.values}
    rows = (
        WorkflowInstance.objects.order_by()
        .values("status")
        .annotate(count=Count("id"), recent=Count("id", filter=Q(closed_at__gte=since)))
    )
    for row in rows:
        by_status[row["status"]] = {"count": row["count"], "recent": row["recent"]}

    claimable = Q(lease_owner__isnull=True, parked_at__isnull=True)
    leased = Q(lease_owner__isnull=False)
    work_counts = {
        "due": Count("id", filter=claimable & Q(due_at__lte=now)),
        "overdue": Count("id", filter=claimable & Q(due_at__lte=now - OVERDUE_AFTER)),
        "scheduled": Count("id", filter=claimable & Q(due_at__gt=now)),
        "running": Count("id", filter=leased & Q(awaiting_completion=False, lease_expires_at__gt=now)),
        "awaiting_completion": Count(
            "id",
            filter=leased & Q(awaiting_completion=True)
            & (Q(lease_expires_at__isnull=True) | Q(lease_expires_at__gt=now)),
        ),
        "lease_expired": Count("id", filter=leased & Q(lease_expires_at__lte=now)),
        "parked": Count("id", filter=Q(parked_at__isnull=False)),
        "failing": Count("id", filter=Q(last_error__isnull=False, parked_at__isnull=True)),
        "parked_failing": Count("id", filter=Q(last_error__isnull=False, parked_at__isnull=False)),
        "total": Count("id"),
    }
    by_kind = {kind: dict.fromkeys(work_counts, 0) for kind in WorkItemKind.values}
    for row in WorkItem.objects.order_by().values("kind").annotate(**work_counts):
        by_kind[row.pop("kind")] = row
    work_totals = {key: sum(counts[key] for counts in by_kind.values()) for key in work_counts}

    oldest = (
        WorkItem.objects.filter(claimable, due_at__lte=now)
        .order_by("due_at", "id")
        .values(
            "id", "kind", "name", "queue", "due_at", "attempt", "instance_id",
            workflow_id=F("instance__workflow_id"), workflow_name=F("instance__workflow_name"),
            run_id=F("instance__run_id"),
        )
        .first()
    )
    if oldest is not None:
        oldest["waited"] = now - oldest["due_at"]

    # Workflow tasks that failed at engine level (crash, non-determinism): retrying or parked.
    failing_tasks = list(
        WorkItem.objects.filter(kind=WorkItemKind.WORKFLOW, last_error__isnull=False)
        .order_by(F("parked_at").desc(nulls_last=True), "-failures", "id")
        .values(
            "instance_id", "failures", "parked_at", "due_at", "last_error",
            workflow_id=F("instance__workflow_id"), workflow_name=F("instance__workflow_name"),
            run_id=F("instance__run_id"), status=F("instance__status"),
        )[:failing_tasks_limit]
    )

    alive = Q(stopped_at__isnull=True, last_seen_at__gte=stale_before)
    stale = Q(stopped_at__isnull=True, last_seen_at__lt=stale_before)
    seen = WorkerHeartbeat.objects.filter(Q(last_seen_at__gte=since) | alive)
    worker_counts = seen.aggregate(
        alive=Count("id", filter=alive), stale=Count("id", filter=stale),
        stopped=Count("id", filter=Q(stopped_at__isnull=False)),
    )
    workers = list(
        seen.order_by("-last_seen_at", "name").values(
            "name", "hostname", "pid", "queues", "concurrency", "started_at", "last_seen_at", "stopped_at"
        )[:workers_limit]
    )
    for worker in workers:
        worker["state"] = (
            "stopped" if worker["stopped_at"] else "stale" if worker["last_seen_at"] < stale_before else "alive"
        )

    return {
        "now": now,
        "since": since,
        "overdue_after": OVERDUE_AFTER,
        "stale_after": now - stale_before,
        "runs": {
            "by_status": by_status,
            "total": sum(counts["count"] for counts in by_status.values()),
            "open": sum(by_status[status]["count"] for status in OPEN_STATUSES),
        },
        "failures": {
            "failed": by_status[WorkflowStatus.FAILED]["recent"],
            "terminated": by_status[WorkflowStatus.TERMINATED]["recent"],
            "workflow_tasks_failing": by_kind[WorkItemKind.WORKFLOW]["failing"],
            "workflow_tasks_parked": by_kind[WorkItemKind.WORKFLOW]["parked_failing"],
        },
        "work": {"by_kind": by_kind, "total": work_totals},
        "oldest_pending": oldest,
        "failing_tasks": failing_tasks,
        "workers": {**worker_counts, "list": workers},
    }


# -- retention and health ---------------------------------------------------------

PRUNE_COUNT_KEYS = ("runs", "history_events", "inbox_events", "work_items")


def _closed_before(closed_before: datetime.datetime, workflow_names: Sequence[str]) -> Any:
    runs = WorkflowInstance.objects.exclude(status__in=OPEN_STATUSES).filter(closed_at__lt=closed_before)
    if workflow_names:
        runs = runs.filter(workflow_name__in=list(workflow_names))
    return runs


def _referenced_by_open_run() -> Q:
    """An open run points at this run: as its parent (the parent-close policy needs it), as
    the run it continued from (handles to the old run follow the chain), or as its rerun source."""
    open_runs = WorkflowInstance.objects.filter(status__in=OPEN_STATUSES)
    return (
        Q(Exists(open_runs.filter(parent=OuterRef("pk"))))
        | Q(Exists(open_runs.filter(continued_from=OuterRef("pk"))))
        | Q(Exists(open_runs.filter(rerun_of=OuterRef("pk"))))
    )


def prune_batch_size(requested: int) -> int:
    """At most what one statement can take as parameters (999 on SQLite)."""
    return min(requested, connection.features.max_query_params or requested)


def count_prunable(*, closed_before: datetime.datetime, workflow_names: Sequence[str] = ()) -> dict[str, int]:
    """What ``prune_batch`` would delete, in all, and how many closed runs past the retention
    it keeps because an open run refers to them. Reads only."""
    closed = _closed_before(closed_before, workflow_names)
    runs = closed.filter(~_referenced_by_open_run())
    return {
        "runs": runs.count(),
        "history_events": HistoryEvent.objects.filter(instance__in=runs).count(),
        "inbox_events": InboxEvent.objects.filter(instance__in=runs).count(),
        "work_items": WorkItem.objects.filter(instance__in=runs).count(),
        "kept": closed.filter(_referenced_by_open_run()).count(),
    }


def count_kept(*, closed_before: datetime.datetime, workflow_names: Sequence[str] = ()) -> int:
    return _closed_before(closed_before, workflow_names).filter(_referenced_by_open_run()).count()


def prune_batch(
    *, closed_before: datetime.datetime, batch_size: int, workflow_names: Sequence[str] = ()
) -> dict[str, int]:
    """Delete up to ``batch_size`` closed runs that closed before ``closed_before`` and that
    no open run refers to, with their history, inbox events and work items: one short
    transaction, one statement per table. Runs another transaction holds (a purge, a rerun
    being started from one) are skipped, not waited for."""
    with write_transaction():
        # A plain FOR UPDATE (not NO KEY): it conflicts with the key-share lock of a foreign
        # key being inserted to the run, so a rerun starting from it is never orphaned.
        ids = list(
            _closed_before(closed_before, workflow_names)
            .filter(~_referenced_by_open_run())
            .order_by("pk")
            .select_for_update(skip_locked=connection.features.has_select_for_update_skip_locked)
            .values_list("pk", flat=True)[: prune_batch_size(batch_size)]
        )
        counts = dict.fromkeys(PRUNE_COUNT_KEYS, 0)
        if not ids:
            return counts
        # Closed runs that point at the doomed ones forget them (what SET_NULL would do, but
        # one UPDATE per link instead of loading every run the ORM's cascade would).
        for link in ("parent", "continued_from", "rerun_of"):
            WorkflowInstance.objects.filter(**{f"{link}__in": ids}).update(**{link: None})
        counts["history_events"] = HistoryEvent.objects.filter(instance_id__in=ids).delete()[0]
        counts["inbox_events"] = InboxEvent.objects.filter(instance_id__in=ids).delete()[0]
        counts["work_items"] = WorkItem.objects.filter(instance_id__in=ids).delete()[0]
        meta = WorkflowInstance._meta
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {connection.ops.quote_name(meta.db_table)} "
                f"WHERE {connection.ops.quote_name(meta.pk.column)} IN ({', '.join(['%s'] * len(ids))})",
                ids,
            )
            counts["runs"] = cursor.rowcount
        state_change("pruned", closed_before=closed_before, **counts)
    logger.info(
        "Pruned %(runs)d closed runs with %(history_events)d history events, %(inbox_events)d inbox "
        "events and %(work_items)d work items", counts,
    )
    return counts


def check_database() -> str:
    """One round trip (connecting first if need be); raises if the database cannot answer."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return connection.vendor


def unapplied_migrations(app_label: str = "django_durable") -> tuple[list[str], list[str]]:
    """``(unapplied, leaves)``: the migrations the app's latest ones need (its own and their
    dependencies, as ``app.name``) that the database lacks, and the app's latest migrations.
    Reads only: a database without ``django_migrations`` has nothing applied."""
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(connection, ignore_no_migrations=True)
    leaves = loader.graph.leaf_nodes(app_label)
    needed = {node for leaf in leaves for node in loader.graph.forwards_plan(leaf)}
    unapplied = sorted(f"{app}.{name}" for app, name in needed if (app, name) not in loader.applied_migrations)
    return unapplied, [f"{app}.{name}" for app, name in leaves]


def worker_rows(*, hostname: str | None = None) -> tuple[datetime.datetime, list[dict[str, Any]]]:
    """The database's clock and every worker that has not said it stopped, latest seen first."""
    workers = WorkerHeartbeat.objects.filter(stopped_at__isnull=True)
    if hostname is not None:
        workers = workers.filter(hostname=hostname)
    rows = list(workers.order_by("-last_seen_at", "name").values("name", "hostname", "pid", "queues", "last_seen_at"))
    return db_now(), rows


def overdue_work(*, overdue_after: datetime.timedelta, queues: Sequence[str] = ()) -> dict[str, Any]:
    """Work no worker is keeping up with: unclaimed items due for longer than ``overdue_after``
    and leases expired that long ago without being reaped; with the oldest of each, the
    oldest due item whatever its wait, and the parked count (parked work waits for a person)."""
    now = db_now()
    items = WorkItem.objects.all()
    if queues:
        items = items.filter(queue__in=list(queues))
    claimable = Q(lease_owner__isnull=True, parked_at__isnull=True)
    unreaped = Q(lease_owner__isnull=False, lease_expires_at__lte=now - overdue_after)
    counts = items.aggregate(
        overdue=Count("id", filter=claimable & Q(due_at__lte=now - overdue_after)),
        lease_expired=Count("id", filter=unreaped),
        parked=Count("id", filter=Q(parked_at__isnull=False)),
    )
    fields = ("id", "kind", "name", "queue", "due_at", "attempt", "lease_owner", "lease_expires_at")
    run_ids = {"workflow_id": F("instance__workflow_id"), "run_id": F("instance__run_id")}
    oldest_due = items.filter(claimable, due_at__lte=now).order_by("due_at", "id").values(*fields, **run_ids).first()
    oldest_expired = None
    if counts["lease_expired"]:
        oldest_expired = items.filter(unreaped).order_by("lease_expires_at", "id").values(*fields, **run_ids).first()
    return {"now": now, **counts, "oldest_due": oldest_due, "oldest_lease_expired": oldest_expired}
