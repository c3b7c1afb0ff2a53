"""The store's own rules (django_durable/store/), each tested on its functions against the
test database: fencing (a write that finishes claimed work applies only while the item
still carries the claimer's lease and attempt, else ``LeaseLost`` and nothing written),
attempt tokens, lease renewal, leases capped by the attempt's timeout, claims, group
commits, and the lock order (a run's row before its work items; claims lock no run).

Time moves by the test clock (``store.clock_override``) where a lease must run out.
Row locks are PostgreSQL's and MariaDB's (InnoDB's): the tests that hold one from a second
connection run there; on SQLite, where writers are serialised instead, its rule (the write
lock taken at BEGIN) is tested. A store call that should not wait on a held lock runs under
a lock timeout of a few seconds: if it waited, it fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext

import django_durable as durable
from django_durable import store
from django_durable.engine.events import EventKind
from django_durable.exceptions import ActivityNotPending
from django_durable.executors.workflow_tasks import execute_workflow_task
from django_durable.models import HistoryEvent, InboxEvent, WorkflowInstance, WorkflowStatus, WorkItem, WorkItemKind
from django_durable.tokens import make_task_token
from tests.conftest import has_row_locks, wait_for
from tests.testapp.orchestration_workflows import ow_parent
from tests.testapp.workflows import fan_out, sequence, sleeper, times_out

pytestmark = pytest.mark.database

LEASE = 10.0
RETRY_DELAY = 1.0  # the default RetryPolicy's first interval (``record`` has no policy of its own)
WAIT = 30.0  # an upper bound on any wait for another thread, never an expected duration
RUNS, ITEMS = WorkflowInstance._meta.db_table, WorkItem._meta.db_table
row_locks_only = pytest.mark.skipif(
    not has_row_locks(), reason="row locks held from a second connection: SQLite has none"
)


class Clock:
    """The test clock: what ``db_now()`` and the store's statements read as now."""

    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.timezone.utc)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@pytest.fixture
def clock(db: None) -> Iterator[Clock]:
    assert store.clock_override is None
    now = Clock()
    store.clock_override = now
    try:
        yield now
    finally:
        store.clock_override = None


def scheduled(wid: str = "rules", workflow: Any = sequence, *args: Any) -> WorkflowInstance:
    """A run whose first workflow task has run here: its activity (or timer) is scheduled, unclaimed."""
    durable.start_workflow(workflow, *(args or (wid, 1)), workflow_id=wid)
    [task] = store.claim(owner="setup", kind=WorkItemKind.WORKFLOW, queues=["default"], limit=1, lease_seconds=LEASE)
    execute_workflow_task(task)
    return WorkflowInstance.objects.get(workflow_id=wid)


def lease(owner: str, kind: str = WorkItemKind.ACTIVITY, seconds: float = LEASE) -> store.Claim:
    claims = store.claim(owner=owner, kind=kind, queues=["default"], limit=1, lease_seconds=seconds)
    assert len(claims) == 1, claims
    return claims[0]


def reap() -> int:
    return store.reap_expired_leases(limit=10, workflow_backoff=0, workflow_backoff_max=0, max_failures=10)


def reclaimed(
    clock: Clock, old_owner: str = "old-worker", new_owner: str = "new-worker"
) -> tuple[store.Claim, store.Claim]:
    """Attempt 1 leased to ``old_owner``, its lease run out and reaped, attempt 2 leased to ``new_owner``."""
    old = lease(old_owner)
    clock.advance(LEASE + 1)
    assert reap() == 1
    clock.advance(RETRY_DELAY + 1)
    new = lease(new_owner)
    assert (new.id, new.attempt, old.attempt) == (old.id, 2, 1)
    return old, new


def snapshot() -> tuple[list[Any], ...]:
    """Every row the store writes for runs."""
    return (
        list(WorkflowInstance.objects.order_by("pk").values()),
        list(HistoryEvent.objects.order_by("pk").values()),
        list(InboxEvent.objects.order_by("pk").values()),
        list(WorkItem.objects.order_by("pk").values()),
    )


def item_row(item_id: int) -> Any:
    return WorkItem.objects.values().get(pk=item_id)


def completed_attempts(wid: str) -> list[tuple[Any, ...]]:
    """The ActivityCompleted events a run received (inbox or history): (result, attempt)."""
    payloads = [
        *InboxEvent.objects.filter(instance__workflow_id=wid, kind=EventKind.ACTIVITY_COMPLETED).values_list(
            "payload", flat=True
        ),
        *HistoryEvent.objects.filter(instance__workflow_id=wid, kind=EventKind.ACTIVITY_COMPLETED).values_list(
            "payload", flat=True
        ),
    ]
    return [(payload["result"], payload["attempt"]) for payload in payloads]


# -- fencing ---------------------------------------------------------------------------

STALE_WRITES: dict[str, Callable[[store.Claim], object]] = {
    "complete": lambda item: store.complete_activity(item, "stale"),
    "fail": lambda item: store.fail_activity(item, {"type": "RuntimeError", "message": "stale"}),
    "fail for good": lambda item: store.fail_activity(item, {"type": "E", "message": "stale"}, retryable=False),
    "heartbeat": lambda item: store.record_heartbeat(item, {"stale": True}, lease_seconds=LEASE),
    "await completion": lambda item: store.await_completion(item, None),
}


@pytest.mark.parametrize("new_owner", ["new-worker", "old-worker"], ids=["another-worker", "the-same-worker"])
@pytest.mark.parametrize("write", list(STALE_WRITES))
def test_a_write_of_an_attempt_whose_lease_was_reclaimed_and_leased_again_is_refused(
    clock: Clock, write: str, new_owner: str
) -> None:
    """Fenced by owner and attempt: the stale attempt 1 writes nothing, whether attempt 2
    went to another worker or to the same one."""
    scheduled()
    old, new = reclaimed(clock, new_owner=new_owner)
    before = snapshot()
    with pytest.raises(store.LeaseLost):
        STALE_WRITES[write](old)
    assert snapshot() == before
    store.discard(old)  # discard does not raise: it deletes nothing
    assert snapshot() == before

    store.complete_activity(new, "fresh")  # the live attempt still finishes
    assert completed_attempts("rules") == [("fresh", 2)]


def test_a_stale_workflow_task_writes_nothing(clock: Clock) -> None:
    durable.start_workflow(sequence, "rules", 1, workflow_id="rules")
    old = lease("old-worker", WorkItemKind.WORKFLOW)
    clock.advance(LEASE + 1)
    assert reap() == 1
    new = lease("new-worker", WorkItemKind.WORKFLOW)
    assert (new.id, new.attempt) == (old.id, 2)
    before = snapshot()
    with pytest.raises(store.LeaseLost):
        store.complete_workflow_task(
            old, new_events=[], inbox_ids=[], status=WorkflowStatus.COMPLETED, vars={}, result="stale"
        )
    with pytest.raises(store.LeaseLost):
        store.fail_workflow_task(old, {"message": "stale"}, max_failures=1, backoff=0, backoff_max=0)
    assert snapshot() == before
    execute_workflow_task(new)
    assert WorkflowInstance.objects.get(workflow_id="rules").status == WorkflowStatus.RUNNING  # its activity scheduled


def test_a_stale_attempt_token_cannot_finish_the_activity(clock: Clock) -> None:
    run = scheduled()
    first = lease("worker")
    token = store.current_attempt_token("rules", str(first.task_id))
    assert token.attempt == 1 and store.pending_attempt(token).attempt == 1
    clock.advance(LEASE + 1)
    assert reap() == 1
    clock.advance(RETRY_DELAY + 1)
    second = lease("worker")
    before = snapshot()
    stale = make_task_token(item_id=token.item_id, run_id=str(run.run_id), task_id=token.task_id, attempt=1)
    with pytest.raises(ActivityNotPending):
        store.pending_attempt(token)
    for finish in (
        lambda: durable.complete_activity(stale, "stale"),
        lambda: durable.fail_activity(stale, "stale"),
        lambda: durable.heartbeat_activity(stale, {"stale": True}),
    ):
        with pytest.raises(ActivityNotPending):
            finish()
    assert snapshot() == before

    assert second.task_id == token.task_id
    current = make_task_token(item_id=second.id, run_id=str(run.run_id), task_id=token.task_id, attempt=2)
    durable.complete_activity(current, "by the current token")
    assert completed_attempts("rules") == [("by the current token", 2)]


def test_a_token_cannot_finish_an_attempt_whose_lease_ran_out_before_it_was_reaped(clock: Clock) -> None:
    """``live_only`` (every token finish): a lease that expired is no longer pending, reaped
    or not. The worker that holds the attempt is not held to it (its renewer may be late)."""
    scheduled()
    item = lease("worker")
    clock.advance(LEASE + 1)
    before = snapshot()
    for finish in (
        lambda: store.complete_activity(item, "late", live_only=True),
        lambda: store.fail_activity(item, {"message": "late"}, live_only=True),
        lambda: store.record_heartbeat(item, None, lease_seconds=LEASE, live_only=True),
    ):
        with pytest.raises(store.LeaseLost):
            finish()
    assert snapshot() == before
    store.complete_activity(item, "by its worker")
    assert completed_attempts("rules") == [("by its worker", 1)]


# -- leases ---------------------------------------------------------------------------------


def test_a_renewal_by_the_old_holder_fails_and_extends_nothing(clock: Clock) -> None:
    scheduled()
    old, new = reclaimed(clock)
    held = item_row(new.id)
    renewal = [store.LeaseRenewal(old.id, old.attempt, None)]
    assert store.renew_leases(owner="old-worker", leases=renewal, lease_seconds=LEASE) == {old.id}
    clock.advance(1)
    assert store.renew_leases(owner="old-worker", leases=renewal, lease_seconds=LEASE) == {old.id}
    assert item_row(new.id) == held

    ours = [store.LeaseRenewal(new.id, new.attempt, None)]
    assert store.renew_leases(owner="new-worker", leases=ours, lease_seconds=LEASE) == set()
    assert item_row(new.id)["lease_expires_at"] == clock.now + datetime.timedelta(seconds=LEASE)


def test_an_expired_lease_is_not_renewed_it_is_the_reapers(clock: Clock) -> None:
    scheduled()
    item = lease("worker")
    expired_at = item_row(item.id)["lease_expires_at"]
    clock.advance(LEASE + 1)
    lost = store.renew_leases(owner="worker", leases=[store.LeaseRenewal(item.id, 1, None)], lease_seconds=LEASE)
    assert lost == {item.id}
    assert item_row(item.id)["lease_expires_at"] == expired_at
    assert reap() == 1
    assert item_row(item.id)["lease_owner"] is None


def test_a_renewal_leaves_an_attempt_awaiting_completion_alone(clock: Clock) -> None:
    """Once it awaits completion by token, only the attempt's own timeouts bound it."""
    scheduled("rules", times_out, "slow")
    item = lease("worker")
    store.await_completion(item, None)
    deadline = item.claimed_at + datetime.timedelta(seconds=1)  # its start-to-close timeout
    assert item_row(item.id)["lease_expires_at"] == deadline
    store.renew_leases(owner="worker", leases=[store.LeaseRenewal(item.id, item.attempt, None)], lease_seconds=LEASE)
    assert item_row(item.id)["lease_expires_at"] == deadline


def test_a_lease_never_outlives_its_attempts_timeout(clock: Clock) -> None:
    """``too_slow`` has a start-to-close timeout of 1 s: neither the claim nor a renewal
    leases it longer."""
    scheduled("rules", times_out, "slow")
    item = lease("worker", seconds=LEASE)
    deadline = item.claimed_at + datetime.timedelta(seconds=1)
    assert item.lease_expires_at == item_row(item.id)["lease_expires_at"] == deadline
    clock.advance(0.5)
    cap = store.attempt_deadline(item, None)
    assert cap == deadline
    renewal = [store.LeaseRenewal(item.id, item.attempt, cap)]
    assert store.renew_leases(owner="worker", leases=renewal, lease_seconds=LEASE) == set()
    assert item_row(item.id)["lease_expires_at"] == deadline
    store.record_heartbeat(item, None, lease_seconds=LEASE)
    assert item_row(item.id)["lease_expires_at"] == deadline


# -- claims ---------------------------------------------------------------------------------


def test_a_claim_takes_only_unleased_unparked_due_items(clock: Clock) -> None:
    scheduled()
    item = lease("first")
    assert (
        store.claim(owner="second", kind=WorkItemKind.ACTIVITY, queues=["default"], limit=5, lease_seconds=LEASE) == []
    )
    assert store.claim_item(item.id, owner="second", lease_seconds=LEASE) is None
    assert item_row(item.id)["lease_owner"] == "first"

    clock.advance(LEASE + 1)
    assert reap() == 1  # the retry is due RETRY_DELAY from now
    assert store.claim_item(item.id, owner="second", lease_seconds=LEASE) is None
    clock.advance(RETRY_DELAY + 1)
    WorkItem.objects.filter(pk=item.id).update(parked_at=clock.now)
    assert store.claim_item(item.id, owner="second", lease_seconds=LEASE) is None
    WorkItem.objects.filter(pk=item.id).update(parked_at=None)
    claimed = store.claim_item(item.id, owner="second", lease_seconds=LEASE)
    assert claimed is not None and (claimed.owner, claimed.attempt) == ("second", 2)


def test_a_group_commit_records_the_live_attempts_and_marks_the_stale_one_lost(clock: Clock) -> None:
    for wid in ("a", "b"):
        scheduled(wid)
    short = lease("worker", seconds=LEASE)
    long = lease("worker", seconds=3 * LEASE)
    clock.advance(LEASE + 1)
    assert reap() == 1  # ``short``'s attempt
    batch = [store.Completion(short, "stale"), store.Completion(long, "live")]
    store.complete_activities(batch)
    assert [completion.lost for completion in batch] == [True, False]
    stale_run = WorkflowInstance.objects.get(pk=short.instance_id).workflow_id
    live_run = WorkflowInstance.objects.get(pk=long.instance_id).workflow_id
    assert completed_attempts(stale_run) == [] and completed_attempts(live_run) == [("live", 1)]
    assert item_row(short.id)["lease_owner"] is None  # the reaped attempt's retry, untouched


# -- locks: the order, and what a claim, a renewal, the reaper and timers do not wait for ----


def _text(sql: str) -> str:
    return " ".join(sql.replace('"', "").replace("`", "").split())


def locked_tables(sql: str) -> set[str]:
    """The tables (runs, work items) whose existing rows a statement locks: by UPDATE,
    DELETE, or SELECT ... FOR [NO KEY] UPDATE of the table last named before it."""
    text = _text(sql)
    found = {table for table in (RUNS, ITEMS) if re.search(rf"\b(UPDATE|DELETE FROM) {table}\b", text)}
    for match in re.finditer(r"\bFOR (NO KEY )?UPDATE\b", text):
        named = re.findall(r"\bFROM (\w+)", text[: match.start()])
        if named and named[-1] in (RUNS, ITEMS):
            found.add(named[-1])
    return found


def lock_sequence(queries: CaptureQueriesContext) -> list[set[str]]:
    return [locked for query in queries.captured_queries if (locked := locked_tables(query["sql"]))]


def _complete(clock: Clock) -> Callable[[], object]:
    scheduled()
    item = lease("worker")
    return lambda: store.complete_activity(item, "done")


def _fail(clock: Clock) -> Callable[[], object]:
    scheduled()
    item = lease("worker")
    return lambda: store.fail_activity(item, {"type": "E", "message": "no"}, retryable=False)


def _retry(clock: Clock) -> Callable[[], object]:
    scheduled()
    item = lease("worker")
    return lambda: store.fail_activity(item, {"type": "E", "message": "again"})


def _reap(clock: Clock) -> Callable[[], object]:
    scheduled()
    lease("worker")
    clock.advance(LEASE + 1)
    return reap


def _workflow_task(clock: Clock) -> Callable[[], object]:
    durable.start_workflow(sequence, "rules", 1, workflow_id="rules")
    task = lease("worker", WorkItemKind.WORKFLOW)
    return lambda: execute_workflow_task(task)


def _fire_timer(clock: Clock) -> Callable[[], object]:
    scheduled("rules", sleeper, 5)
    clock.advance(6)
    return lambda: store.fire_due_timers(queues=["default"], limit=10)


def _terminate(clock: Clock) -> Callable[[], object]:
    scheduled()
    lease("worker")
    return lambda: store.terminate("rules", None, "enough")


def _signal(clock: Clock) -> Callable[[], object]:
    scheduled()
    return lambda: store.signal("rules", None, "go", {})


def _child_closes(clock: Clock) -> Callable[[], object]:
    scheduled("parent", ow_parent, [1])
    child = lease("worker", WorkItemKind.WORKFLOW)
    return lambda: execute_workflow_task(child)


# Each sets up (outside the capture) and returns the store call whose statements are checked,
# with the tables it must lock (a case that locked nothing would prove nothing).
LOCKING: dict[str, tuple[Callable[[Clock], Callable[[], object]], set[str]]] = {
    "complete an activity": (_complete, {RUNS, ITEMS}),
    "fail an activity for good": (_fail, {RUNS, ITEMS}),
    "schedule an activity's retry": (_retry, {RUNS, ITEMS}),
    "reap an expired lease": (_reap, {RUNS, ITEMS}),
    "complete a workflow task": (_workflow_task, {RUNS, ITEMS}),
    "fire a timer": (_fire_timer, {RUNS, ITEMS}),
    "terminate a run": (_terminate, {RUNS, ITEMS}),
    "signal a run": (_signal, {RUNS}),
    "close a child, telling its parent": (_child_closes, {RUNS, ITEMS}),
}


@row_locks_only
@pytest.mark.parametrize("operation", list(LOCKING))
def test_a_run_is_locked_before_its_work_items(clock: Clock, operation: str) -> None:
    setup, expected = LOCKING[operation]
    call = setup(clock)
    with CaptureQueriesContext(connection) as queries:
        call()
    sequence_of_locks = lock_sequence(queries)
    assert set().union(*sequence_of_locks) == expected, queries.captured_queries
    first_run = next(i for i, locked in enumerate(sequence_of_locks) if RUNS in locked)
    first_item = next((i for i, locked in enumerate(sequence_of_locks) if ITEMS in locked), len(sequence_of_locks))
    assert first_run < first_item, [query["sql"] for query in queries.captured_queries]


@row_locks_only
def test_a_closing_child_locks_its_parent_with_itself_in_id_order(clock: Clock) -> None:
    """Not after itself: against a batch that locks the parent first that would deadlock."""
    parent = scheduled("parent", ow_parent, [1])
    child_task = lease("worker", WorkItemKind.WORKFLOW)
    assert child_task.instance_id != parent.pk
    with CaptureQueriesContext(connection) as queries:
        execute_workflow_task(child_task)
    run_locks = [_text(q["sql"]) for q in queries.captured_queries if RUNS in locked_tables(q["sql"])]
    first = sorted((parent.pk, child_task.instance_id))
    if connection.vendor == "postgresql":  # in one statement
        assert run_locks and "ORDER BY id FOR NO KEY UPDATE" in run_locks[0], run_locks
        assert "{" + ",".join(map(str, first)) + "}" in run_locks[0], run_locks[0]
    elif connection.vendor == "mysql":  # in one statement too
        assert run_locks and "ORDER BY id FOR UPDATE" in run_locks[0], run_locks
        assert f"IN ({', '.join(map(str, first))})" in run_locks[0], run_locks[0]
    else:  # a statement a run
        locked = [re.search(rf"WHERE {RUNS}\.id = (\d+) ", sql) for sql in run_locks[:2]]
        assert [int(match[1]) if match else None for match in locked] == first, run_locks
    assert WorkflowInstance.objects.get(pk=child_task.instance_id).status == WorkflowStatus.COMPLETED
    assert InboxEvent.objects.filter(instance=parent, kind=EventKind.CHILD_WORKFLOW_COMPLETED).count() == 1


def test_a_claim_locks_no_run(clock: Clock) -> None:
    scheduled()
    with CaptureQueriesContext(connection) as queries:
        lease("worker")
    assert queries.captured_queries
    statements = [_text(q["sql"]) for q in queries.captured_queries]
    assert not [sql for sql in statements if RUNS in locked_tables(sql)], statements
    assert not [sql for sql in statements if re.search(rf"\b(INSERT INTO|UPDATE|DELETE FROM) {RUNS}\b", sql)]


@contextlib.contextmanager
def held(sql: str, params: list[Any]) -> Iterator[None]:
    """Another connection holds the row lock ``sql`` takes, in an open transaction, until the block ends."""
    locked, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def hold() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(sql, params)
                assert cursor.fetchall(), "nothing to lock"
                locked.set()
                release.wait(WAIT)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failure.append(exc)
            locked.set()
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(WAIT) and not failure, failure
        yield
    finally:
        release.set()
        holder.join(WAIT)
    assert not holder.is_alive() and not failure, failure


@contextlib.contextmanager
def not_waiting() -> Iterator[None]:
    """Statements here that would wait on a row lock fail after a few seconds instead."""
    postgresql = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '5s'" if postgresql else "SET SESSION innodb_lock_wait_timeout = 5")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout" if postgresql else "SET SESSION innodb_lock_wait_timeout = DEFAULT")


def lock_run(instance_id: int) -> tuple[str, list[Any]]:
    """The lock the store takes on a run's row (PostgreSQL's weaker one lets foreign keys to it be checked)."""
    strength = "NO KEY UPDATE" if connection.vendor == "postgresql" else "UPDATE"
    return f"SELECT id FROM {RUNS} WHERE id = %s FOR {strength}", [instance_id]


def lock_item(item_id: int) -> tuple[str, list[Any]]:
    return f"SELECT id FROM {ITEMS} WHERE id = %s FOR UPDATE", [item_id]


@row_locks_only
@pytest.mark.django_db(transaction=True)
def test_a_claim_skips_a_locked_item_and_does_not_wait_for_its_run() -> None:
    run = scheduled()
    item = WorkItem.objects.get(instance=run, kind=WorkItemKind.ACTIVITY)
    with held(*lock_item(item.pk)), not_waiting():
        assert (
            store.claim(owner="w", kind=WorkItemKind.ACTIVITY, queues=["default"], limit=5, lease_seconds=LEASE) == []
        )
    with held(*lock_run(run.pk)), not_waiting():
        claimed = lease("w")
    assert claimed.id == item.pk


@row_locks_only
@pytest.mark.django_db(transaction=True)
def test_a_claim_by_id_skips_an_item_locked_elsewhere_on_postgresql_and_waits_for_it_on_mariadb() -> None:
    """A remote executor's claim of the item it was sent. A PostgreSQL row lock is a claimer's
    or a finisher's: the item is taken. InnoDB also locks, for a moment, rows a scan passes over
    (a dispatch's, a run's close): there the claim waits, or the item would wait DISPATCH_TIMEOUT."""
    run = scheduled()
    item = WorkItem.objects.get(instance=run, kind=WorkItemKind.ACTIVITY)
    if connection.vendor == "postgresql":
        with held(*lock_item(item.pk)), not_waiting():
            assert store.claim_item(item.pk, owner="remote", lease_seconds=LEASE) is None
        assert item_row(item.pk)["lease_owner"] is None
        return
    claimed: list[store.Claim | None] = []

    def claim() -> None:
        try:
            claimed.append(store.claim_item(item.pk, owner="remote", lease_seconds=LEASE))
        finally:
            connection.close()

    claimer = threading.Thread(target=claim)
    with held(*lock_item(item.pk)):
        claimer.start()
        wait_for(someone_waits_on_a_lock, timeout=WAIT, interval=LOCK_POLL, what="the claim to wait on the item")
    claimer.join(WAIT)
    assert len(claimed) == 1 and claimed[0] is not None and claimed[0].owner == "remote", claimed
    assert item_row(item.pk)["lease_owner"] == "remote"


@row_locks_only
@pytest.mark.django_db(transaction=True)
def test_a_renewal_skips_an_item_being_finished_instead_of_waiting() -> None:
    scheduled()
    item = lease("w")
    before = item_row(item.id)["lease_expires_at"]
    renewal = [store.LeaseRenewal(item.id, item.attempt, None)]
    with held(*lock_item(item.id)), not_waiting():
        assert store.renew_leases(owner="w", leases=renewal, lease_seconds=3 * LEASE) == set()  # busy, not lost
    assert item_row(item.id)["lease_expires_at"] == before
    assert store.renew_leases(owner="w", leases=renewal, lease_seconds=3 * LEASE) == set()
    assert item_row(item.id)["lease_expires_at"] > before


@row_locks_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("what", ["reaper", "timer"])
def test_the_reaper_and_timers_skip_a_run_locked_by_someone_else(what: str) -> None:
    if what == "reaper":
        run = scheduled()
        lease("w", seconds=0)  # expired at once
        act = reap
    else:
        run = scheduled("rules", sleeper, 0)
        act = lambda: store.fire_due_timers(queues=["default"], limit=10)  # noqa: E731
    before = snapshot()
    with held(*lock_run(run.pk)), not_waiting():
        assert act() == 0
    assert snapshot() == before
    assert act() == 1


@row_locks_only
@pytest.mark.django_db(transaction=True)
def test_closing_a_run_waits_on_no_other_runs_items() -> None:
    """A run's close deletes its outstanding work items. InnoDB locks each row a DELETE scans,
    and scans the whole table for a run that holds much of it: the close would wait on another
    run's item being finished (two such closes deadlock) unless it deletes by primary key."""
    big = scheduled("big", fan_out, 12)
    other = scheduled("other")
    item = WorkItem.objects.get(instance=other, kind=WorkItemKind.ACTIVITY)
    assert WorkItem.objects.filter(instance=big).count() == 12
    with held(*lock_item(item.pk)), not_waiting():
        store.terminate("big", None, "enough")
    assert not WorkItem.objects.filter(instance=big).exists()
    assert WorkItem.objects.filter(pk=item.pk).exists()


# Deadlocks: PostgreSQL aborts one of two transactions that wait on each other (after its
# deadlock_timeout) with "deadlock detected", InnoDB at once with "Deadlock found"; the
# store's order must never let that happen.


def race_a_completion(item: store.Claim, run_id: int, first: str) -> list[str]:
    """Another transaction locks ``first`` (the run or the item), lets a completion of
    ``item`` start and wait on it, then locks the other one. The errors either side met."""
    errors: list[str] = []
    proceed, waiting_seen = threading.Event(), threading.Event()
    ordered = [lock_run(run_id), lock_item(item.id)]
    if first == "item":
        ordered.reverse()

    def other() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(*ordered[0])
                proceed.set()
                waiting_seen.wait(WAIT)
                cursor.execute(*ordered[1])
        except DatabaseError as exc:
            errors.append(f"other: {exc}")
        finally:
            proceed.set()
            connection.close()

    def complete() -> None:
        try:
            store.complete_activity(item, "done")
        except (DatabaseError, store.LeaseLost) as exc:
            errors.append(f"completion: {exc}")
        finally:
            connection.close()

    holder = threading.Thread(target=other)
    holder.start()
    assert proceed.wait(WAIT)
    completion = threading.Thread(target=complete)
    completion.start()
    try:
        wait_for(
            someone_waits_on_a_lock,
            timeout=WAIT,
            interval=LOCK_POLL,
            what="the completion to wait on the held lock",
        )
    finally:
        waiting_seen.set()
        holder.join(WAIT)
        completion.join(WAIT)
    assert not holder.is_alive() and not completion.is_alive()
    return errors


# InnoDB refreshes its copy of INNODB_TRX only when nobody read it for 0.1 s: a faster poll
# would read the same stale copy for ever.
LOCK_POLL = 0.05 if connection.vendor == "postgresql" else 0.25


def someone_waits_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            )
        else:
            cursor.execute(
                "SELECT count(*) FROM information_schema.INNODB_TRX t "
                "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
                "WHERE p.DB = DATABASE() AND t.trx_state = 'LOCK WAIT'"
            )
        return bool(cursor.fetchone()[0])


@row_locks_only
@pytest.mark.django_db(transaction=True)
def test_a_transaction_that_locks_the_run_first_never_deadlocks_with_a_completion() -> None:
    """A verb, the reaper or a timer locks the run, then its items; a completion waits for
    the run holding nothing, and goes on once the run is free."""
    run = scheduled()
    item = lease("w")
    assert race_a_completion(item, run.pk, first="run") == []
    assert completed_attempts("rules") == [("done", 1)]


@row_locks_only
@pytest.mark.django_db(transaction=True)
def test_the_deadlock_the_lock_order_prevents_is_detected_here() -> None:
    """The check above can fail: a transaction that locks the item first, then the run,
    deadlocks with a completion (which holds the run and waits for the item)."""
    run = scheduled()
    item = lease("w")
    errors = race_a_completion(item, run.pk, first="item")
    assert any(re.search(r"deadlock (detected|found)", error, re.IGNORECASE) for error in errors), errors


@pytest.mark.django_db(transaction=True)
def test_a_write_transaction_takes_sqlites_write_lock_at_begin() -> None:
    """Whatever OPTIONS["transaction_mode"] says: two deferred transactions that both read,
    then write, deadlock on the lock upgrade (SQLite fails one at once)."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's rule; PostgreSQL and MariaDB lock rows")
    options = connection.settings_dict["OPTIONS"]
    configured = options.pop("transaction_mode", None)
    connection.close()  # connecting reads the transaction mode
    try:
        with transaction.atomic():
            connection.cursor().execute("SELECT 1")
            assert not write_locked()  # a deferred BEGIN takes no lock: the probe below can tell
        with store.write_transaction():
            assert write_locked()
    finally:
        if configured is not None:
            options["transaction_mode"] = configured
        connection.close()


def write_locked() -> bool:
    probe = sqlite3.connect(connection.settings_dict["NAME"], timeout=0.05, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()
