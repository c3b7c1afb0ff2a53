"""The group commit's fall-backs, each made to happen on purpose: a store function of the
package is wrapped to fail for one run (the database itself is real, and so is everything
else), or a lease is taken from the attempt in the database. In-process, against the test
database: the committer's own thread (``Committer``) and the main loop's batch of workflow
tasks (``execute_workflow_tasks``).

- A batch a database error stopped is committed again one by one: activity results (the
  committer), workflow tasks.
- A transient error of one result, committed alone, is tried again while its lease holds;
  a lasting one gives that result up and records the others.
- An attempt whose lease was lost writes nothing; a ``LeaseLost`` raised inside a batch of
  workflow tasks sends the batch one by one, and only the lost task is discarded.
- A workflow task whose writes raise backs off; the others commit.
- The eager room (activities leased to the worker by the commit that schedules them) that a
  failed batch used up is given back for the tasks committed one by one, and so is the room
  a task that fails alone used up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from django.db import IntegrityError, OperationalError
from django.db.models import F

import django_durable as durable
from django_durable import store
from django_durable.committer import Committer
from django_durable.engine import TaskOutcome
from django_durable.engine.events import EventKind
from django_durable.executors import workflow_tasks as executor
from django_durable.executors.activities import RunningActivity
from django_durable.executors.cache import RunCache
from django_durable.executors.workflow_tasks import execute_workflow_task, execute_workflow_tasks
from django_durable.models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem, WorkItemKind
from django_durable.store import activities as store_activities
from django_durable.store import workflow_tasks as store_workflow_tasks
from tests.testapp.workflows import sequence

pytestmark = [pytest.mark.database, pytest.mark.django_db(transaction=True)]

OWNER = "fallback-test"
FIRST_STEP = [EventKind.EXECUTION_STARTED, EventKind.WORKFLOW_TASK_STARTED, EventKind.ACTIVITY_SCHEDULED]


@pytest.fixture
def cache() -> Iterator[RunCache]:
    cache = RunCache(50)
    yield cache
    cache.clear()  # the parked code threads


def inject(
    monkeypatch: pytest.MonkeyPatch,
    module: ModuleType,
    name: str,
    *,
    instance_id: int,
    fault: Callable[..., None],
    times: int | None = None,
    after: bool = False,
) -> list[Any]:
    """Wrap ``module.name``, a function of the package whose first argument is a run's id or
    a claim: for ``instance_id``'s run, ``fault(*args)`` runs before the real function (or
    with ``after``, after it), the first ``times`` calls (None: every call). Returns the
    calls it acted on."""
    real = getattr(module, name)
    hits: list[Any] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first = args[0]
        ours = (first.instance_id if isinstance(first, store.Claim) else first) == instance_id
        if not ours or (times is not None and len(hits) >= times):
            return real(*args, **kwargs)
        hits.append(first)
        if not after:
            fault(*args)
        result = real(*args, **kwargs)
        if after:
            fault(*args)
        return result

    monkeypatch.setattr(module, name, wrapper)
    return hits


def raising(error: BaseException) -> Callable[..., None]:
    def fault(*args: Any) -> None:
        raise error

    return fault


def kinds(workflow_id: str) -> list[str]:
    run = WorkflowInstance.objects.get(workflow_id=workflow_id)
    return list(HistoryEvent.objects.filter(instance=run).order_by("seq").values_list("kind", flat=True))


def start(keys: list[str]) -> list[store.Claim]:
    """A two-step ``sequence`` run per key, and its first workflow task claimed: by key."""
    for key in keys:
        durable.start_workflow(sequence, key, 2, workflow_id=key)
    tasks = store.claim(owner=OWNER, kind=WorkItemKind.WORKFLOW, queues=["default"], limit=100, lease_seconds=60)
    assert sorted(task.workflow_id for task in tasks) == sorted(keys)
    return sorted(tasks, key=lambda task: task.workflow_id)


def claim_first_activities(keys: list[str]) -> list[store.Claim]:
    """Run each run's first workflow task, and claim the activities they schedule: by key."""
    for task in start(keys):
        execute_workflow_task(task)
    claimed = store.claim(owner=OWNER, kind=WorkItemKind.ACTIVITY, queues=["default"], limit=100, lease_seconds=60)
    assert sorted(item.workflow_id for item in claimed) == sorted(keys)
    return sorted(claimed, key=lambda item: item.workflow_id)


def assert_result_recorded(item: store.Claim) -> None:
    """The attempt is finished and its result taken by the run's next step, in the same commit."""
    assert not WorkItem.objects.filter(pk=item.id).exists()
    assert kinds(item.workflow_id) == [
        *FIRST_STEP,
        EventKind.WORKFLOW_TASK_STARTED,
        EventKind.ACTIVITY_COMPLETED,
        EventKind.ACTIVITY_SCHEDULED,
    ]
    completed = HistoryEvent.objects.get(instance_id=item.instance_id, kind=EventKind.ACTIVITY_COMPLETED)
    assert completed.payload["result"] == f"result {item.workflow_id}"
    assert WorkflowInstance.objects.get(pk=item.instance_id).vars == {"done": 1}
    assert not InboxEvent.objects.filter(instance_id=item.instance_id).exists()


def assert_nothing_recorded(item: store.Claim) -> None:
    assert kinds(item.workflow_id) == FIRST_STEP
    assert not InboxEvent.objects.filter(instance_id=item.instance_id).exists()


def assert_first_step_committed(task: store.Claim) -> None:
    assert kinds(task.workflow_id) == FIRST_STEP
    assert not WorkItem.objects.filter(pk=task.id).exists()
    assert WorkflowInstance.objects.get(pk=task.instance_id).status == "running"


# -- the committer: activity results --------------------------------------------------------------


class Recorded:
    """A committer on the test database, and its worker's side: what it reported finished."""

    def __init__(self, cache: RunCache) -> None:
        self.finished: list[tuple[list[int], int]] = []
        self.committer = Committer(
            cache=cache, eager=lambda leaving: None, start_eager=self._start_eager, finished=self._finished
        )

    def _start_eager(self, eager: store.Eager | None) -> None:
        assert eager is None

    def _finished(self, done: list[RunningActivity], refilled: int) -> None:
        self.finished.append(([running.item.id for running in done], refilled))

    def commit_as_one_batch(self, items: list[store.Claim]) -> None:
        """Hand the results over before the thread starts, so that its first batch holds them
        all, and wait until it has recorded (or given up) every one."""
        for item in items:
            running = RunningActivity(item)
            running.lease.seconds = 60.0  # its renewer's work: the lease holds throughout
            self.committer.submit(store.Completion(item, f"result {item.workflow_id}"), running)
        self.committer.start()
        self.committer.stop()

    def finished_ids(self) -> list[int]:
        return sorted(item_id for ids, _ in self.finished for item_id in ids)


def test_the_committer_records_a_batch_a_database_error_stopped_again_one_by_one(monkeypatch, cache):
    items = claim_first_activities(["fb-batch-a", "fb-batch-b", "fb-batch-c"])
    hits = inject(
        monkeypatch,
        store_activities,
        "_commit_task",
        instance_id=items[1].instance_id,
        fault=raising(OperationalError("injected: deadlock detected")),
        times=1,
    )
    recorded = Recorded(cache)

    recorded.commit_as_one_batch(items)

    assert len(hits) == 1
    for item in items:
        assert_result_recorded(item)
    # The failed batch committed nothing; then three commits of one.
    assert (recorded.committer.commits, recorded.committer.results_committed) == (3, 3)
    assert recorded.finished_ids() == sorted(item.id for item in items)


def test_alone_a_transient_error_is_tried_again_while_the_lease_holds(monkeypatch, cache, caplog):
    """outcomes.record_outcome: the batch fails, then the result alone fails once more; the
    next try records it."""
    items = claim_first_activities(["fb-transient-a", "fb-transient-b"])
    hits = inject(
        monkeypatch,
        store_activities,
        "_commit_task",
        instance_id=items[0].instance_id,
        fault=raising(OperationalError("injected: could not serialize access")),
        times=2,
    )
    recorded = Recorded(cache)

    with caplog.at_level(logging.WARNING, logger="django_durable.worker"):
        recorded.commit_as_one_batch(items)

    assert len(hits) == 2
    for item in items:
        assert_result_recorded(item)
    assert (recorded.committer.commits, recorded.committer.results_committed) == (2, 2)
    assert "its lease holds: trying again" in caplog.text


def test_alone_a_lasting_error_gives_that_result_up_and_the_others_are_recorded(monkeypatch, cache, caplog):
    items = claim_first_activities(["fb-lasting-a", "fb-lasting-b", "fb-lasting-c"])
    victim = items[1]
    hits = inject(
        monkeypatch,
        store_activities,
        "_commit_task",
        instance_id=victim.instance_id,
        fault=raising(IntegrityError("injected: a constraint this run's write breaks")),
    )
    recorded = Recorded(cache)

    with caplog.at_level(logging.ERROR, logger="django_durable.worker"):
        recorded.commit_as_one_batch(items)

    assert len(hits) == 2  # in the batch, then alone: an IntegrityError is not tried again
    for item in (items[0], items[2]):
        assert_result_recorded(item)
    # Nothing of the victim: its attempt stays leased until the lease expires and it is retried.
    assert WorkItem.objects.filter(pk=victim.id, attempt=victim.attempt, lease_owner=OWNER).exists()
    assert_nothing_recorded(victim)
    assert (recorded.committer.commits, recorded.committer.results_committed) == (2, 2)
    assert recorded.finished_ids() == sorted(item.id for item in items)  # the worker holds none of them now
    assert f"Could not record activity record attempt {victim.attempt}" in caplog.text


def test_an_attempt_whose_lease_was_taken_writes_nothing_and_the_batch_commits_once(cache, caplog):
    items = claim_first_activities(["fb-stolen-a", "fb-stolen-b", "fb-stolen-c"])
    victim = items[1]
    # Its lease expired, the reaper took it back and another worker claimed it again.
    WorkItem.objects.filter(pk=victim.id).update(lease_owner="another-worker", attempt=F("attempt") + 1)
    recorded = Recorded(cache)

    with caplog.at_level(logging.WARNING, logger="django_durable.worker"):
        recorded.commit_as_one_batch(items)

    for item in (items[0], items[2]):
        assert_result_recorded(item)
    assert WorkItem.objects.filter(pk=victim.id, attempt=victim.attempt + 1, lease_owner="another-worker").exists()
    assert_nothing_recorded(victim)
    assert (recorded.committer.commits, recorded.committer.results_committed) == (1, 3)
    assert recorded.finished_ids() == sorted(item.id for item in items)
    assert "Activity outcome discarded" in caplog.text


# -- the main loop's batch of workflow tasks ----------------------------------------------------


def test_workflow_tasks_of_a_batch_a_database_error_stopped_commit_again_one_by_one(monkeypatch, cache):
    tasks = start(["fb-wt-batch-a", "fb-wt-batch-b", "fb-wt-batch-c"])
    hits = inject(
        monkeypatch,
        store_workflow_tasks,
        "_commit_task",
        instance_id=tasks[1].instance_id,
        fault=raising(OperationalError("injected: deadlock detected")),
        times=1,
    )
    settled: list[int] = []

    execute_workflow_tasks(tasks, cache, settled=lambda item: settled.append(item.id))

    assert len(hits) == 1
    for task in tasks:
        assert_first_step_committed(task)
    assert sorted(settled) == sorted(task.id for task in tasks)
    # Committed: each run's code is held for its next step.
    assert all(cache.take(task.instance_id) is not None for task in tasks)


def test_a_lease_lost_inside_a_batch_of_workflow_tasks_discards_that_task_alone(monkeypatch, cache, caplog):
    """``LeaseLost`` raised by the batch's transaction (the task released for an event that
    arrived while it ran, its lease no longer there): the batch is rolled back and committed
    again one by one, and only the lost task writes nothing."""
    tasks = start(["fb-wt-lost-a", "fb-wt-lost-b", "fb-wt-lost-c"])
    victim = tasks[1]
    real_run_task = executor.run_task

    def run_task(**kwargs: Any) -> TaskOutcome:
        outcome = real_run_task(**kwargs)
        if kwargs["run_id"] == victim.run_id:  # a signal arrives while the code runs
            durable.get_workflow(victim.workflow_id).signal("poke", 1)
        return outcome

    monkeypatch.setattr(executor, "run_task", run_task)

    def take_the_lease(item: store.Claim, *args: Any) -> None:
        # Between the task's finish and its release, another worker has its item (in this
        # transaction: the rollback gives it back, and the next try takes it again).
        WorkItem.objects.filter(pk=item.id).update(lease_owner="another-worker", attempt=F("attempt") + 1)

    released = inject(
        monkeypatch,
        store_workflow_tasks,
        "_release_workflow_task",
        instance_id=victim.instance_id,
        fault=take_the_lease,
    )
    settled: list[int] = []

    with caplog.at_level(logging.WARNING, logger="django_durable.worker"):
        execute_workflow_tasks(tasks, cache, settled=lambda item: settled.append(item.id))

    assert len(released) == 2  # in the batch, then alone
    for task in (tasks[0], tasks[2]):
        assert_first_step_committed(task)
        held = cache.take(task.instance_id)
        assert held is not None
        held.close()
    assert kinds(victim.workflow_id) == [EventKind.EXECUTION_STARTED]
    assert list(InboxEvent.objects.filter(instance_id=victim.instance_id).values_list("kind", flat=True)) == [
        EventKind.EVENT_RAISED
    ]
    # Lost is not failed: its task is not backing off (the rollback left it as it was claimed).
    item = WorkItem.objects.get(pk=victim.id)
    assert (item.lease_owner, item.attempt, item.failures, item.last_error) == (OWNER, victim.attempt, 0, None)
    assert WorkflowInstance.objects.get(pk=victim.instance_id).task_error is None
    assert cache.take(victim.instance_id) is None  # its code is dropped: the next task replays
    assert sorted(settled) == sorted(task.id for task in tasks)
    assert "was lost as they committed; committing them again, one by one" in caplog.text
    assert "Workflow task discarded" in caplog.text


def test_a_workflow_task_whose_writes_raise_backs_off_and_the_others_commit(monkeypatch, cache):
    tasks = start(["fb-wt-raise-a", "fb-wt-raise-b", "fb-wt-raise-c"])
    victim = tasks[1]
    hits = inject(
        monkeypatch,
        store_workflow_tasks,
        "_commit_task",
        instance_id=victim.instance_id,
        fault=raising(ValueError("injected: a bug in this run's writes")),
    )
    settled: list[int] = []

    execute_workflow_tasks(tasks, cache, settled=lambda item: settled.append(item.id))

    assert len(hits) == 2  # in the batch, then alone
    for task in (tasks[0], tasks[2]):
        assert_first_step_committed(task)
    assert kinds(victim.workflow_id) == [EventKind.EXECUTION_STARTED]
    item = WorkItem.objects.get(pk=victim.id)
    assert item.lease_owner is None and item.failures == 1 and item.parked_at is None
    assert item.last_error["message"] == "injected: a bug in this run's writes"
    assert item.due_at > item.claimed_at  # backing off
    run = WorkflowInstance.objects.get(pk=victim.instance_id)
    assert run.status == "pending" and run.task_error["message"] == "injected: a bug in this run's writes"
    assert sorted(settled) == sorted(task.id for task in tasks)


def test_the_eager_room_a_failed_batch_used_up_is_given_back(monkeypatch, cache):
    """Room for two: the batch leases the first activities of the first two runs, then fails
    at the third. Committed one by one, those two are leased to this worker again."""
    tasks = start(["fb-wt-room-a", "fb-wt-room-b", "fb-wt-room-c"])
    hits = inject(
        monkeypatch,
        store_workflow_tasks,
        "_commit_task",
        instance_id=tasks[2].instance_id,
        fault=raising(OperationalError("injected: deadlock detected")),
        times=1,
    )
    eager = store.Eager(owner=OWNER, queues=["default"], limit=2, lease_seconds=60)

    execute_workflow_tasks(tasks, cache, eager)

    assert len(hits) == 1
    for task in tasks:
        assert_first_step_committed(task)
    activities = dict(
        WorkItem.objects.filter(kind=WorkItemKind.ACTIVITY).values_list("instance__workflow_id", "lease_owner")
    )
    assert activities == {"fb-wt-room-a": OWNER, "fb-wt-room-b": OWNER, "fb-wt-room-c": None}
    assert sorted(claim.workflow_id for claim in eager.claims) == ["fb-wt-room-a", "fb-wt-room-b"]
    assert eager.limit == 0


def test_the_eager_room_a_task_failing_alone_used_up_is_given_back(monkeypatch, cache):
    """Room for two; the first task's writes fail after its activity took a place, in the batch
    and alone. The other two, committed one by one after it, have both places."""
    tasks = start(["fb-wt-room-alone-a", "fb-wt-room-alone-b", "fb-wt-room-alone-c"])
    inject(
        monkeypatch,
        store_workflow_tasks,
        "_commit_task",
        instance_id=tasks[0].instance_id,
        fault=raising(OperationalError("injected: deadlock detected")),
        after=True,
    )
    eager = store.Eager(owner=OWNER, queues=["default"], limit=2, lease_seconds=60)

    with pytest.raises(OperationalError):
        execute_workflow_tasks(tasks, cache, eager)

    assert sorted(claim.workflow_id for claim in eager.claims) == ["fb-wt-room-alone-b", "fb-wt-room-alone-c"]
