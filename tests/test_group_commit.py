"""Group commit: a worker records the results of activities of several runs, and runs
those runs' next workflow tasks, in one transaction (``store.complete_activities``,
``executors.activities.commit_activities``). In-process, against the real database; the
worker's committer thread and its fall-back are exercised by real worker processes in
faults/test_scenarios (a commit whose connection was terminated) and everywhere else."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

import django_durable as durable
from django_durable import store
from django_durable.engine.events import EventKind
from django_durable.executors.activities import commit_activities
from django_durable.executors.cache import RunCache
from django_durable.executors.workflow_tasks import execute_workflow_task, execute_workflow_tasks
from django_durable.models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem, WorkItemKind
from tests.testapp import orchestration_workflows as ow
from tests.testapp.workflows import crasher, fan_out, sequence

pytestmark = pytest.mark.database

OWNER = "group-commit-test"


@pytest.fixture
def cache():
    cache = RunCache(50)
    yield cache
    cache.clear()  # the parked code threads


def start_runs(keys: list[str], cache: RunCache | None) -> list[store.Claim]:
    """Start a ``sequence`` run per key, run its first workflow task here (its code stays in
    ``cache``) and claim the first activity of each: one claimed attempt per run."""
    for key in keys:
        durable.start_workflow(sequence, key, 3, workflow_id=key)
    tasks = store.claim(owner=OWNER, kind=WorkItemKind.WORKFLOW, queues=["default"], limit=100, lease_seconds=60)
    assert len(tasks) == len(keys)
    for task in tasks:
        execute_workflow_task(task, cache)
    claimed = store.claim(owner=OWNER, kind=WorkItemKind.ACTIVITY, queues=["default"], limit=100, lease_seconds=60)
    activities = sorted((item for item in claimed if item.workflow_id in keys), key=lambda item: item.workflow_id)
    assert len(activities) == len(keys)
    return activities


def kinds(workflow_id: str) -> list[str]:
    run = WorkflowInstance.objects.get(workflow_id=workflow_id)
    return list(HistoryEvent.objects.filter(instance=run).order_by("seq").values_list("kind", flat=True))


@pytest.mark.django_db(transaction=True)
def test_a_stale_attempt_in_a_batch_writes_nothing_and_the_others_commit():
    items = start_runs(["gc-a", "gc-b", "gc-c"], cache=None)
    stale = items[1]
    WorkItem.objects.filter(pk=stale.id).update(attempt=2)  # reaped and claimed again meanwhile
    before = kinds(stale.workflow_id)
    completions = [store.Completion(item, f"result {item.workflow_id}") for item in items]

    store.complete_activities(completions)

    assert [c.lost for c in completions] == [False, True, False]
    assert not any(c.ran for c in completions)  # no cached code: each result waits in its run's inbox
    assert kinds(stale.workflow_id) == before
    assert not InboxEvent.objects.filter(instance_id=stale.instance_id).exists()
    assert WorkItem.objects.filter(pk=stale.id, attempt=2).exists()
    for item in (items[0], items[2]):
        [event] = InboxEvent.objects.filter(instance_id=item.instance_id)
        assert event.kind == EventKind.ACTIVITY_COMPLETED and event.payload["result"] == f"result {item.workflow_id}"
        assert WorkItem.objects.filter(instance_id=item.instance_id, kind=WorkItemKind.WORKFLOW).exists()
        assert not WorkItem.objects.filter(pk=item.id).exists()


@pytest.mark.django_db(transaction=True)
def test_runs_whose_code_is_held_take_their_next_step_in_the_same_commit(cache):
    items = start_runs([f"gc-inline-{n}" for n in range(4)], cache)
    eager = store.Eager(owner=OWNER, queues=["default"], limit=3, lease_seconds=60)
    completions = [store.Completion(item, None) for item in items]

    commit_activities(completions, cache=cache, eager=eager)

    assert [c.ran for c in completions] == [True] * 4 and not any(c.lost for c in completions)
    for item in items:
        assert kinds(item.workflow_id) == [
            EventKind.EXECUTION_STARTED,
            EventKind.WORKFLOW_TASK_STARTED,
            EventKind.ACTIVITY_SCHEDULED,
            EventKind.WORKFLOW_TASK_STARTED,
            EventKind.ACTIVITY_COMPLETED,
            EventKind.ACTIVITY_SCHEDULED,
        ]
        run = WorkflowInstance.objects.get(pk=item.instance_id)
        assert run.history_length == 6 and run.vars == {"done": 1} and run.status == "running"
        assert not WorkItem.objects.filter(instance_id=item.instance_id, kind=WorkItemKind.WORKFLOW).exists()
        assert not InboxEvent.objects.filter(instance_id=item.instance_id).exists()
    # The eager room is shared by the whole batch: three of the four next activities
    # are leased to this worker, the fourth waits in the queue.
    next_items = WorkItem.objects.filter(kind=WorkItemKind.ACTIVITY).order_by("id")
    assert [item.lease_owner for item in next_items] == [OWNER] * 3 + [None]
    assert sorted(claim.id for claim in eager.claims) == [item.pk for item in next_items][:3]
    assert eager.limit == 0
    # Held code went back to the cache: the next step runs inline again.
    assert all(cache.take(item.instance_id) is not None for item in items)


# A group commit's statements: (for one run, added by each further run). PostgreSQL: BEGIN,
# lock, finish, write, wake the queue's workers, COMMIT; each further run's rows go in the same
# JSON record sets. MariaDB: BEGIN, lock, delete the attempt, read the busy flags, insert
# history, update the run, insert the next items, COMMIT; a further run adds its DELETE and
# its UPDATE.
COMMIT_STATEMENTS = {"postgresql": (6, 0), "mysql": (8, 2)}


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor not in COMMIT_STATEMENTS, reason="statement counts of the hand-written paths")
def test_a_batch_costs_the_statements_of_one_step_and_a_few_per_further_run(cache):
    """What makes group commit pay: 1 run or 6, one commit and the same statements (lock,
    finish the attempts, write history, runs and next items), on MariaDB but two a run."""
    [single] = start_runs(["gc-one"], cache)
    with CaptureQueriesContext(connection) as one:
        commit_activities([store.Completion(single, None)], cache=cache)
    batch = start_runs([f"gc-many-{n}" for n in range(6)], cache)
    completions = [store.Completion(item, None) for item in batch]
    with CaptureQueriesContext(connection) as many:
        commit_activities(completions, cache=cache)
    assert all(c.ran for c in completions)
    for_one, per_further_run = COMMIT_STATEMENTS[connection.vendor]
    assert len(many.captured_queries) == len(one.captured_queries) + 5 * per_further_run, [
        q["sql"][:60] for q in many.captured_queries
    ]
    assert len(one.captured_queries) <= for_one, [q["sql"][:60] for q in one.captured_queries]


@pytest.mark.django_db(transaction=True)
def test_results_of_one_run_in_one_batch_make_one_step(cache):
    """Fan-out: two results of one run (and one of another) in one commit. The run takes
    one workflow task with both, in order; a stale attempt among them is left out."""
    durable.start_workflow(fan_out, 3, workflow_id="gc-fan")
    [task] = store.claim(owner=OWNER, kind=WorkItemKind.WORKFLOW, queues=["default"], limit=1, lease_seconds=60)
    execute_workflow_task(task, cache)
    fan = sorted(
        store.claim(owner=OWNER, kind=WorkItemKind.ACTIVITY, queues=["default"], limit=10, lease_seconds=60),
        key=lambda item: item.task_id,
    )
    assert [item.workflow_id for item in fan] == ["gc-fan"] * 3
    [other] = start_runs(["gc-fan-other"], cache)
    WorkItem.objects.filter(pk=fan[1].id).update(attempt=2)  # superseded meanwhile
    completions = [
        store.Completion(fan[2], "c"),
        store.Completion(other, None),
        store.Completion(fan[1], "b"),
        store.Completion(fan[0], "a"),
    ]
    commit_activities(completions, cache=cache)
    assert [(c.ran, c.lost) for c in completions] == [(True, False), (True, False), (False, True), (True, False)]
    run = WorkflowInstance.objects.get(workflow_id="gc-fan")
    events = list(HistoryEvent.objects.filter(instance=run).order_by("seq").values_list("kind", "task_id"))
    started = [n for n, (kind, _) in enumerate(events) if kind == EventKind.WORKFLOW_TASK_STARTED]
    assert len(started) == 2  # the start, and one step for both results
    assert events[started[1] + 1 :] == [
        (EventKind.ACTIVITY_COMPLETED, fan[2].task_id),
        (EventKind.ACTIVITY_COMPLETED, fan[0].task_id),
    ]
    assert run.status == "running" and run.history_length == len(events)
    assert WorkItem.objects.filter(pk=fan[1].id, attempt=2).exists()
    assert not InboxEvent.objects.filter(instance=run).exists()
    # Counted per result; the run's code, advanced by its one step, is held again.
    assert (cache.stats["inline"], cache.stats["declined"]) == (3, 1)
    resident = cache.take(run.id)
    assert resident is not None and resident.length == run.history_length
    resident.close()


@pytest.mark.django_db(transaction=True)
def test_a_run_whose_code_another_worker_holds_replays_its_history_inside_the_commit(cache):
    """The result of an activity claimed by another worker: that worker reads the history
    under the run's lock and replays it in the same transaction, instead of leaving the
    result to an ordinary workflow task (three more transactions)."""
    items = start_runs(["gc-elsewhere-a", "gc-elsewhere-b"], cache)  # ``cache`` is the first worker's
    other = RunCache(50)
    try:
        completions = [store.Completion(item, None) for item in items]
        commit_activities(completions, cache=other)
        assert [c.ran for c in completions] == [True, True]
        assert other.stats["replayed"] == 2 and other.stats["inline"] == 2
        for item in items:
            assert kinds(item.workflow_id)[-3:] == [
                EventKind.WORKFLOW_TASK_STARTED,
                EventKind.ACTIVITY_COMPLETED,
                EventKind.ACTIVITY_SCHEDULED,
            ]
            assert WorkflowInstance.objects.get(pk=item.instance_id).vars == {"done": 1}
            assert not WorkItem.objects.filter(instance_id=item.instance_id, kind=WorkItemKind.WORKFLOW).exists()
            assert other.take(item.instance_id) is not None  # the code is held here from now on
        # The first worker's copy is stale: its next inline step replays too, and is right.
        [step2] = [
            i
            for i in store.claim(
                owner=OWNER, kind=WorkItemKind.ACTIVITY, queues=["default"], limit=10, lease_seconds=60
            )
            if i.workflow_id == "gc-elsewhere-a"
        ]
        again = store.Completion(step2, None)
        replayed = cache.stats["replayed"]
        commit_activities([again], cache=cache)
        assert again.ran and cache.stats["replayed"] == replayed + 1
        assert WorkflowInstance.objects.get(pk=step2.instance_id).vars == {"done": 2}
    finally:
        other.clear()


@pytest.mark.django_db(transaction=True)
def test_beyond_idle_threads_a_worker_takes_only_activities_that_no_timeout_hurts_while_they_wait(cache):
    """``Eager.spare``: an activity may wait in the worker for a thread only if no clock of
    its runs meanwhile (no start-to-close, no heartbeat timeout); others stay claimable."""
    from tests.testapp.async_workflows import ac_approval_with_long_deadline

    # The timed one first: the one spare place must pass it by.
    durable.start_workflow(ac_approval_with_long_deadline, "/nonexistent", workflow_id="gc-spare-timed")
    durable.start_workflow(sequence, "gc-spare-a", 1, workflow_id="gc-spare-a")
    durable.start_workflow(sequence, "gc-spare-b", 1, workflow_id="gc-spare-b")
    tasks = store.claim(owner=OWNER, kind=WorkItemKind.WORKFLOW, queues=["default"], limit=10, lease_seconds=60)
    tasks.sort(key=lambda task: task.id)
    assert tasks[0].workflow_id == "gc-spare-timed"
    eager = store.Eager(owner=OWNER, queues=["default"], limit=0, lease_seconds=60, spare=1)
    for task in tasks:
        execute_workflow_task(task, cache, eager)
    leased = dict(WorkItem.objects.filter(kind=WorkItemKind.ACTIVITY).values_list("name", "lease_owner"))
    owners = list(WorkItem.objects.filter(kind=WorkItemKind.ACTIVITY).values_list("lease_owner", flat=True))
    assert leased["ac_request_with_long_deadline"] is None  # it has a start-to-close timeout
    assert sorted(owners, key=str) == [None, None, OWNER]  # one spare: one untimed one; the other stays claimable
    assert [claim.name for claim in eager.claims] == ["record"] and eager.spare == 0


# -- workflow tasks the main loop claimed together -----------------------------------------------


def claim_tasks(keys: list[str]) -> list[store.Claim]:
    tasks = store.claim(owner=OWNER, kind=WorkItemKind.WORKFLOW, queues=["default"], limit=100, lease_seconds=60)
    return sorted((task for task in tasks if task.workflow_id in keys), key=lambda task: task.workflow_id)


@pytest.mark.django_db(transaction=True)
def test_claimed_workflow_tasks_run_and_commit_together_and_one_failing_or_lost_holds_up_no_other(cache):
    """The main loop's batch: a task whose code fails is recorded on its own, a task no
    longer ours writes nothing (its inbox waits for the task that is), the others commit
    and their code is held for the next step."""
    keys = ["gc-wt-a", "gc-wt-b", "gc-wt-crash", "gc-wt-stale"]
    for key in keys[:2] + keys[3:]:
        durable.start_workflow(sequence, key, 2, workflow_id=key)
    durable.start_workflow(crasher, workflow_id="gc-wt-crash")
    tasks = claim_tasks(keys)
    assert [task.workflow_id for task in tasks] == keys
    stale = tasks[3]
    durable.get_workflow(stale.workflow_id).signal("poke", 1)  # an inbox event the stale task has not seen
    WorkItem.objects.filter(pk=stale.id).update(attempt=2)  # reaped and claimed again meanwhile
    eager = store.Eager(owner=OWNER, queues=["default"], limit=1, lease_seconds=60, spare=10)

    settled: list[int] = []
    execute_workflow_tasks(tasks, cache, eager, settled=lambda item: settled.append(item.id))

    assert sorted(settled) == sorted(task.id for task in tasks)  # the worker renews none of these leases now
    for task in tasks[:2]:
        assert kinds(task.workflow_id) == [
            EventKind.EXECUTION_STARTED,
            EventKind.WORKFLOW_TASK_STARTED,
            EventKind.ACTIVITY_SCHEDULED,
        ]
        assert not WorkItem.objects.filter(pk=task.id).exists()
        held = cache.take(task.instance_id)
        assert held is not None and held.length == 3
        held.close()
    # One idle thread, ten held places: both first activities are leased to this worker.
    assert sorted(claim.workflow_id for claim in eager.claims) == keys[:2]
    crashed = WorkItem.objects.get(pk=tasks[2].id)
    assert crashed.failures == 1 and "sys.exit" in crashed.last_error["message"] and crashed.lease_owner is None
    assert kinds("gc-wt-crash") == [EventKind.EXECUTION_STARTED]
    assert kinds(stale.workflow_id) == [EventKind.EXECUTION_STARTED]
    assert WorkItem.objects.filter(pk=stale.id, attempt=2).exists()
    assert InboxEvent.objects.filter(instance_id=stale.instance_id, kind=EventKind.EVENT_RAISED).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="statement counts of the PostgreSQL path")
def test_on_postgresql_a_batch_of_workflow_tasks_costs_the_statements_of_one():
    """1 task or 6: read the runs, lock them, finish each task (a statement each: it
    checks for events that arrived meanwhile), write history, runs and work items, wake
    the queue's workers, commit."""

    def statements(keys: list[str]) -> list[str]:
        for key in keys:
            durable.start_workflow(sequence, key, 2, workflow_id=key)
        tasks = claim_tasks(keys)
        with CaptureQueriesContext(connection) as captured:
            execute_workflow_tasks(tasks)
        assert all(kinds(key)[-1] == EventKind.ACTIVITY_SCHEDULED for key in keys)
        return [query["sql"] for query in captured.captured_queries]

    one = statements(["gc-wt-one"])
    many = statements([f"gc-wt-many-{n}" for n in range(6)])
    assert len(many) == len(one) + 5, [sql[:60] for sql in many]
    assert sum("held" in sql for sql in many) == 6  # the finish statements
    assert len(one) <= 7, [sql[:60] for sql in one]


@pytest.mark.django_db(transaction=True)
def test_children_closing_in_one_batch_tell_their_parent_whose_row_they_lock_with_their_own():
    handle = durable.start_workflow(ow.ow_parent, [1, 2], workflow_id="gc-wt-parent")
    [first] = claim_tasks(["gc-wt-parent"])
    execute_workflow_tasks([first])
    children = [
        task
        for task in store.claim(owner=OWNER, kind=WorkItemKind.WORKFLOW, queues=["default"], limit=10, lease_seconds=60)
        if task.workflow_id.startswith("gc-wt-parent")
    ]
    assert len(children) == 2
    parent = WorkflowInstance.objects.get(workflow_id="gc-wt-parent")

    with CaptureQueriesContext(connection) as captured:
        execute_workflow_tasks(children)

    assert sorted(WorkflowInstance.objects.filter(parent=parent).values_list("status", flat=True)) == ["completed"] * 2
    assert (
        sorted(InboxEvent.objects.filter(instance=parent).values_list("kind", flat=True))
        == [EventKind.CHILD_WORKFLOW_COMPLETED] * 2
    )
    if connection.vendor == "postgresql":
        # The parent is locked by the batch's one lock statement, in id order with its children.
        [lock] = [
            query["sql"]
            for query in captured.captured_queries
            if "ANY(" in query["sql"] and "FOR NO KEY UPDATE" in query["sql"]
        ]
        assert "{" + ",".join(str(pk) for pk in sorted([parent.pk, *(c.instance_id for c in children)])) + "}" in lock
    [again] = claim_tasks(["gc-wt-parent"])
    execute_workflow_tasks([again])
    assert handle.result(timeout=5) == [10, 20]
