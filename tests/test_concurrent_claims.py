"""Workers claim side by side: while one holds the rows it claimed (its transaction still open),
the next finds others. On InnoDB this needs every locking read to find its rows, in its order,
in one range of one index (a locking read locks every index record it scans); ``EXPLAIN`` shows
the claim, dispatch, timer and reaper statements using the indexes the MySQL dialect adds."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

import django_durable as durable
from django_durable import store
from django_durable.models import WorkflowInstance, WorkItem, WorkItemKind
from tests.testapp.workflows import fan_out

pytestmark = pytest.mark.database

TIMEOUT = 30


@pytest.fixture
def row_locks(transactional_db: None) -> None:
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has no row locks: its writers take turns")


def in_turn(claimers: int, claim: Callable[[int], list[int]]) -> list[list[int]]:
    """Each claimer claims in its own transaction after the one before it has claimed, and all
    commit only once the last has claimed: every claim runs while the others hold their rows."""
    claimed: list[list[int]] = [[] for _ in range(claimers)]
    turns = [threading.Event() for _ in range(claimers + 1)]
    errors: list[BaseException] = []

    def claimer(index: int) -> None:
        try:
            assert turns[index].wait(TIMEOUT)
            with transaction.atomic():
                claimed[index] = claim(index)
                turns[index + 1].set()
                assert turns[claimers].wait(TIMEOUT)
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)
            turns[index + 1].set()
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer, args=(index,)) for index in range(claimers)]
    for thread in threads:
        thread.start()
    turns[0].set()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not errors, errors
    return claimed


@pytest.mark.parametrize("claimers", [2, 3])
@pytest.mark.parametrize("queues", [["default"], ["default", "other"]], ids=["one-queue", "two-queues"])
def test_workers_claim_workflow_tasks_side_by_side(row_locks: None, claimers: int, queues: list[str]) -> None:
    for n in range(4 * claimers):
        durable.start_workflow(fan_out, 1, workflow_id=f"side-{n}", queue=queues[n % len(queues)])

    def claim(index: int) -> list[int]:
        claims = store.claim(
            owner=f"worker-{index}", kind=WorkItemKind.WORKFLOW, queues=queues, limit=3, lease_seconds=60
        )
        return [item.id for item in claims]

    claimed = in_turn(claimers, claim)
    assert [len(ids) for ids in claimed] == [3] * claimers
    assert len({item for ids in claimed for item in ids}) == 3 * claimers


@pytest.mark.parametrize("claimers", [2, 3])
def test_dispatchers_take_activities_side_by_side(row_locks: None, claimers: int) -> None:
    run = WorkflowInstance.objects.create(workflow_id="side-dispatch", workflow_name="fan_out", queue="default")
    now = store.db_now()
    WorkItem.objects.bulk_create(
        WorkItem(instance=run, kind=WorkItemKind.ACTIVITY, queue="default", name="double", task_id=n, due_at=now)
        for n in range(4 * claimers)
    )

    def dispatch(index: int) -> list[int]:
        return [item for item, _ in store.dispatch_activities(queues=["default"], limit=3, dispatch_timeout=60)]

    dispatched = in_turn(claimers, dispatch)
    assert [len(ids) for ids in dispatched] == [3] * claimers
    assert len({item for ids in dispatched for item in ids}) == 3 * claimers


@pytest.fixture
def full_table(row_locks: None) -> None:
    """Work items enough that the optimizer chooses by the indexes, not a scan of a tiny table:
    of every kind, in two queues, leased and not, due and not."""
    if connection.vendor != "mysql":
        pytest.skip("InnoDB's plans; PostgreSQL's partial indexes are shown on the benchmarks page")
    runs = WorkflowInstance.objects.bulk_create(
        WorkflowInstance(workflow_id=f"explain-{n}", workflow_name="fan_out", queue="default") for n in range(200)
    )
    now = store.db_now()
    items = []
    for n, run in enumerate(runs * 10):
        leased = n % 3 == 0
        items.append(
            WorkItem(
                instance=run,
                kind=(WorkItemKind.ACTIVITY, WorkItemKind.TIMER)[n % 2],
                queue=("default", "other")[n % 4 // 2],
                name="double",
                task_id=n,
                due_at=now + datetime.timedelta(seconds=(n % 5) - 2),
                lease_owner="someone" if leased else None,
                lease_expires_at=now + datetime.timedelta(seconds=(n % 7) - 3) if leased else None,
            )
        )
    WorkItem.objects.bulk_create(items)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE TABLE {connection.ops.quote_name(WorkItem._meta.db_table)}")


def plans(operation: Callable[[], object], marker: str) -> list[dict[str, object]]:
    """``EXPLAIN`` of the statements of ``operation`` that read work items and contain ``marker``."""
    with CaptureQueriesContext(connection) as captured:
        operation()
    statements = [
        query["sql"]
        for query in captured.captured_queries
        if query["sql"].startswith("SELECT") and WorkItem._meta.db_table in query["sql"] and marker in query["sql"]
    ]
    assert statements, [query["sql"] for query in captured.captured_queries]
    found = []
    with connection.cursor() as cursor:
        for sql in statements:
            cursor.execute(f"EXPLAIN {sql}")
            names = [column[0] for column in cursor.description]
            found += [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return [plan for plan in found if plan["table"] in (WorkItem._meta.db_table, "U0")]


def assert_index(found: list[dict[str, object]], index: str, *, locking: bool) -> None:
    assert found, "no plan read the work items"
    for plan in found:
        if locking:
            assert plan["key"] == index, plan
        else:
            # A read that locks nothing (the reaper's) may be driven from the runs' table with
            # the index as a rowid filter (type ref|filter, key "fk|index"): the index still
            # bounds the work items it reads. MariaDB picks either plan on so small a table.
            assert index in str(plan["key"]).split("|"), plan
        # A locking read that sorts locks every row it sorted (the reaper's read locks nothing,
        # and every row it reads is one to reap).
        assert not locking or "filesort" not in str(plan["Extra"] or ""), plan


@pytest.mark.parametrize(
    ("operation", "marker", "index"),
    [
        (
            lambda: store.claim(
                owner="explain", kind=WorkItemKind.ACTIVITY, queues=["default"], limit=8, lease_seconds=30
            ),
            "SKIP LOCKED",
            "durable_workitem_claim_order",
        ),
        (
            lambda: store.dispatch_activities(queues=["default"], limit=8, dispatch_timeout=60),
            "SKIP LOCKED",
            "durable_workitem_claim_order",
        ),
        (lambda: store.fire_due_timers(queues=["default"], limit=8), "due_at", "durable_workitem_claim_order"),
        (
            lambda: store.reap_expired_leases(limit=8, workflow_backoff=1, workflow_backoff_max=1, max_failures=3),
            "lease_expires_at",
            "durable_workitem_leased",
        ),
    ],
    ids=["claim", "dispatch", "timers", "reaper"],
)
def test_on_innodb_each_statement_reads_one_range_of_its_index(
    full_table: None, operation: Callable[[], object], marker: str, index: str
) -> None:
    assert_index(plans(operation, marker), index, locking=marker == "SKIP LOCKED")
