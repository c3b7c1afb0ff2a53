"""No activity runs twice because of the database (issue 15, section 5).

- SQLite as a new project configures it (no ``transaction_mode``, no WAL, a timeout):
  every store transaction takes the write lock at BEGIN, so workers' transactions
  queue for it instead of deadlocking on the lock upgrade, which failed commits.
- A transient error committing a finished result is tried again while its lease holds;
  it never turns into a second execution.
- ``durable_worker`` runs the database checks and refuses to start on an error.

Real ``durable_worker`` processes; every wait awaits an event with a generous bound.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator

import pytest
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction

import django_durable as durable
from django_durable import store
from django_durable.executors.outcomes import Lease, record_outcome
from django_durable.models import (
    OPEN_STATUSES,
    WorkflowInstance,
    WorkflowStatus,
    WorkItem,
    WorkItemKind,
)
from tests.conftest import wait_for
from tests.faults.kit import UPPER, holds_transaction, stop, verdict, wait_log
from tests.testapp.models import ActivityRun
from tests.testapp.worker_orchestration_workflows import wo_fan_out_records

pytestmark = pytest.mark.workers

# DATABASES["default"]["OPTIONS"] as Django's startproject writes them (none), with the
# timeout a new user adds once "database is locked" shows: no transaction_mode, no WAL.
# A longer lease than the suite's: on a loaded machine no lease runs out while a worker
# waits its turn for the write lock, so a second execution can only come from a dropped result.
STARTPROJECT_SQLITE = {
    "DURABLE_TEST_DB_SETTINGS": json.dumps({"OPTIONS": {"timeout": 20}}),
    "DURABLE_TEST_LEASE_SECONDS": "10",
}
RUNS, ACTIVITIES = 20, 3


def start_fan_outs(prefix: str, runs: int = RUNS) -> list[str]:
    for n in range(runs):
        durable.start_workflow(wo_fan_out_records, f"{prefix}{n}", ACTIVITIES, workflow_id=f"{prefix}{n}")
    return [f"{prefix}{n}:{i}" for n in range(runs) for i in range(ACTIVITIES)]


def all_closed() -> bool:
    return not WorkflowInstance.objects.filter(status__in=OPEN_STATUSES).exists()


def assert_each_ran_once(keys: list[str]) -> None:
    executions = collections.Counter(ActivityRun.objects.values_list("key", flat=True))
    assert {key: count for key, count in executions.items() if count != 1} == {}
    assert sorted(executions) == sorted(keys)
    assert set(WorkflowInstance.objects.values_list("status", flat=True)) == {WorkflowStatus.COMPLETED}
    verdict().assert_ok()


def journal_mode(mode: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA journal_mode={mode}")
        return cursor.fetchone()[0]


@pytest.fixture
def rollback_journal(db_vendor: str, transactional_db: None) -> Iterator[None]:
    """The test database in SQLite's default (rollback) journal mode, as a new project's
    is. WAL is a property of the file, which the suite's own connection set; it is set
    again once the workers are gone (request this fixture before ``start_worker``)."""
    if db_vendor != "sqlite":
        pytest.skip("SQLite's configuration: PostgreSQL and MariaDB lock rows and have no such setting")
    assert journal_mode("DELETE") == "delete"
    yield
    assert journal_mode("WAL") == "wal"


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_on_sqlite_as_startproject_configures_it_run_every_activity_once(
    rollback_journal, start_worker, workers
):
    keys = start_fan_outs("np")
    started = [start_worker(env=STARTPROJECT_SQLITE) for _ in range(workers)]
    wait_for(all_closed, timeout=UPPER, what="every run to close")
    stop(*started)
    assert_each_ran_once(keys)
    for worker in started:
        assert "Database error" not in worker.log(), worker.log()


@pytest.mark.parametrize(
    "spec, retried",
    [
        ("before_activity_commit@1=error,before_activity_commit@2=error", True),  # the batch, then it alone
        ("before_activity_commit%0.5=error", False),  # a retry of its own likely, not certain
    ],
)
def test_a_transient_error_committing_a_result_is_tried_again_and_nothing_runs_twice(start_worker, spec, retried):
    keys = start_fan_outs("te", runs=5)
    worker = start_worker(env={"DURABLE_CRASH_POINTS": spec, "DURABLE_CRASH_SEED": "15"})
    wait_for(all_closed, timeout=UPPER, what="every run to close")
    stop(worker)
    assert_each_ran_once(keys)
    log = worker.log()
    assert log.count("django-durable crash point before_activity_commit reached") >= 2, log
    assert not retried or "its lease holds: trying again" in log, log


def test_a_stopping_worker_keeps_trying_a_failing_commit_and_a_second_sigterm_still_exits(start_worker):
    start_fan_outs("ss", runs=1)
    worker = start_worker(env={"DURABLE_CRASH_POINTS": "before_activity_commit%1=error"})  # every commit fails
    wait_log(worker, "(try 3)")
    worker.terminate()
    wait_log(worker, "SIGTERM received")
    # The stopping worker keeps trying, past a lease (try 8 comes 3.15 s after the first
    # failure; the lease is 2 s): its renewer keeps the lease meanwhile.
    wait_log(worker, "its lease holds: trying again in 3.20s (try 8)")
    worker.terminate()
    assert worker.wait(UPPER) == 1
    assert "Second SIGTERM: exiting now" in worker.log()


@pytest.mark.parametrize(
    "vendor, settings, check_id",
    [
        ("sqlite", {"AUTOCOMMIT": False}, "django_durable.E009"),
        ("postgresql", {"OPTIONS": {"isolation_level": 4}}, "django_durable.E005"),  # psycopg's SERIALIZABLE
        ("mysql", {"OPTIONS": {"charset": "utf8mb4", "isolation_level": "repeatable read"}}, "django_durable.E005"),
        # The server's own settings, which OPTIONS do not show: read from it.
        ("mysql", {"OPTIONS": {"init_command": "SET SESSION binlog_format = 'STATEMENT'"}}, "django_durable.E041"),
    ],
    ids=["sqlite-autocommit-off", "postgresql-serializable", "mysql-repeatable-read", "mysql-statement-binlog"],
)
def test_the_worker_refuses_to_start_on_a_database_check_error(start_worker, db_vendor, vendor, settings, check_id):
    if db_vendor != vendor:
        pytest.skip(f"a {vendor} setting")
    handle = durable.start_workflow(wo_fan_out_records, "refused", 1, workflow_id="refused")
    worker = start_worker(env={"DURABLE_TEST_DB_SETTINGS": json.dumps(settings)})
    assert worker.wait(UPPER) == 1
    log = worker.log()
    assert "SystemCheckError" in log and check_id in log, log
    assert " started on queues" not in log, log
    (task,) = WorkItem.objects.filter(instance__run_id=handle.run_id)
    assert (task.kind, task.lease_owner, task.attempt) == (WorkItemKind.WORKFLOW, None, 0)
    assert not ActivityRun.objects.exists()


def test_the_worker_starts_on_sqlite_as_startproject_configures_it_with_a_warning_only(rollback_journal, start_worker):
    worker = start_worker(env=STARTPROJECT_SQLITE)
    log = wait_log(worker, " started on queues")
    assert "django_durable.W001" in log and "WAL" in log, log
    stop(worker)


@pytest.mark.database
@pytest.mark.django_db(transaction=True)
def test_a_store_transaction_on_sqlite_begins_immediate_whatever_transaction_mode_says(db_vendor):
    if db_vendor != "sqlite":
        pytest.skip("SQLite's BEGIN")
    options = connection.settings_dict["OPTIONS"]
    configured = options.pop("transaction_mode")
    connection.close()  # the next connection reads OPTIONS again
    statements: list[str] = []

    def log(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    try:
        with connection.execute_wrapper(log):
            with store.write_transaction():
                assert holds_transaction()  # the write lock, before any statement of the block
                assert connection.transaction_mode is None  # only the store's BEGIN is IMMEDIATE
            with transaction.atomic():  # Django's own, as configured: deferred, no lock yet
                assert not holds_transaction()
        assert statements == ["BEGIN IMMEDIATE", "BEGIN"]
    finally:
        options["transaction_mode"] = configured
        connection.close()


@pytest.mark.engine
def test_record_outcome_tries_a_transient_error_again_only_while_the_lease_holds():
    failures = [OperationalError("database is locked"), InterfaceError("connection already closed")]

    def record() -> str:
        if failures:
            raise failures.pop(0)
        return "recorded"

    assert record_outcome(record, lease=Lease(60), what="a result") == "recorded"
    assert failures == []

    def deadlock() -> None:
        raise OperationalError("deadlock detected")

    gone = Lease(60)
    gone.renewed(asked_at=0.0, lost=True)  # a renewal found it expired or taken
    for lease in (gone, Lease(0)):  # ... or nothing renewed it for a lease
        with pytest.raises(OperationalError):
            record_outcome(deadlock, lease=lease, what="a result")

    def bug() -> None:
        raise IntegrityError("would fail the same way again")

    with pytest.raises(IntegrityError):
        record_outcome(bug, lease=Lease(60), what="a result")
