"""MySQL and MariaDB (InnoDB): the store's hot path as hand-written statements, on the server's
UTC clock, each reading or locking rows by one range of one index.

No ``UPDATE ... RETURNING`` and no JSON record sets here: a claim is a locking read and an
update by primary key, an attempt's finish a delete by primary key. Their gain over the ORM's
statements is the client CPU of building them, which on every step costs more than the query."""

from __future__ import annotations

import contextlib
import datetime
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from django.db import DatabaseError, connection, models, transaction
from django.db.models import QuerySet
from django.db.models.expressions import Col

from ...engine.events import Event, EventKind
from ...models import OPEN_STATUSES, HistoryEvent, InboxEvent, WorkflowInstance, WorkItem, WorkItemKind
from .. import testclock
from ..records import CLAIM_FIELDS, EVENT_FIELDS, LOCKED_FIELDS, Claim, FinishedTask, LockedRun, StoredRun, StoredTask
from .base import Dialect, DueTimer, SchemaExtra, ServerProblem, SqlNow, column, concrete_field


class MySQLDialect(Dialect):
    # Django's MySQL backend asks for READ COMMITTED unless OPTIONS say otherwise; under
    # REPEATABLE READ a statement after a row lock would not see what committed while it waited.
    needs_read_committed = True
    # UTC whatever the session's time zone, with microseconds (CURRENT_TIMESTAMP has neither).
    # MySQL has no clock of the transaction's start: this is the statement's.
    clock_sql = "UTC_TIMESTAMP(6)"
    # InnoDB locks each row a locking read or a DELETE scans, if only until it finds the row
    # does not match: a dispatch scan passing over an item it sent could make the claim of that
    # very item skip it, and the item would wait DISPATCH_TIMEOUT to be sent again.
    claim_by_id_skips_locked = False

    def schema_extras(self) -> list[SchemaExtra]:
        """The models' conditional unique constraints and indexes, which Django skips here (no
        partial indexes). A constraint becomes a unique index on a generated column that is NULL
        where the condition is false (a unique index admits any number of NULLs). An index
        becomes one whose leading columns hold the condition: InnoDB locks every index record a
        locking read scans, so a claim must find its rows, in its order, in one range of one
        index, or it locks rows it does not return and the next worker finds nothing to claim.
        On MariaDB, JSON columns without the CHECK that limits a document's depth (``_JSON_COLUMNS``)."""
        extras = [
            _unique_where(
                WorkflowInstance,
                "durable_one_open_run_per_workflow_id",
                generated="durable_open_workflow_id",
                value="workflow_id",
                condition="`{status}` IN ({open})".format(
                    status=column(concrete_field(WorkflowInstance, "status")),
                    open=", ".join(f"'{status.value}'" for status in OPEN_STATUSES),
                ),
            ),
            _unique_where(
                WorkItem,
                "durable_one_workflow_task_per_run",
                generated="durable_workflow_task_run",
                value="instance",
                condition=f"`{column(concrete_field(WorkItem, 'kind'))}` = '{WorkItemKind.WORKFLOW.value}'",
            ),
            # Claims, dispatch and due timers: kind = %s AND lease_owner IS NULL AND parked_at IS NULL
            # AND queue = %s AND due_at <= now ORDER BY due_at (IS NULL is an equality to an index).
            # (Django creates durable_workitem_leased here without its condition, which serves the
            # reaper as it is, and durable_workitem_claimable without its, which this one supersedes.)
            _index(WorkItem, "durable_workitem_claim_order", ["kind", "lease_owner", "parked_at", "queue", "due_at"]),
        ]
        if connection.mysql_is_mariadb:  # type: ignore[attr-defined]  # the MySQL backend's own
            extras += [_any_json_depth(model, names) for model, names in _JSON_COLUMNS]
        return extras

    def server_problems(self) -> list[ServerProblem]:
        # MariaDB before 11.1 names the session's isolation tx_isolation, MySQL 8 only transaction_isolation.
        mariadb = connection.mysql_is_mariadb  # type: ignore[attr-defined]  # the MySQL backend's own
        isolation = "tx_isolation" if mariadb and connection.mysql_version < (11, 1) else "transaction_isolation"  # type: ignore[attr-defined]
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT @@session.{isolation}, @@session.binlog_format")
            level, binlog_format = cursor.fetchone()
        problems = []
        if str(level).upper().replace("-", " ") != "READ COMMITTED":
            problems.append(
                ServerProblem(
                    "isolation",
                    str(level),
                    "Leave OPTIONS['isolation_level'] unset (Django's MySQL backend then asks for READ COMMITTED) "
                    "and take any SET of the isolation level out of OPTIONS['init_command'].",
                )
            )
        if str(binlog_format).upper() == "STATEMENT":
            problems.append(
                ServerProblem(
                    "binlog_format",
                    str(binlog_format),
                    "Set binlog_format = ROW (or MIXED) in the server's configuration, or for these connections "
                    "with OPTIONS['init_command'] = \"SET SESSION binlog_format = 'ROW'\".",
                )
            )
        return problems

    def lock_first_due(
        self, candidates: QuerySet[WorkItem], queues: Sequence[str], limit: int
    ) -> list[tuple[int, str]]:
        """Queue by queue, the one whose next item has waited longest first: InnoDB serves
        ``queue IN (...) ORDER BY due_at`` with a sort of every matching row, and a locking read
        locks all it sorted, leaving the next worker nothing. One queue at a time each locking
        read is one range of the claim index and locks only what it returns."""
        if len(queues) == 1:
            return super().lock_first_due(candidates, queues, limit)
        heads = []
        for queue in queues:
            head = candidates.filter(queue=queue).order_by("due_at").values_list("due_at", flat=True).first()
            if head is not None:
                heads.append((head, queue))
        taken: list[tuple[int, str]] = []
        for _, queue in sorted(heads):
            if len(taken) == limit:
                break
            rows = candidates.filter(queue=queue).order_by("due_at").select_for_update(skip_locked=True)
            taken += rows.values_list("id", "queue")[: limit - len(taken)]
        return taken

    def delete_run_rows(self, rows: QuerySet[Any]) -> int:
        """Row by row, by primary key. InnoDB serves ``instance_id = %s``, and ``id IN (...)`` of
        as many ids, with a scan of the whole table when the run holds much of it, and a DELETE
        locks each row it scans, waiting on rows of runs other transactions are closing: a
        deadlock. The ids are read without locks: the run's row, locked, keeps anyone else from
        adding its rows meanwhile."""
        table, pk = rows.model._meta.db_table, rows.model._meta.pk
        ids = [(item_id,) for item_id in rows.values_list("pk", flat=True)]
        if not ids:
            return 0
        with connection.cursor() as cursor:
            cursor.executemany(f"DELETE FROM `{table}` WHERE `{column(pk)}` = %s", ids)
            return cursor.rowcount

    def read_clock(self) -> datetime.datetime:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {self.clock_sql}")
            (now,) = cursor.fetchone()
        return _utc(now)

    def now(self, placeholder: str = "%s") -> SqlNow:
        if testclock.clock_override is None:
            return SqlNow(self.clock_sql, [])
        return SqlNow(placeholder, [_adapt(testclock.clock_override())])

    def _clock(self, read: datetime.datetime) -> datetime.datetime:
        """``db_now()`` from the clock a statement read (the test clock's, when it is set)."""
        return testclock.clock_override() if testclock.clock_override is not None else _utc(read)

    def lock_run(self, instance_id: int, *, skip_locked: bool = False) -> LockedRun | None:
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_RUN_SQL + (" SKIP LOCKED" if skip_locked else ""), [instance_id])
            row = cursor.fetchone()
        return None if row is None else self._locked_run(row)

    def lock_runs(self, ids: Sequence[int]) -> dict[int, LockedRun]:
        if not ids:
            return {}
        # FORCE INDEX: on a small table InnoDB may prefer a scan to the ids' ranges, and a
        # locking scan waits on every row other transactions hold.
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_RUNS_SQL.format(ids=_placeholders(ids)), list(ids))
            return {row[0]: self._locked_run(row[1:]) for row in cursor.fetchall()}

    def _locked_run(self, row: Sequence[Any]) -> LockedRun:
        run = LockedRun(*_decode(WorkflowInstance, LOCKED_FIELDS, row[:-1]))
        run.now = self._clock(row[-1])
        return run

    def claim(self, *, owner: str, kind: str, queues: Sequence[str], limit: int, lease_seconds: float) -> list[Claim]:
        """A locking read of the due items with their runs' ids (queue by queue, as
        ``lock_first_due``), then an update of what it locked, by primary key."""
        with connection.cursor() as cursor, _short_transaction(cursor):
            rows: list[Sequence[Any]] = []
            for queue in self._queues_by_head(cursor, kind, queues):
                now = self.now()
                cursor.execute(_CLAIM_SQL.format(now=now.sql), [kind, queue, *now.params, limit - len(rows)])
                rows += cursor.fetchall()
                if len(rows) == limit:
                    break
            if not rows:
                return []
            now_value = self._clock(rows[0][-1])
            lease_expires_at = now_value + datetime.timedelta(seconds=lease_seconds)
            ids = [row[0] for row in rows]
            cursor.execute(
                _LEASE_SQL.format(ids=_placeholders(ids)),
                [owner, _adapt(now_value), _adapt(lease_expires_at), *ids],
            )
        claims = []
        for row in rows:
            values = dict(zip(CLAIM_FIELDS, _decode(WorkItem, CLAIM_FIELDS, row[:-3]), strict=True))
            workflow_id, run_id = _decode(WorkflowInstance, ("workflow_id", "run_id"), row[-3:-1])
            values.update(
                claimed_at=now_value,
                lease_expires_at=lease_expires_at,
                attempt=values["attempt"] + 1,
                heartbeat_at=None,
            )
            claims.append(Claim(owner=owner, workflow_id=workflow_id, run_id=str(run_id), **values))
        return claims

    def _queues_by_head(self, cursor: Any, kind: str, queues: Sequence[str]) -> list[str]:
        """``queues``, the one whose next due item has waited longest first (see ``lock_first_due``)."""
        if len(queues) == 1:
            return list(queues)
        heads = []
        for queue in queues:
            now = self.now()
            cursor.execute(_HEAD_SQL.format(now=now.sql), [kind, queue, *now.params])
            row = cursor.fetchone()
            if row is not None:
                heads.append((row[0], queue))
        return [queue for _, queue in sorted(heads)]

    def due_timers(self, *, kind: str, queues: Sequence[str], limit: int) -> list[DueTimer]:
        if not queues:
            return []
        now = self.now()
        with connection.cursor() as cursor:
            cursor.execute(
                _DUE_TIMERS_SQL.format(now=now.sql, queues=_placeholders(queues)),
                [kind, *queues, *now.params, limit],
            )
            return [(item_id, run, task_id, _utc(due_at)) for item_id, run, task_id, due_at in cursor.fetchall()]

    def finish_attempts(self, items: Sequence[Claim], runs: dict[int, LockedRun], *, live_only: bool) -> set[int]:
        """Each attempt deleted by primary key (a DELETE locks every row it scans), then the
        busy flags of the runs whose attempts finished, in one read (their rows are locked)."""
        finished: set[int] = set()
        with connection.cursor() as cursor:
            for item in items:
                params: list[Any] = [item.id, item.owner, item.attempt]
                if live_only:
                    params.append(_adapt(runs[item.instance_id].now))
                cursor.execute(_FINISH_ATTEMPT_SQL + (_LIVE_SQL if live_only else ""), params)
                if cursor.rowcount:
                    finished.add(item.id)
            busy = sorted({item.instance_id for item in items if item.id in finished})
            if busy:
                cursor.execute(_BUSY_SQL.format(ids=_placeholders(busy)), [WorkItemKind.WORKFLOW.value, *busy])
                for instance_id, has_workflow_task, has_inbox in cursor.fetchall():
                    runs[instance_id].has_workflow_task = bool(has_workflow_task)
                    runs[instance_id].has_inbox = bool(has_inbox)
        return finished

    def finish_workflow_task(
        self, item: Claim, inbox_ids: Sequence[int], *, closing: bool, check_signals: bool
    ) -> FinishedTask:
        with connection.cursor() as cursor:
            unseen = f" AND id NOT IN ({_placeholders(inbox_ids)})" if inbox_ids else ""
            cursor.execute(
                _TASK_STATE_SQL.format(unseen=unseen),
                [
                    item.id,
                    item.owner,
                    item.attempt,
                    item.instance_id,
                    *inbox_ids,
                    item.instance_id,
                    EventKind.EVENT_RAISED.value,
                    *inbox_ids,
                ],
            )
            held, more, unseen_signal = cursor.fetchone()
            if not held:
                return FinishedTask(False, False, False)
            if check_signals and unseen_signal:
                return FinishedTask(True, True, False)
            if inbox_ids:
                cursor.executemany(_DELETE_INBOX_SQL, [(inbox_id,) for inbox_id in inbox_ids])
            deleted = 0
            if closing or not more:
                cursor.execute(_FINISH_ATTEMPT_SQL, [item.id, item.owner, item.attempt])
                deleted = cursor.rowcount
        return FinishedTask(bool(more), False, bool(deleted))

    def read_task(self, instance_id: int, *, known_length: int | None) -> StoredTask | None:
        with connection.cursor() as cursor:
            cursor.execute(_READ_RUN_SQL, [instance_id])
            row = cursor.fetchone()
            if row is None:
                return None
            workflow_id, run_id, workflow_name, queue, status, history_length = _decode(
                WorkflowInstance, _STORED_RUN_FIELDS, row
            )
            run = StoredRun(
                workflow_id=workflow_id,
                run_id=run_id,
                workflow_name=workflow_name,
                queue=queue,
                status=status,
                history_length=history_length,
            )
            cursor.execute(_INBOX_SQL, [instance_id])
            inbox_rows = cursor.fetchall()
            history = self._history(cursor, instance_id, known_length or 0)
        inbox = [_event(InboxEvent, _INBOX_FIELDS, row[1:]) for row in inbox_rows]
        return StoredTask(run, [row[0] for row in inbox_rows], inbox, history)

    def history(self, instance_id: int, *, after: int = 0) -> list[Event]:
        with connection.cursor() as cursor:
            return self._history(cursor, instance_id, after)

    def _history(self, cursor: Any, instance_id: int, after: int) -> list[Event]:
        cursor.execute(_HISTORY_SQL, [instance_id, after])
        return [_event(HistoryEvent, EVENT_FIELDS, row) for row in cursor.fetchall()]


# MariaDB's JSON is LONGTEXT with CHECK (JSON_VALID(...)), and its JSON functions give up on a
# document nested 32 levels deep: a payload that PostgreSQL and SQLite store, and the HTTP API
# admits (jsontext.MAX_JSON_DEPTH levels), would fail the check. The store writes only what
# json.dumps wrote. The columns as they were when migration 0007 ran.
_JSON_COLUMNS: list[tuple[type[models.Model], list[str]]] = [
    (WorkflowInstance, ["input", "result", "error", "vars", "task_error"]),
    (HistoryEvent, ["payload"]),
    (InboxEvent, ["payload"]),
    (WorkItem, ["payload", "last_error", "heartbeat_details"]),
]


def _any_json_depth(model: type[models.Model], names: list[str]) -> SchemaExtra:
    def modify(field: models.Field[Any, Any], type_: str) -> str:
        return f"MODIFY `{column(field)}` {type_} {'NULL' if field.null else 'NOT NULL'}"

    table, fields = model._meta.db_table, [concrete_field(model, name) for name in names]
    return SchemaExtra(
        f"durable_any_json_depth_{table}",
        f"ALTER TABLE `{table}` "
        + ", ".join(modify(field, "LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin") for field in fields),
        # MariaDB gives a JSON column its CHECK (JSON_VALID(...)) again.
        f"ALTER TABLE `{table}` " + ", ".join(modify(field, "JSON") for field in fields),
    )


def _index(model: type[WorkItem], name: str, fields: list[str]) -> SchemaExtra:
    table, columns = model._meta.db_table, ", ".join(f"`{column(concrete_field(model, f))}`" for f in fields)
    return SchemaExtra(name, f"CREATE INDEX `{name}` ON `{table}` ({columns})", f"DROP INDEX `{name}` ON `{table}`")


def _unique_where(
    model: type[WorkflowInstance | WorkItem], name: str, *, generated: str, value: str, condition: str
) -> SchemaExtra:
    table, source = model._meta.db_table, concrete_field(model, value)
    return SchemaExtra(
        name,
        f"ALTER TABLE `{table}` ADD COLUMN `{generated}` {source.db_type(connection)} "
        f"AS (CASE WHEN {condition} THEN `{column(source)}` END) STORED, "
        f"ADD UNIQUE INDEX `{name}` (`{generated}`)",
        f"ALTER TABLE `{table}` DROP INDEX `{name}`, DROP COLUMN `{generated}`",
    )


@contextlib.contextmanager
def _short_transaction(cursor: Any) -> Iterator[None]:
    """A transaction begun and committed by statements: two round trips where ``atomic()``
    takes four (it turns autocommit off, commits, and turns it on again). Inside a transaction
    (a test's, or the caller's), ``atomic()``'s savepoint."""
    if connection.in_atomic_block or not connection.get_autocommit():
        with transaction.atomic():
            yield
        return
    cursor.execute("START TRANSACTION")
    try:
        yield
    except BaseException:
        with contextlib.suppress(DatabaseError):  # a lost connection has rolled back already
            cursor.execute("ROLLBACK")
        raise
    cursor.execute("COMMIT")


def _utc(value: datetime.datetime) -> datetime.datetime:
    return value.replace(tzinfo=datetime.timezone.utc)


def _adapt(value: datetime.datetime | None) -> str:
    """An aware datetime as the server takes it (MySQLdb would write its offset, which it refuses)."""
    adapted = connection.ops.adapt_datetimefield_value(value)
    assert adapted is not None, "a datetime is required here"
    return adapted


def _placeholders(values: Sequence[object]) -> str:
    return ", ".join(["%s"] * len(values))


@functools.cache
def _converters(model: type[models.Model], names: tuple[str, ...]) -> list[tuple[int, Col, Callable[..., Any]]]:
    """The ORM's converters of ``model``'s fields ``names`` (they read only the settings)."""
    converters = []
    for index, name in enumerate(names):
        col = concrete_field(model, name).get_col(model._meta.db_table)
        for converter in [*connection.ops.get_db_converters(col), *col.get_db_converters(connection)]:
            converters.append((index, col, converter))
    return converters


def _decode(model: type[models.Model], names: tuple[str, ...], row: Sequence[Any]) -> list[Any]:
    """``row``'s values of ``model``'s fields ``names`` as the ORM reads them: aware
    datetimes, UUIDs, decoded JSON, booleans."""
    values = list(row)
    for index, col, converter in _converters(model, names):
        values[index] = converter(values[index], col, connection)
    return values


def _event(model: type[models.Model], names: tuple[str, ...], row: Sequence[Any]) -> Event:
    return Event(**dict(zip(names, _decode(model, names, row), strict=True)))


def _table(model: type[models.Model]) -> str:
    return f"`{model._meta.db_table}`"


def _select_list(model: type[models.Model], names: Sequence[str]) -> str:
    return ", ".join(f"`{column(concrete_field(model, name))}`" for name in names)


_RUNS, _ITEMS, _INBOX, _HISTORY = _table(WorkflowInstance), _table(WorkItem), _table(InboxEvent), _table(HistoryEvent)
_STORED_RUN_FIELDS = ("workflow_id", "run_id", "workflow_name", "queue", "status", "history_length")
_INBOX_FIELDS = ("kind", "name", "task_id", "payload", "timestamp")

# The clock is read in the statement that takes the lock, so that it is at least the time
# the previous holder committed at.
_LOCK_RUN_SQL = (
    f"SELECT {_select_list(WorkflowInstance, LOCKED_FIELDS)}, UTC_TIMESTAMP(6) FROM {_RUNS} WHERE id = %s FOR UPDATE"
)
_LOCK_RUNS_SQL = (
    f"SELECT id, {_select_list(WorkflowInstance, LOCKED_FIELDS)}, UTC_TIMESTAMP(6) "
    f"FROM {_RUNS} FORCE INDEX (PRIMARY) WHERE id IN ({{ids}}) ORDER BY id FOR UPDATE"
)
_READ_RUN_SQL = f"SELECT {_select_list(WorkflowInstance, _STORED_RUN_FIELDS)} FROM {_RUNS} WHERE id = %s"
_INBOX_SQL = f"SELECT id, {_select_list(InboxEvent, _INBOX_FIELDS)} FROM {_INBOX} WHERE instance_id = %s ORDER BY id"
_HISTORY_SQL = (
    f"SELECT {_select_list(HistoryEvent, EVENT_FIELDS)} FROM {_HISTORY} "
    "WHERE instance_id = %s AND seq > %s ORDER BY seq"
)

# Claims, due timers and the heads of queues: one range of durable_workitem_claim_order
# (kind, lease_owner, parked_at, queue, due_at), in due_at order.
_CLAIMABLE = "kind = %s AND lease_owner IS NULL AND parked_at IS NULL"
# The runs' ids in subqueries, which a locking read does not lock (a join's rows it would).
_CLAIM_SQL = (
    f"SELECT {_select_list(WorkItem, CLAIM_FIELDS)}, "
    f"(SELECT workflow_id FROM {_RUNS} run WHERE run.id = {_ITEMS}.instance_id), "
    f"(SELECT run_id FROM {_RUNS} run WHERE run.id = {_ITEMS}.instance_id), UTC_TIMESTAMP(6) FROM {_ITEMS} "
    f"WHERE {_CLAIMABLE} AND queue = %s AND due_at <= {{now}} ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED"
)
_HEAD_SQL = (
    f"SELECT due_at FROM {_ITEMS} WHERE {_CLAIMABLE} AND queue = %s AND due_at <= {{now}} ORDER BY due_at LIMIT 1"
)
_LEASE_SQL = (
    f"UPDATE {_ITEMS} FORCE INDEX (PRIMARY) SET lease_owner = %s, claimed_at = %s, lease_expires_at = %s, "
    "attempt = attempt + 1, heartbeat_at = NULL, awaiting_completion = FALSE WHERE id IN ({ids})"
)
_DUE_TIMERS_SQL = (
    f"SELECT id, instance_id, task_id, due_at FROM {_ITEMS} "
    f"WHERE {_CLAIMABLE} AND queue IN ({{queues}}) AND due_at <= {{now}} LIMIT %s"
)

_FINISH_ATTEMPT_SQL = f"DELETE FROM {_ITEMS} WHERE id = %s AND lease_owner = %s AND attempt = %s"
_LIVE_SQL = " AND (lease_expires_at IS NULL OR lease_expires_at > %s)"
_BUSY_SQL = (
    f"SELECT id, EXISTS (SELECT 1 FROM {_ITEMS} WHERE instance_id = run.id AND kind = %s), "
    f"EXISTS (SELECT 1 FROM {_INBOX} WHERE instance_id = run.id) FROM {_RUNS} run WHERE id IN ({{ids}})"
)
_TASK_STATE_SQL = (
    f"SELECT EXISTS (SELECT 1 FROM {_ITEMS} WHERE id = %s AND lease_owner = %s AND attempt = %s), "
    f"EXISTS (SELECT 1 FROM {_INBOX} WHERE instance_id = %s{{unseen}}), "
    f"EXISTS (SELECT 1 FROM {_INBOX} WHERE instance_id = %s AND kind = %s{{unseen}})"
)
_DELETE_INBOX_SQL = f"DELETE FROM {_INBOX} WHERE id = %s"
