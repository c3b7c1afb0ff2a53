"""PostgreSQL: the store's hot path as hand-written statements, one round trip each, where the
ORM's query building costs more client CPU than the query (or needs several)."""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.dateparse import parse_datetime

from ...engine.events import Event, EventKind
from ...models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem, WorkItemKind
from .. import testclock
from ..records import CLAIM_FIELDS, LOCKED_FIELDS, Claim, FinishedTask, LockedRun, StoredRun, StoredTask
from .base import Dialect, DueTimer, RunUpdates, column, concrete_field


class PostgreSQLDialect(Dialect):
    # A statement after a row lock must see what committed while it waited.
    needs_read_committed = True

    @functools.cached_property
    def has_listen_notify(self) -> bool:
        """Through psycopg 3, whose connections ``notify.Listener`` uses."""
        from django.db.backends.postgresql.psycopg_any import (
            is_psycopg3,  # imports psycopg: not before it is needed
        )

        return bool(is_psycopg3)

    def read_wall_clock(self) -> datetime.datetime:
        # CURRENT_TIMESTAMP is the transaction's start, before any wait for a lock.
        if testclock.clock_override is not None:
            return testclock.clock_override()
        with connection.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")
            (now,) = cursor.fetchone()
        return now

    def lock_run(self, instance_id: int, *, skip_locked: bool = False) -> LockedRun | None:
        # Hand-written: on every step's path, and the ORM's query building costs more
        # client CPU than the query. NO KEY: the row's key never changes, and a plain
        # FOR UPDATE would conflict with the FOR KEY SHARE that PostgreSQL's deferred
        # foreign-key checks take on it at commit.
        now = self.now()
        with connection.cursor() as cursor:
            cursor.execute(_lock_sql(now.sql, skip_locked=skip_locked), [*now.params, instance_id])
            row = cursor.fetchone()
        return None if row is None else LockedRun(*row)

    def lock_runs(self, ids: Sequence[int]) -> dict[int, LockedRun]:
        now = self.now()
        with connection.cursor() as cursor:
            cursor.execute(_lock_many_sql(now.sql), [*now.params, _int_array(ids)])
            return {row[0]: LockedRun(*row[1:]) for row in cursor.fetchall()}

    def write_tasks(
        self, runs: Sequence[tuple[int, RunUpdates]], history: list[HistoryEvent], items: Sequence[WorkItem]
    ) -> list[int]:
        """In one statement, whatever the number of runs."""
        with connection.cursor() as cursor:
            update_sql, update_params = _update_json_sql(WorkflowInstance, runs)
            ctes: list[str] = []
            params: list[str] = []
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
        return ids

    def history(self, instance_id: int, *, after: int = 0) -> list[Event]:
        # Read in one JSON document: a step that replays inline reads the whole history, and
        # building model rows cost more client CPU than the query.
        with connection.cursor() as cursor:
            cursor.execute(_HISTORY_SQL, [after, instance_id])
            row = cursor.fetchone()
        return [] if row is None else [Event(**event) for event in _json_events(row[0])]

    def read_task(self, instance_id: int, *, known_length: int | None) -> StoredTask | None:
        # One statement (one snapshot) instead of three ORM queries, on every task's path.
        with connection.cursor() as cursor:
            cursor.execute(_LOAD_TASK_SQL, [known_length or 0, instance_id])
            row = cursor.fetchone()
        return None if row is None else _stored_task(row)

    def read_tasks(self, runs: Sequence[tuple[int, int]]) -> dict[int, StoredTask]:
        with connection.cursor() as cursor:
            cursor.execute(
                _LOAD_TASKS_SQL, [_int_array(run for run, _ in runs), _int_array(after for _, after in runs)]
            )
            return {row[0]: _stored_task(row[1:]) for row in cursor.fetchall()}

    def claim(self, *, owner: str, kind: str, queues: Sequence[str], limit: int, lease_seconds: float) -> list[Claim]:
        """One round trip, no transaction block: the ORM needs four (the clock, the locking
        select, the update, the read back)."""
        now = self.now(placeholder="%(now)s")
        columns = {field: column(concrete_field(WorkItem, field)) for field in CLAIM_FIELDS}
        sql = _CLAIM_SQL.format(
            items=connection.ops.quote_name(WorkItem._meta.db_table),
            runs=connection.ops.quote_name(WorkflowInstance._meta.db_table),
            fields=", ".join(f"item.{connection.ops.quote_name(column)}" for column in columns.values()),
            now=now.sql,
        )
        params: dict[str, str | list[str] | int | float | datetime.datetime] = {
            "kind": kind,
            "queues": list(queues),
            "limit": limit,
            "owner": owner,
            "lease": lease_seconds,
        }
        if now.params:
            params["now"] = now.params[0]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        json_fields = {"payload", "heartbeat_details"}
        claims = []
        for row in rows:
            values = dict(zip(CLAIM_FIELDS, row[:-2], strict=True))
            for field in json_fields:  # Django reads jsonb as text and decodes it itself
                if isinstance(values[field], str):
                    values[field] = json.loads(values[field])
            claims.append(Claim(owner=owner, workflow_id=row[-2], run_id=str(row[-1]), **values))
        return claims

    def finish_workflow_task(
        self, item: Claim, inbox_ids: Sequence[int], *, closing: bool, check_signals: bool
    ) -> FinishedTask:
        with connection.cursor() as cursor:
            cursor.execute(
                _FINISH_TASK_SQL,
                {
                    "run": item.instance_id,
                    "ids": list(inbox_ids),
                    "check_signals": check_signals,
                    "signal": EventKind.EVENT_RAISED.value,
                    "closing": closing,
                    "item": item.id,
                    "owner": item.owner,
                    "attempt": item.attempt,
                },
            )
            more, unseen_signal, deleted = cursor.fetchone()
        return FinishedTask(more, unseen_signal, bool(deleted))

    def finish_attempts(self, items: Sequence[Claim], runs: dict[int, LockedRun], *, live_only: bool) -> set[int]:
        now = self.now()
        live = f" AND (w.lease_expires_at IS NULL OR w.lease_expires_at > {now.sql})" if live_only else ""
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
                [
                    _json_records([{"id": item.id, "owner": item.owner, "attempt": item.attempt} for item in items]),
                    *(now.params if live_only else []),
                    WorkItemKind.WORKFLOW.value,
                ],
            )
            finished = set()
            for item_id, instance_id, has_workflow_task, has_inbox in cursor.fetchall():
                runs[instance_id].has_workflow_task, runs[instance_id].has_inbox = has_workflow_task, has_inbox
                finished.add(item_id)
        return finished

    def due_timers(self, *, kind: str, queues: Sequence[str], limit: int) -> list[DueTimer]:
        # Every worker loop asks: hand-written (the ORM's query building costs more than
        # the query), and the clock is read in the query, not before it.
        now = self.now()
        with connection.cursor() as cursor:
            cursor.execute(_due_timers_sql(now.sql), [kind, list(queues), *now.params, limit])
            return cursor.fetchall()


_LOCKED_COLUMNS = ", ".join(column(concrete_field(WorkflowInstance, name)) for name in LOCKED_FIELDS)


@functools.cache
def _lock_sql(now: str, *, skip_locked: bool) -> str:
    sql = f"SELECT {_LOCKED_COLUMNS}, {now} FROM {WorkflowInstance._meta.db_table} WHERE id = %s FOR NO KEY UPDATE"
    return sql + " SKIP LOCKED" if skip_locked else sql


@functools.cache
def _lock_many_sql(now: str) -> str:
    return (
        f"SELECT id, {_LOCKED_COLUMNS}, {now} FROM {WorkflowInstance._meta.db_table} "
        "WHERE id = ANY(%s::bigint[]) ORDER BY id FOR NO KEY UPDATE"
    )


def _int_array(values: Iterable[int]) -> str:
    """A PostgreSQL array literal: psycopg's list dumper inspects every element."""
    return "{" + ",".join(str(int(value)) for value in values) + "}"


def _recordset(fields: Sequence[models.Field[Any, Any]], db: BaseDatabaseWrapper) -> str:
    """``json_to_recordset(%s::json) AS r (column type, ...)`` for ``fields``."""
    quote = db.ops.quote_name
    return f"json_to_recordset(%s::json) AS r ({', '.join(f'{quote(column(f))} {f.db_type(db)}' for f in fields)})"


def _json_records(records: Sequence[Mapping[str, object]]) -> str:
    return json.dumps(records, default=_json_scalar, separators=(",", ":"))


def _json_scalar(value: object) -> str:
    """Column values JSON has no type for: PostgreSQL reads them from their text."""
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    return str(value)  # UUID, Decimal


def _insert_json_sql(rows: Sequence[models.Model], *, returning_ids: bool = False) -> tuple[str, list[str]]:
    """``_insert_sql`` on PostgreSQL, the rows sent as one JSON document: the statement's
    text is the same whatever their number, so psycopg converts it once (a long VALUES
    list is parsed again on every execution), and the rows are dumped by one json.dumps."""
    text, fields = _insert_json_parts(type(rows[0]), returning_ids)
    return text, [_json_records([{column(field): field.pre_save(row, True) for field in fields} for row in rows])]


@functools.cache
def _insert_json_parts(model: type[models.Model], returning_ids: bool) -> tuple[str, list[models.Field[Any, Any]]]:
    db = connections[DEFAULT_DB_ALIAS]
    quote = db.ops.quote_name
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    columns = ", ".join(quote(column(field)) for field in fields)
    text = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) SELECT {columns} FROM {_recordset(fields, db)}"
    return text + (f" RETURNING {quote(column(model._meta.pk))}" if returning_ids else ""), fields


def _update_json_sql(model: type[models.Model], rows: Sequence[tuple[int, RunUpdates]]) -> tuple[str, list[str]]:
    """One PostgreSQL UPDATE giving each row (pk, values) its own values, sent as one JSON
    document (see ``_insert_json_sql``); every row's values have the same keys."""
    db = connections[DEFAULT_DB_ALIAS]
    quote = db.ops.quote_name
    pk = model._meta.pk
    by_name = {name: concrete_field(model, name) for name in rows[0][1]}
    fields = [pk, *by_name.values()]
    assignments = ", ".join(f"{quote(column(field))} = r.{quote(column(field))}" for field in fields[1:])
    pk_column = column(pk)
    text = (
        f"UPDATE {quote(model._meta.db_table)} AS t SET {assignments} FROM {_recordset(fields, db)} "
        f"WHERE t.{quote(pk_column)} = r.{quote(pk_column)}"
    )
    columns = {name: column(field) for name, field in by_name.items()}
    records = [{pk_column: key, **{columns[name]: value for name, value in values.items()}} for key, values in rows]
    return text, [_json_records(records)]


def _stored_task(row: Sequence[Any]) -> StoredTask:
    """A task's input from a row of ``_LOAD_TASK_SQL`` (run, inbox and history as JSON)."""
    instance = StoredRun(
        workflow_id=row[0], run_id=row[1], workflow_name=row[2], queue=row[3], status=row[4], history_length=row[5]
    )
    history = [Event(**event) for event in _json_events(row[-1])]
    inbox = _json_events(row[-2])
    return StoredTask(instance, [event.pop("id") for event in inbox], [Event(**event) for event in inbox], history)


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

_CLAIM_SQL = """
WITH picked AS (
    SELECT id FROM {items}
    WHERE kind = %(kind)s AND queue = ANY(%(queues)s) AND lease_owner IS NULL
      AND parked_at IS NULL AND due_at <= {now}
    ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
UPDATE {items} AS item
SET lease_owner = %(owner)s, claimed_at = {now},
    lease_expires_at = {now} + %(lease)s * INTERVAL '1 second',
    attempt = item.attempt + 1, heartbeat_at = NULL, awaiting_completion = FALSE
FROM picked, {runs} AS run
WHERE item.id = picked.id AND run.id = item.instance_id
RETURNING {fields}, run.workflow_id, run.run_id
"""

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

_WORK_ITEMS = WorkItem._meta.db_table
_INBOX = InboxEvent._meta.db_table


@functools.cache
def _due_timers_sql(now: str) -> str:
    return (
        f"SELECT id, instance_id, task_id, due_at FROM {WorkItem._meta.db_table} WHERE lease_owner IS NULL "
        f"AND parked_at IS NULL AND kind = %s AND queue = ANY(%s) AND due_at <= {now} LIMIT %s"
    )
