"""MySQL and MariaDB (InnoDB): the portable statements, on the server's UTC clock."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from django.db import connection, models
from django.db.models import QuerySet

from ...models import OPEN_STATUSES, HistoryEvent, InboxEvent, WorkflowInstance, WorkItem, WorkItemKind
from .base import Dialect, SchemaExtra, ServerProblem, column, concrete_field


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
        return now.replace(tzinfo=datetime.timezone.utc)


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
