"""Control verbs and the store's side of orchestration, on the real database:
state errors, purge, rerun from an event, and child workflows' bookkeeping.
Workflows run in real ``durable_worker`` processes where they need to run at all.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection

import django_durable as durable
from django_durable.models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem
from tests.conftest import has_row_locks
from tests.testapp import orchestration_workflows as ow
from tests.testapp.models import ActivityRun

pytestmark = pytest.mark.database

TIMEOUT = 60


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def snapshot() -> tuple:
    return (
        list(WorkflowInstance.objects.order_by("pk").values_list("pk", "status", "history_length")),
        HistoryEvent.objects.count(),
        InboxEvent.objects.count(),
        list(WorkItem.objects.order_by("pk").values_list("pk", "parked_at", "due_at")),
    )


def finished(worker) -> None:
    code = worker.wait(TIMEOUT)
    assert code == 0, f"worker exited with {code}:\n{worker.log()}"


# -- verbs on runs in the wrong state change nothing ---------------------------------------


@pytest.mark.django_db
def test_verbs_on_a_closed_run_raise_workflow_not_open_and_change_nothing():
    handle = durable.start_workflow(ow.ow_waiter, workflow_id=unique("closed"))
    handle.terminate("done with it")
    before = snapshot()
    for verb in (
        lambda: handle.signal("go", 1),
        handle.cancel,
        handle.suspend,
        handle.resume,
        lambda: handle.terminate("again"),
    ):
        with pytest.raises(durable.WorkflowNotOpen):
            verb()
    assert snapshot() == before


@pytest.mark.django_db
def test_suspend_twice_and_resume_of_a_running_run_are_state_errors():
    handle = durable.start_workflow(ow.ow_waiter, workflow_id=unique("states"))
    with pytest.raises(durable.WorkflowStateError, match="not suspended"):
        handle.resume()
    handle.suspend("maintenance")
    before = snapshot()
    with pytest.raises(durable.WorkflowStateError, match="already suspended"):
        handle.suspend()
    assert snapshot() == before
    assert handle.status() == "suspended"
    # A suspended run's workflow task is parked; retry() does not release it, resume() does.
    assert WorkItem.objects.get(instance__workflow_id=handle.workflow_id).parked_at is not None
    assert handle.retry() is False
    handle.resume()
    assert handle.status() == "pending"  # it never ran
    assert WorkItem.objects.get(instance__workflow_id=handle.workflow_id).parked_at is None
    assert [e.kind for e in handle.history()] == ["ExecutionStarted", "ExecutionSuspended", "ExecutionResumed"]
    assert handle.history()[1].payload == {"reason": "maintenance"}


@pytest.mark.django_db
def test_signals_to_a_suspended_run_are_kept_and_its_task_stays_parked():
    handle = durable.start_workflow(ow.ow_waiter, workflow_id=unique("kept"))
    handle.suspend()
    handle.signal("go", {"n": 1})
    handle.signal("go", {"n": 2})
    assert list(
        InboxEvent.objects.filter(instance__workflow_id=handle.workflow_id).values_list("payload", flat=True)
    ) == [{"payload": {"n": 1}}, {"payload": {"n": 2}}]
    assert WorkItem.objects.get(instance__workflow_id=handle.workflow_id).parked_at is not None


@pytest.mark.django_db
def test_signal_names_and_payloads_are_checked_before_anything_is_written():
    handle = durable.start_workflow(ow.ow_waiter, workflow_id=unique("bad-signal"))
    before = snapshot()
    with pytest.raises(ValueError):
        handle.signal("")
    with pytest.raises(ValueError):
        handle.signal("x" * 256)
    with pytest.raises(durable.SerializationError):
        handle.signal("go", object())
    with pytest.raises(durable.WorkflowNotFound):
        durable.get_workflow("no-such-workflow")
    assert snapshot() == before


@pytest.mark.django_db
def test_cancel_is_recorded_once():
    handle = durable.start_workflow(ow.ow_waiter, workflow_id=unique("cancel"))
    handle.cancel()
    handle.cancel()
    inbox = InboxEvent.objects.filter(instance__workflow_id=handle.workflow_id)
    assert list(inbox.values_list("kind", flat=True)) == ["CancelRequested"]
    assert WorkflowInstance.objects.get(workflow_id=handle.workflow_id).cancel_requested_at is not None


# -- purge ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_purge_refuses_open_runs_and_deletes_closed_ones_with_their_history():
    workflow_id = unique("purge")
    first = durable.start_workflow(ow.ow_waiter, workflow_id=workflow_id)
    with pytest.raises(durable.WorkflowStillOpen):
        durable.get_workflow(workflow_id).purge()
    first.terminate()
    second = durable.start_workflow(ow.ow_waiter, workflow_id=workflow_id)
    before = snapshot()
    with pytest.raises(durable.WorkflowStillOpen):
        durable.get_workflow(workflow_id).purge()  # every run of the id: one is open
    assert snapshot() == before
    assert first.purge() == 1  # a handle bound to its run purges just that run
    assert list(WorkflowInstance.objects.filter(workflow_id=workflow_id).values_list("run_id", flat=True)) == [
        uuid.UUID(second.run_id)
    ]
    second.terminate()
    assert durable.get_workflow(workflow_id).purge() == 1
    assert not WorkflowInstance.objects.filter(workflow_id=workflow_id).exists()
    assert not HistoryEvent.objects.filter(instance__workflow_id=workflow_id).exists()
    with pytest.raises(durable.WorkflowNotFound):
        durable.get_workflow(workflow_id).purge()


# -- rerun from an event ------------------------------------------------------------------


@pytest.mark.skipif(
    not has_row_locks(), reason="SQLite serializes writers: no purge commits inside a rerun's transaction there"
)
@pytest.mark.django_db(transaction=True)
def test_a_rerun_whose_source_is_purged_meanwhile_says_so_and_writes_nothing(monkeypatch):
    """A purge or prune may delete the closed source while a rerun copies it: the new run
    refers to its source, so the commit fails; the error names the cause, not the id."""
    from django_durable import store

    handle = durable.start_workflow(ow.ow_three_steps, "gone", workflow_id=unique("rerun-purged"))
    handle.terminate("for the test")
    source = WorkflowInstance.objects.get(run_id=handle.run_id)
    assert source.history_length >= 2
    apply_id_reuse_policy = store.control._apply_id_reuse_policy

    def purged_meanwhile(*args, **kwargs):
        # Another connection purges the source and commits, inside the rerun's transaction.
        purge = threading.Thread(target=lambda: (handle.purge(), connection.close()))
        purge.start()
        purge.join()
        return apply_id_reuse_policy(*args, **kwargs)

    monkeypatch.setattr(store.control, "_apply_id_reuse_policy", purged_meanwhile)  # where rerun looks it up
    with pytest.raises(durable.WorkflowNotFound, match="was purged while it was being rerun"):
        handle.rerun(2)
    assert not WorkflowInstance.objects.filter(workflow_id=handle.workflow_id).exists()  # nor a new run


@pytest.mark.workers
def test_rerun_from_a_failed_step_recovers_the_run(start_worker):
    key = unique("rerun")
    ActivityRun.objects.create(key=ow.bad_deploy_flag(f"{key}:3"), attempt=0, pid=0)  # a bad deploy breaks step 3
    handle = durable.start_workflow(ow.ow_three_steps, key, workflow_id=key)
    worker = start_worker(batch=True)
    with pytest.raises(durable.WorkflowFailed, match="bad deploy"):
        handle.result(timeout=TIMEOUT)
    finished(worker)
    history = handle.history()
    third = next(e for e in history if e.kind == "ActivityScheduled" and e.task_id == 3)

    with pytest.raises(durable.WorkflowStateError):
        handle.rerun(1)
    with pytest.raises(durable.WorkflowStateError):
        handle.rerun(len(history) + 1)

    # The fix is deployed; the rerun starts from just before step 3 was scheduled.
    ActivityRun.objects.filter(key=ow.bad_deploy_flag(f"{key}:3")).delete()
    rerun = handle.rerun(third.seq)
    assert rerun.workflow_id == key and rerun.run_id != handle.run_id
    copied = rerun.history()
    assert [(e.seq, e.kind, e.task_id) for e in copied] == [
        (e.seq, e.kind, e.task_id) for e in history if e.seq < third.seq
    ]
    with pytest.raises(durable.WorkflowAlreadyExists):
        handle.rerun(third.seq)  # the id has an open run now

    worker = start_worker(batch=True)
    assert rerun.result(timeout=TIMEOUT) == [f"{key}:1", f"{key}:2", f"{key}:3"]
    finished(worker)
    runs = list(
        ActivityRun.objects.filter(key__startswith=f"{key}:")
        .exclude(key__endswith="bad-deploy")
        .order_by("id")
        .values_list("key", flat=True)
    )
    assert runs == [f"{key}:1", f"{key}:2", f"{key}:3", f"{key}:3"]  # steps 1 and 2 ran once
    instance = WorkflowInstance.objects.get(run_id=rerun.run_id)
    assert instance.rerun_of.run_id == uuid.UUID(handle.run_id) and instance.rerun_from_seq == third.seq


@pytest.mark.workers
def test_rerun_from_a_completion_runs_the_unanswered_activity_again(start_worker):
    key = unique("rerun-mid")
    handle = durable.start_workflow(ow.ow_three_steps, key, workflow_id=key)
    worker = start_worker(batch=True)
    handle.result(timeout=TIMEOUT)
    finished(worker)
    completion = next(e for e in handle.history() if e.kind == "ActivityCompleted" and e.task_id == 2)
    rerun = handle.rerun(completion.seq, workflow_id=f"{key}-again")
    # Step 2 was scheduled in the kept prefix but its result was not: it is due again.
    due = WorkItem.objects.filter(instance__run_id=rerun.run_id).order_by("kind")
    assert list(due.values_list("kind", "task_id")) == [("activity", 2), ("workflow", None)]
    worker = start_worker(batch=True)
    assert rerun.result(timeout=TIMEOUT) == [f"{key}:1", f"{key}:2", f"{key}:3"]
    finished(worker)
    counts = {k: ActivityRun.objects.filter(key=f"{key}:{k}").count() for k in (1, 2, 3)}
    assert counts == {1: 1, 2: 2, 3: 2}


@pytest.mark.django_db
def test_rerun_refuses_an_open_run():
    handle = durable.start_workflow(ow.ow_waiter, workflow_id=unique("rerun-open"))
    before = snapshot()
    with pytest.raises(durable.WorkflowStillOpen):
        handle.rerun(2)
    assert snapshot() == before


# -- child workflows ------------------------------------------------------------------


@pytest.mark.workers
def test_children_are_linked_to_their_parent_and_report_back(start_worker):
    handle = durable.start_workflow(ow.ow_parent, [1, 2, 3], workflow_id=unique("parent"))
    worker = start_worker(batch=True)
    assert handle.result(timeout=TIMEOUT) == [10, 20, 30]
    finished(worker)
    parent = WorkflowInstance.objects.get(run_id=handle.run_id)
    children = list(parent.children.order_by("parent_task_id"))
    assert [c.parent_task_id for c in children] == [1, 2, 3]
    assert {c.status for c in children} == {"completed"}
    assert [c.workflow_id for c in children] == [f"{handle.workflow_id}:{i}:{handle.run_id[:8]}" for i in (1, 2, 3)]
    kinds = [e.kind for e in handle.history()]
    assert kinds.count("ChildWorkflowScheduled") == 3 and kinds.count("ChildWorkflowCompleted") == 3


@pytest.mark.workers
def test_a_failing_child_reaches_the_parent_as_an_error(start_worker):
    handle = durable.start_workflow(ow.ow_parent, [1, -1], workflow_id=unique("parent-fail"))
    worker = start_worker(batch=True)
    result = handle.result(timeout=TIMEOUT)
    finished(worker)
    assert result["status"] == "failed"
    assert result["message"] == "negative"
    assert result["failed"] == f"{handle.workflow_id}:2:{handle.run_id[:8]}"


@pytest.mark.workers
def test_a_child_whose_id_is_taken_fails_to_start_without_harming_the_parent(start_worker):
    taken = unique("taken")
    blocker = durable.start_workflow(ow.ow_waiter, workflow_id=taken)
    handle = durable.start_workflow(ow.ow_parent_with_fixed_child_id, taken, workflow_id=unique("parent-clash"))
    worker = start_worker(batch=True)
    assert handle.result(timeout=TIMEOUT) == {
        "status": "not_started",
        "type": "django_durable.exceptions.WorkflowAlreadyExists",
    }
    finished(worker)
    assert blocker.status() == "running"  # untouched: still waiting for its event
    assert WorkflowInstance.objects.filter(workflow_id=taken).count() == 1


# -- events that arrive while a workflow task runs ------------------------------------


def run_one_workflow_task(during) -> bool:
    """Claim and run one workflow task as the worker does, calling ``during()`` between
    the replay and the commit (an event arriving while the task runs)."""
    from django_durable import registry, store
    from django_durable.converter import get_converter
    from django_durable.engine import run_workflow_task

    [item] = store.claim(owner="test", kind="workflow", queues=["default"], limit=1, lease_seconds=30)
    task = store.load_workflow_task(item)
    outcome = run_workflow_task(
        registry.get_workflow_definition(task.workflow_name).fn,
        workflow_id=task.workflow_id,
        run_id=task.run_id,
        workflow_name=task.workflow_name,
        queue=task.queue,
        history=task.history,
        inbox=task.inbox,
        now=item.claimed_at,
        converter=get_converter(),
        activity_options=registry.activity_call_options,
        workflow_options=registry.workflow_call_options,
    )
    during()
    return store.complete_workflow_task(
        item,
        new_events=outcome.new_events,
        inbox_ids=task.inbox_ids,
        status=outcome.status,
        vars=outcome.vars,
        result=outcome.result,
        error=outcome.error,
        waiting_on=outcome.waiting_on,
    )


@pytest.mark.django_db
def test_events_arriving_while_a_run_continues_as_new_move_to_the_next_run():
    handle = durable.start_workflow(ow.ow_continue_once, 0, workflow_id=unique("late-can"))

    def late_arrivals() -> None:
        handle.signal("late", "kept")
        handle.cancel()

    assert run_one_workflow_task(late_arrivals) is True
    assert handle.status() == "continued_as_new"
    successor = durable.get_workflow(handle.workflow_id)
    assert successor.run_id != handle.run_id
    inbox = InboxEvent.objects.filter(instance__run_id=successor.run_id).order_by("id")
    assert list(inbox.values_list("kind", "name", "payload")) == [
        ("EventRaised", "late", {"payload": "kept"}),
        ("CancelRequested", "", {}),
    ]
    assert WorkflowInstance.objects.get(run_id=successor.run_id).cancel_requested_at is not None


@pytest.mark.django_db
def test_a_run_does_not_close_over_an_event_it_has_not_seen():
    handle = durable.start_workflow(ow.ow_returns_at_once, workflow_id=unique("late-close"))
    assert run_one_workflow_task(lambda: handle.signal("note", 1)) is False
    # Nothing was written but the task's release: it runs again, now with the event.
    assert handle.status() == "pending" and len(handle.history()) == 1
    assert run_one_workflow_task(lambda: None) is True
    assert handle.status() == "completed"
    assert [e.kind for e in handle.history()] == [
        "ExecutionStarted",
        "WorkflowTaskStarted",
        "EventRaised",
        "WorkflowCompleted",
    ]


@pytest.mark.django_db
def test_the_start_handle_reaches_the_run_its_workflow_continued_as():
    from django_durable.testing import WorkflowEnvironment

    with WorkflowEnvironment() as env:
        handle = env.start(ow.ow_continue_once, 0, workflow_id=unique("chain"))
        env.run_until_idle()
        assert handle.status() == "continued_as_new"
        handle.signal("late", "to the second run")
        assert env.result(handle) == "to the second run"
        with pytest.raises(durable.WorkflowNotOpen):
            handle.cancel()  # the chain has closed


@pytest.mark.django_db
def test_a_run_suspended_while_its_close_is_refused_stays_suspended():
    handle = durable.start_workflow(ow.ow_returns_at_once, workflow_id=unique("suspend-refused"))

    def meanwhile() -> None:
        handle.suspend("maintenance")
        handle.signal("note", 1)

    assert run_one_workflow_task(meanwhile) is False
    assert WorkItem.objects.get(instance__workflow_id=handle.workflow_id).parked_at is not None
    handle.resume()
    assert run_one_workflow_task(lambda: None) is True
    assert handle.status() == "completed"


@pytest.mark.django_db
def test_children_called_in_the_closing_task_start_and_meet_their_policy():
    from django_durable.testing import WorkflowEnvironment

    with WorkflowEnvironment() as env:
        handle = env.start(ow.ow_fire_and_forget, workflow_id=unique("faf"))
        assert env.result(handle) == "parent done"
        env.run_until_idle()
        assert durable.get_workflow(f"{handle.workflow_id}-kid").status() == "running"  # abandoned: runs on
        assert durable.get_workflow(f"{handle.workflow_id}-doomed").status() == "terminated"


@pytest.mark.django_db
def test_a_signal_to_a_run_that_continued_meanwhile_reaches_the_next_run():
    from django_durable import store
    from django_durable.testing import WorkflowEnvironment

    with WorkflowEnvironment() as env:
        handle = env.start(ow.ow_continue_once, 0, workflow_id=unique("race"))
        first_run = store.get_instance(handle.workflow_id)
        env.run_until_idle()  # it continues as new after the caller looked it up
        store.signal(handle.workflow_id, str(first_run.run_id), "late", "followed")
        assert env.result(handle) == "followed"
