"""Hand-written statements and their builders, where the ORM costs more client CPU than the
query on every step (PostgreSQL), or cannot say what is needed."""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.utils.dateparse import parse_datetime

from ..models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem
from .records import LOCKED_FIELDS

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

_DUE_TIMERS_SQL = (
    f"SELECT id, instance_id, task_id, due_at FROM {WorkItem._meta.db_table} WHERE lease_owner IS NULL "
    "AND parked_at IS NULL AND kind = %s AND queue = ANY(%s) AND due_at <= CURRENT_TIMESTAMP LIMIT %s"
)
