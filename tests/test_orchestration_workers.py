"""Orchestration through real ``durable_worker`` processes: suspend/resume, terminate,
heartbeat and schedule-to-close timeouts, cancellation, child workflows,
continue-as-new, history limits and signals.

Every wait awaits an event (a gate file an activity writes, a database row, a log
line, a ``--batch`` worker exiting because nothing is due) with a generous upper
bound; nothing sleeps a fixed time. Workflows: tests/testapp/worker_orchestration_workflows.py.
"""

from __future__ import annotations

import datetime
import itertools
import json
from pathlib import Path

import pytest
from django.db import DatabaseError

import django_durable as durable
from django_durable.engine.events import EventKind
from django_durable.models import (
    HistoryEvent,
    InboxEvent,
    WorkflowInstance,
    WorkflowStatus,
    WorkItem,
    WorkItemKind,
)
from tests.conftest import WorkerProcess, wait_for
from tests.testapp.models import ActivityRun
from tests.testapp.worker_orchestration_workflows import (
    SIDE_QUEUE,
    STALL_TIMEOUT,
    wo_cancel_running_activity,
    wo_cancellable_sleep,
    wo_carry_events,
    wo_counter,
    wo_decides_slowly,
    wo_endless,
    wo_hanging_work,
    wo_heartbeat_work,
    wo_keeps_failing_work,
    wo_mailbox,
    wo_one_gate,
    wo_parent_catches,
    wo_parent_fan_out,
    wo_parent_of_counter,
    wo_parent_of_waiting,
    wo_side_step,
    wo_sleep_then_record,
    wo_suspendable,
    wo_waits_with_timeouts,
)

pytestmark = pytest.mark.workers

UPPER = 60.0  # an upper bound on any single wait, never an expected duration


# -- helpers ----------------------------------------------------------------------


def runs(key: str) -> list[int]:
    """The attempts of every recorded execution under ``key``, in order."""
    return list(ActivityRun.objects.filter(key=key).order_by("id").values_list("attempt", flat=True))


def make_gate(tmp_path: Path) -> Path:
    gate = tmp_path / "gate"
    gate.mkdir()
    return gate


def gate_started(gate: Path, name: str) -> int:
    """Wait until an activity announces gate ``name``; the pid of the worker running it."""
    path = gate / f"started-{name}"
    wait_for(path.exists, timeout=UPPER, what=f"{path} to exist")
    return int(path.read_text())


def release(gate: Path, name: str) -> None:
    (gate / f"release-{name}").touch()


def wait_log(worker: WorkerProcess, text: str, count: int = 1) -> str:
    wait_for(
        lambda: worker.log().count(text) >= count,
        timeout=UPPER,
        what=f"{text!r} x{count} in the log of worker {worker.pid}",
    )
    return worker.log()


def assert_no_trouble(*workers: WorkerProcess) -> None:
    for worker in workers:
        log = worker.log()
        assert "Traceback" not in log and "Unexpected error" not in log, log


def nothing_due(start_worker, queues: str | None = None) -> WorkerProcess:
    """A ``--batch`` worker that exits because no work is due: several claim loops found nothing."""
    worker = start_worker(batch=True, queues=queues)
    assert worker.wait(UPPER) == 0, worker.log()
    assert "No work due: exiting (--batch)." in worker.log()
    return worker


def instance_of(handle: durable.WorkflowHandle) -> WorkflowInstance:
    return WorkflowInstance.objects.get(run_id=handle.run_id)


def kinds(handle: durable.WorkflowHandle) -> list[str]:
    return [event.kind for event in handle.history()]


def inbox(handle: durable.WorkflowHandle) -> list[tuple[str, str]]:
    return list(InboxEvent.objects.filter(instance__run_id=handle.run_id).order_by("id").values_list("kind", "name"))


def items(handle: durable.WorkflowHandle, kind: str | None = None) -> list[WorkItem]:
    found = WorkItem.objects.filter(instance__run_id=handle.run_id)
    return list(found.filter(kind=kind) if kind else found)


def waiting_on(handle: durable.WorkflowHandle, text: str) -> bool:
    instance = instance_of(handle)
    return instance.status == WorkflowStatus.RUNNING and text in instance.waiting_on


def assert_history_sound(handle: durable.WorkflowHandle) -> list[HistoryEvent]:
    events = list(HistoryEvent.objects.filter(instance__run_id=handle.run_id).order_by("seq"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert instance_of(handle).history_length == len(events)
    assert events[0].kind == EventKind.EXECUTION_STARTED
    return events


def assert_nothing_left(handle: durable.WorkflowHandle) -> None:
    assert items(handle) == [] and inbox(handle) == []


# -- 1. suspend / resume -----------------------------------------------------------------


def test_suspend_holds_a_running_workflow_and_keeps_its_signals_until_resume(start_worker, tmp_path):
    gate = make_gate(tmp_path)
    handle = durable.start_workflow(wo_suspendable, "susp", str(gate))
    worker = start_worker()
    gate_started(gate, "a")

    handle.suspend("maintenance window")
    assert handle.status() == WorkflowStatus.SUSPENDED
    with pytest.raises(durable.WorkflowStateError):
        handle.suspend()
    handle.signal("go", 1)
    handle.signal("go", 2)
    # The activity that was already running finishes; its result waits with the signals.
    release(gate, "a")
    wait_for(lambda: ("ActivityCompleted", "wo_gate") in inbox(handle), timeout=UPPER, what="the gate's result")
    length = instance_of(handle).history_length

    nothing_due(start_worker)
    assert instance_of(handle).history_length == length  # no workflow task ran
    assert runs("susp:2") == []  # no new activity started
    assert handle.status() == WorkflowStatus.SUSPENDED
    assert inbox(handle) == [("EventRaised", "go"), ("EventRaised", "go"), ("ActivityCompleted", "wo_gate")]
    (task,) = items(handle, WorkItemKind.WORKFLOW)
    assert task.parked_at is not None and task.lease_owner is None

    handle.resume()
    with pytest.raises(durable.WorkflowStateError):
        handle.resume()  # not suspended any more (running, or already completed)
    assert handle.result(timeout=UPPER) == [1, 2]
    assert runs("susp:1") == runs("susp:2") == runs("susp:3") == [1]
    events = assert_history_sound(handle)
    event_kinds = [e.kind for e in events]
    suspended = event_kinds.index("ExecutionSuspended")
    resumed = event_kinds.index("ExecutionResumed")
    assert events[suspended].payload == {"reason": "maintenance window"}
    second_step = next(i for i, e in enumerate(events) if e.kind == "ActivityScheduled" and e.task_id == 3)
    assert suspended < resumed < second_step
    assert event_kinds[-1] == "WorkflowCompleted"
    assert_nothing_left(handle)
    assert_no_trouble(worker)


def test_a_suspended_run_does_not_start_an_activity_it_scheduled(start_worker):
    handle = durable.start_workflow(wo_side_step, "side")
    worker = start_worker()  # serves the default queue only: the side activity waits
    wait_for(lambda: items(handle, WorkItemKind.ACTIVITY), timeout=UPPER, what="the side activity to be scheduled")
    handle.suspend()
    (item,) = items(handle, WorkItemKind.ACTIVITY)
    assert item.parked_at is not None and item.attempt == 0

    nothing_due(start_worker, queues=f"default,{SIDE_QUEUE}")
    assert runs("side") == []
    item.refresh_from_db()
    assert item.attempt == 0 and item.lease_owner is None

    handle.resume()
    finisher = start_worker(queues=f"default,{SIDE_QUEUE}")
    assert handle.result(timeout=UPPER) == "side"
    assert runs("side") == [1]
    assert_nothing_left(handle)
    assert_no_trouble(worker, finisher)


def test_a_timer_that_fires_while_suspended_waits_for_resume(start_worker):
    handle = durable.start_workflow(wo_sleep_then_record, "nap", 1.0)
    worker = start_worker()
    wait_for(lambda: items(handle, WorkItemKind.TIMER), timeout=UPPER, what="the timer")
    handle.suspend()
    wait_for(lambda: ("TimerFired", "") in inbox(handle), timeout=UPPER, what="the timer to fire")
    length = instance_of(handle).history_length

    nothing_due(start_worker)
    assert instance_of(handle).history_length == length
    assert runs("nap") == [] and handle.status() == WorkflowStatus.SUSPENDED

    handle.resume()
    assert handle.result(timeout=UPPER) == "nap"
    assert runs("nap") == [1]
    assert_history_sound(handle)
    assert_no_trouble(worker)


def test_a_run_suspended_while_its_task_runs_stays_suspended_and_its_new_activity_waits(start_worker, tmp_path):
    gate = make_gate(tmp_path)
    handle = durable.start_workflow(wo_decides_slowly, "slow-decision", str(gate))
    worker = start_worker()
    wait_for(lambda: waiting_on(handle, "'go'"), timeout=UPPER, what="the wait for go")
    handle.signal("go")
    gate_started(gate, "decide")  # the workflow task is running workflow code
    handle.suspend("mid-task")
    release(gate, "decide")
    wait_for(lambda: items(handle, WorkItemKind.ACTIVITY), timeout=UPPER, what="the task to commit its activity")
    (item,) = items(handle, WorkItemKind.ACTIVITY)
    assert item.parked_at is not None
    assert handle.status() == WorkflowStatus.SUSPENDED

    nothing_due(start_worker)
    assert runs("slow-decision") == [] and handle.status() == WorkflowStatus.SUSPENDED
    handle.resume()
    assert handle.result(timeout=UPPER) == "slow-decision"
    assert runs("slow-decision") == [1]
    assert_history_sound(handle)
    assert_no_trouble(worker)


def test_a_cancel_sent_while_suspended_takes_effect_on_resume(start_worker):
    handle = durable.start_workflow(wo_cancellable_sleep, "nap-suspended", False)
    worker = start_worker()
    wait_for(lambda: waiting_on(handle, "timer"), timeout=UPPER, what="the hour-long sleep")
    handle.suspend()
    handle.cancel()
    assert inbox(handle) == [("CancelRequested", "")]
    nothing_due(start_worker)
    assert handle.status() == WorkflowStatus.SUSPENDED and runs("nap-suspended:cleanup") == []

    handle.resume()
    with pytest.raises(durable.WorkflowFailed) as failed:
        handle.result(timeout=UPPER)
    assert failed.value.status == "canceled"
    assert runs("nap-suspended:cleanup") == [1]
    assert_nothing_left(handle)
    assert_no_trouble(worker)


# -- 2. terminate while an activity runs ----------------------------------------------------


@pytest.mark.parametrize("beat", [False, True], ids=["silent", "heartbeating"])
def test_terminate_while_an_activity_runs_discards_its_late_outcome(start_worker, tmp_path, beat):
    gate = make_gate(tmp_path)
    key = f"doomed-{beat}"
    handle = durable.start_workflow(wo_one_gate, key, str(gate), beat)
    worker = start_worker()
    gate_started(gate, "a")

    handle.terminate("operator stopped it")
    instance = instance_of(handle)
    assert instance.status == WorkflowStatus.TERMINATED and instance.closed_at is not None
    assert instance.error["message"] == "operator stopped it"
    history = handle.history()
    assert history[-1].kind == "WorkflowTerminated" and history[-1].payload == {"reason": "operator stopped it"}
    assert_nothing_left(handle)
    with pytest.raises(durable.WorkflowFailed) as failed:
        handle.result(timeout=0)
    assert failed.value.status == "terminated" and "operator stopped it" in str(failed.value)

    if beat:  # the activity's next heartbeat is refused
        wait_for(lambda: runs(f"{key}:not-pending") == [1], timeout=UPPER, what="the heartbeat to be refused")
    else:
        release(gate, "a")
        wait_for(lambda: runs(f"{key}:done") == [1], timeout=UPPER, what="the activity to finish")
    wait_log(worker, "Activity outcome discarded")
    assert len(handle.history()) == len(history)
    assert_nothing_left(handle)

    for verb in (lambda: handle.signal("late"), handle.cancel, handle.suspend, handle.terminate):
        with pytest.raises(durable.WorkflowNotOpen):
            verb()
    assert worker.proc.poll() is None
    assert durable.start_workflow(wo_counter, 0, 1).result(timeout=UPPER) == 1  # still serving
    assert_no_trouble(worker)


def test_terminating_runs_whose_activities_heartbeat_all_the_time(start_worker, tmp_path):
    """Terminate and a heartbeat of the same run, at the same moment, must not deadlock
    (on PostgreSQL, the heartbeat's foreign-key check meets terminate's lock of the run)."""
    gate = make_gate(tmp_path)
    handles = [durable.start_workflow(wo_one_gate, f"busy-{n}", str(gate), True, 0.0, str(n)) for n in range(8)]
    worker = start_worker(concurrency=8)
    for n in range(8):
        gate_started(gate, str(n))
    failures = []
    for handle in handles:
        try:
            handle.terminate("enough")
        except DatabaseError as exc:  # e.g. "deadlock detected": must never reach the caller
            failures.append(repr(exc))
    assert failures == []
    wait_for(
        lambda: all(runs(f"busy-{n}:not-pending") == [1] for n in range(8)),
        timeout=UPPER,
        what="every activity's heartbeat to be refused",
    )
    assert [h.status() for h in handles] == [WorkflowStatus.TERMINATED] * 8
    assert_no_trouble(worker)


# -- 3. heartbeat and schedule-to-close timeouts ------------------------------------------


def saw(key: str, details: object) -> str:
    return f"{key}:saw:{json.dumps(details, sort_keys=True)}"


def test_a_stalled_attempt_times_out_and_its_retry_reads_the_heartbeat_details(start_worker, tmp_path):
    gate = make_gate(tmp_path)
    handle = durable.start_workflow(wo_heartbeat_work, "hb", str(gate), 1)
    worker = start_worker()
    assert handle.result(timeout=UPPER) == {"result": {"attempt": 2, "previous": {"attempt": 1, "progress": 2}}}
    assert runs(saw("hb", None)) == [1]
    assert runs(saw("hb", {"attempt": 1, "progress": 2})) == [2]
    log = worker.log()
    assert "Reaped activity wo_beats_then_stalls of workflow run" in log and "(attempt 1): lease of" in log, log
    assert "(attempt 2): lease of" not in log, log
    completions = [
        (e.kind, e.payload.get("attempt")) for e in handle.history() if e.task_id == 1 and e.kind != "ActivityScheduled"
    ]
    assert completions == [("ActivityCompleted", 2)]

    length = len(handle.history())
    release(gate, "1")  # the stalled attempt finishes late: thrown away
    wait_log(worker, "Activity outcome discarded")
    assert runs("hb:stale-finished") == [1]
    assert len(handle.history()) == length
    assert_no_trouble(worker)


def test_attempts_that_stop_heartbeating_fail_with_a_timeout_error_once_retries_run_out(start_worker, tmp_path):
    gate = make_gate(tmp_path)
    handle = durable.start_workflow(wo_heartbeat_work, "hb3", str(gate), 3)
    worker = start_worker()
    error = handle.result(timeout=UPPER)["error"]
    assert error["type"] == "django_durable.exceptions.TimeoutError"
    assert f"missed its heartbeat_timeout of {STALL_TIMEOUT}s" in error["message"] and error["attempt"] == 3
    # Each attempt read what the one before it last reported.
    assert runs(saw("hb3", None)) == [1]
    assert runs(saw("hb3", {"attempt": 1, "progress": 2})) == [2]
    assert runs(saw("hb3", {"attempt": 2, "progress": 2})) == [3]
    for attempt in ("1", "2", "3"):
        release(gate, attempt)
    wait_log(worker, "Activity outcome discarded", count=3)
    assert sorted(runs("hb3:stale-finished")) == [1, 2, 3]
    assert_no_trouble(worker)


def test_schedule_to_close_timeout_bounds_the_retries_of_a_failing_activity(start_worker):
    handle = durable.start_workflow(wo_keeps_failing_work, "s2c")
    worker = start_worker()
    error = handle.result(timeout=UPPER)["error"]
    attempts = runs("s2c")
    # Retried every 0.1 s, so a 1.5 s budget holds at most 16 attempts.
    assert 3 <= len(attempts) <= 16 and attempts == list(range(1, len(attempts) + 1))
    assert error["type"] == "ConnectionError" and error["attempt"] == attempts[-1]
    assert "the service is still down" in error["message"]
    assert "schedule_to_close_timeout of 1.5s reached" in error["message"]
    # No attempt that ran was claimed after the deadline (each recorded when it was claimed,
    # by the database's clock, which is what the deadline is measured by).
    claimed_after = [
        float(key.rsplit(":", 1)[1])
        for key in ActivityRun.objects.filter(key__startswith="s2c:claimed-after:").values_list("key", flat=True)
    ]
    assert len(claimed_after) == len(attempts) and max(claimed_after) < 1.5, claimed_after
    assert_no_trouble(worker)


def _step(kind: str) -> None:
    """Claim the one due item of ``kind`` and run it here, as a worker would."""
    from django_durable import store
    from django_durable.executors.activities import RunningActivity, execute_activity
    from django_durable.executors.workflow_tasks import execute_workflow_task

    [item] = store.claim(owner="test", kind=kind, queues=["default"], limit=1, lease_seconds=30)
    if kind == WorkItemKind.ACTIVITY:
        execute_activity(RunningActivity(item))
    else:
        execute_workflow_task(item)


def _miss_the_schedule_to_close_deadline() -> None:
    """Make the activity's retry (or first attempt) due now, after its deadline passed."""
    activity = WorkItem.objects.get(kind=WorkItemKind.ACTIVITY)
    activity.created_at -= datetime.timedelta(hours=1)
    activity.due_at = activity.created_at
    activity.save(update_fields=["created_at", "due_at"])


@pytest.mark.database
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("attempts_before", [1, 0], ids=["a-retry", "the-first-attempt"])
def test_an_attempt_claimed_after_its_schedule_to_close_deadline_does_not_run(attempts_before):
    key = f"late-{attempts_before}"
    handle = durable.start_workflow(wo_keeps_failing_work, key)
    _step(WorkItemKind.WORKFLOW)
    if attempts_before:
        _step(WorkItemKind.ACTIVITY)  # fails; its retry is due 0.1 s later
    _miss_the_schedule_to_close_deadline()
    _step(WorkItemKind.ACTIVITY)
    assert runs(key) == list(range(1, attempts_before + 1))  # the late attempt never ran
    assert not WorkItem.objects.filter(kind=WorkItemKind.ACTIVITY).exists()
    _step(WorkItemKind.WORKFLOW)
    error = handle.result(timeout=UPPER)["error"]
    if attempts_before:
        assert error["type"] == "ConnectionError" and error["attempt"] == 1
        assert "the service is still down (no retry: schedule_to_close_timeout of 1.5s reached)" in error["message"]
    else:
        assert error["type"] == "django_durable.exceptions.TimeoutError" and error["attempt"] == 1
        assert "schedule_to_close_timeout of 1.5s before attempt 1 started" in error["message"]


def test_schedule_to_close_timeout_cuts_off_a_hanging_attempt(start_worker, tmp_path):
    gate = make_gate(tmp_path)
    handle = durable.start_workflow(wo_hanging_work, "hang", str(gate))
    worker = start_worker()
    gate_started(gate, "hang-1")
    error = handle.result(timeout=UPPER)["error"]
    assert runs("hang") == [1]  # the deadline left no room for a retry
    assert error["type"] == "django_durable.exceptions.TimeoutError" and error["attempt"] == 1
    assert "schedule_to_close_timeout" in error["message"]
    # The worker was alive and renewing: the message must not blame it.
    assert "stopped renewing its lease" not in error["message"], error["message"]
    release(gate, "hang")
    wait_log(worker, "Activity outcome discarded")
    assert_no_trouble(worker)


# -- 4. cancel ------------------------------------------------------------------------


@pytest.mark.parametrize("swallow", [False, True], ids=["reraises", "catches"])
def test_cancel_during_a_long_timer_runs_cleanup(start_worker, swallow):
    key = f"nap-{swallow}"
    handle = durable.start_workflow(wo_cancellable_sleep, key, swallow)
    worker = start_worker()
    wait_for(lambda: waiting_on(handle, "timer"), timeout=UPPER, what="the hour-long sleep")
    handle.cancel()
    if swallow:
        assert handle.result(timeout=UPPER) == "cleaned up"
        assert handle.status() == WorkflowStatus.COMPLETED
    else:
        with pytest.raises(durable.WorkflowFailed) as failed:
            handle.result(timeout=UPPER)
        assert failed.value.status == "canceled"
        assert failed.value.type == "django_durable.exceptions.CancelledError"
        assert handle.status() == WorkflowStatus.CANCELED
    assert runs(f"{key}:cleanup") == [1]
    event_kinds = [e.kind for e in assert_history_sound(handle)]
    assert event_kinds.count("CancelRequested") == 1
    assert event_kinds.index("CancelRequested") < event_kinds.index("ActivityScheduled")
    assert event_kinds[-1] == ("WorkflowCompleted" if swallow else "WorkflowCanceled")
    assert_nothing_left(handle)  # the hour-long timer went with the run
    with pytest.raises(durable.WorkflowNotOpen):
        handle.cancel()
    assert_no_trouble(worker)


def test_a_running_activity_sees_the_cancellation_in_its_heartbeat(start_worker, tmp_path):
    gate = make_gate(tmp_path)
    handle = durable.start_workflow(wo_cancel_running_activity, "beater", str(gate))
    worker = start_worker()
    gate_started(gate, "beating")
    assert runs("beater:saw-cancel") == []
    handle.cancel()
    with pytest.raises(durable.WorkflowFailed) as failed:
        handle.result(timeout=UPPER)
    assert failed.value.status == "canceled"
    assert runs("beater") == runs("beater:saw-cancel") == [1]
    history = handle.history()
    completed = next(e for e in history if e.kind == "ActivityCompleted")
    assert completed.payload["result"].startswith("stopped after") and completed.payload["attempt"] == 1
    assert handle.vars() == {"activity_outcome": completed.payload["result"]}
    event_kinds = [e.kind for e in history]
    assert event_kinds.index("CancelRequested") < event_kinds.index("ActivityCompleted")
    assert event_kinds[-1] == "WorkflowCanceled"
    assert_no_trouble(worker)


# -- 5. child workflows ------------------------------------------------------------------


def test_a_parent_fans_out_to_children_and_gets_their_results(start_worker):
    handle = durable.start_workflow(wo_parent_fan_out, 3, workflow_id="fan-parent")
    worker = start_worker()
    assert handle.result(timeout=UPPER) == [1, 11, 21]
    parent = instance_of(handle)
    children = list(WorkflowInstance.objects.filter(parent=parent).order_by("parent_task_id"))
    assert [c.status for c in children] == [WorkflowStatus.COMPLETED] * 3
    assert [c.result for c in children] == [1, 11, 21]
    assert [c.parent_close_policy for c in children] == ["terminate"] * 3
    assert len({c.workflow_id for c in children}) == 3
    history = handle.history()
    scheduled = {e.task_id: e.payload["workflow_id"] for e in history if e.kind == "ChildWorkflowScheduled"}
    completed = {e.task_id: e.payload["workflow_id"] for e in history if e.kind == "ChildWorkflowCompleted"}
    assert scheduled == completed == {c.parent_task_id: c.workflow_id for c in children}
    assert_history_sound(handle)
    assert_no_trouble(worker)


def test_a_failing_child_raises_child_workflow_error_in_the_parent(start_worker):
    handle = durable.start_workflow(wo_parent_catches, "picky-child", workflow_id="picky-parent")
    worker = start_worker()
    assert handle.result(timeout=UPPER) == {
        "status": "failed",
        "type": "LookupError",
        "message": "out of stock",
        "workflow_id": "picky-child",
    }
    child = durable.get_workflow("picky-child")
    assert child.status() == WorkflowStatus.FAILED
    assert instance_of(child).parent_id == instance_of(handle).pk
    assert_no_trouble(worker)


def test_a_child_that_continues_as_new_answers_its_parent_from_its_last_run(start_worker):
    handle = durable.start_workflow(wo_parent_of_counter, 3, "counting-child", workflow_id="counting-parent")
    worker = start_worker()
    assert handle.result(timeout=UPPER) == 3
    chain = list(WorkflowInstance.objects.filter(workflow_id="counting-child").order_by("id"))
    assert [r.status for r in chain] == [WorkflowStatus.CONTINUED_AS_NEW] * 2 + [WorkflowStatus.COMPLETED]
    assert {r.parent_id for r in chain} == {instance_of(handle).pk}
    answers = [
        (e.kind, e.payload["run_id"])
        for e in handle.history()
        if e.kind.startswith("ChildWorkflow") and e.kind != "ChildWorkflowScheduled"
    ]
    assert answers == [("ChildWorkflowCompleted", str(chain[-1].run_id))]
    assert_no_trouble(worker)


@pytest.mark.parametrize("policy", ["terminate", "cancel", "abandon"])
def test_terminating_a_parent_applies_the_childs_parent_close_policy(start_worker, policy):
    child_id = f"child-{policy}"
    parent = durable.start_workflow(wo_parent_of_waiting, policy, child_id, policy, workflow_id=f"parent-{policy}")
    worker = start_worker()
    wait_for(
        lambda: WorkflowInstance.objects.filter(workflow_id=child_id, waiting_on__contains="finish").exists(),
        timeout=UPPER,
        what="the child to wait",
    )
    wait_for(lambda: waiting_on(parent, "child workflow"), timeout=UPPER, what="the parent to wait")
    child = durable.get_workflow(child_id)
    assert instance_of(child).parent_close_policy == policy

    parent.terminate("no longer needed")
    parent_length = len(parent.history())
    if policy == "terminate":
        assert child.status() == WorkflowStatus.TERMINATED  # at once, with the parent
        assert "parent_close_policy=terminate" in instance_of(child).error["message"]
    elif policy == "cancel":
        with pytest.raises(durable.WorkflowFailed) as failed:
            child.result(timeout=UPPER)
        assert failed.value.status == "canceled"
        assert runs(f"{policy}:child-cleanup") == [1]
        assert "CancelRequested" in kinds(child)
    else:
        nothing_due(start_worker)  # its first loop applies parent-close policies
        assert child.status() == WorkflowStatus.RUNNING
        assert "CancelRequested" not in kinds(child)
        child.signal("finish", "on my own")
        assert child.result(timeout=UPPER) == "on my own"
    # The closed parent hears nothing from the child.
    assert len(parent.history()) == parent_length and kinds(parent)[-1] == "WorkflowTerminated"
    assert_nothing_left(parent)
    assert_no_trouble(worker)


# -- 6. continue-as-new -------------------------------------------------------------------


def test_continue_as_new_carries_a_counter_to_the_last_run(start_worker):
    handle = durable.start_workflow(wo_counter, 0, 4, workflow_id="counter")
    worker = start_worker()
    assert handle.result(timeout=UPPER) == 4
    latest = durable.get_workflow("counter")
    assert latest.result(timeout=0) == 4

    chain = list(WorkflowInstance.objects.filter(workflow_id="counter").order_by("id"))
    assert [r.status for r in chain] == [WorkflowStatus.CONTINUED_AS_NEW] * 3 + [WorkflowStatus.COMPLETED]
    assert [r.input["args"] for r in chain] == [[0, 4], [1, 4], [2, 4], [3, 4]]
    assert [r.continued_from_id for r in chain] == [None] + [r.pk for r in chain[:-1]]
    assert str(chain[0].run_id) == handle.run_id and handle.status() == WorkflowStatus.CONTINUED_AS_NEW
    assert latest.run_id == str(chain[-1].run_id)
    for run, following in itertools.pairwise(chain):
        last = durable.get_workflow("counter", str(run.run_id)).history()[-1]
        assert last.kind == "WorkflowContinuedAsNew" and last.payload["args"] == following.input["args"]
    assert latest.vars() == {"count": 4}
    assert not WorkItem.objects.exists() and not InboxEvent.objects.exists()
    assert_no_trouble(worker)


def test_events_not_consumed_before_continue_as_new_reach_the_next_run(start_worker):
    handle = durable.start_workflow(wo_carry_events, 1, workflow_id="carry")
    worker = start_worker()
    wait_for(lambda: waiting_on(handle, "'go'"), timeout=UPPER, what="run 1 to wait for go")
    handle.signal("later", "a")
    handle.signal("later", "b")
    handle.signal("go")
    assert handle.result(timeout=UPPER) == ["a", "b"]
    first, second = WorkflowInstance.objects.filter(workflow_id="carry").order_by("id")
    assert first.status == WorkflowStatus.CONTINUED_AS_NEW and second.status == WorkflowStatus.COMPLETED
    carried = [(e.name, e.payload) for e in durable.get_workflow("carry").history() if e.kind == "EventRaised"]
    assert carried == [("later", {"payload": "a"}), ("later", {"payload": "b"})]
    assert_no_trouble(worker)


@pytest.mark.parametrize("sent", ["signals", "cancel"])
def test_what_arrives_while_the_continuing_task_runs_reaches_the_next_run(start_worker, tmp_path, sent):
    gate = make_gate(tmp_path)
    workflow_id = f"carry-race-{sent}"
    handle = durable.start_workflow(wo_carry_events, 1, str(gate), workflow_id=workflow_id)
    worker = start_worker()
    wait_for(lambda: waiting_on(handle, "'go'"), timeout=UPPER, what="run 1 to wait for go")
    handle.signal("go")
    gate_started(gate, "continue")  # the workflow task that will continue as new is running
    if sent == "signals":  # run 1 is still open: accepted
        handle.signal("later", "sent during the task")
        handle.signal("later", "also during the task")
    else:
        handle.cancel()
    release(gate, "continue")
    wait_for(lambda: handle.status() == WorkflowStatus.CONTINUED_AS_NEW, timeout=UPPER, what="run 1 to continue")
    latest = durable.get_workflow(workflow_id)
    # Something lost would leave run 2 waiting for ever: a bounded wait shows it.
    if sent == "signals":
        assert latest.result(timeout=15) == ["sent during the task", "also during the task"]
    else:
        with pytest.raises(durable.WorkflowFailed) as failed:
            latest.result(timeout=15)
        assert failed.value.status == "canceled"
        assert latest.run_id != handle.run_id and "CancelRequested" in kinds(latest)
    assert_no_trouble(worker)


# -- 7. history size limits --------------------------------------------------------------


def test_history_limit_fails_a_runaway_loop_and_warns_first(start_worker):
    runaway = durable.start_workflow(wo_endless, workflow_id="runaway")
    looping = durable.start_workflow(wo_counter, 0, 12, workflow_id="well-behaved")
    worker = start_worker(env={"DURABLE_TEST_HISTORY_MAX_EVENTS": "30", "DURABLE_TEST_HISTORY_WARN_EVENTS": "20"})
    with pytest.raises(durable.WorkflowFailed) as failed:
        runaway.result(timeout=UPPER)
    assert failed.value.status == "failed"
    assert failed.value.type == "django_durable.exceptions.HistoryTooLarge"
    assert "continue_as_new" in failed.value.message and "30" in failed.value.message
    instance = instance_of(runaway)
    assert 20 < instance.history_length <= 31, instance.history_length
    assert kinds(runaway)[-1] == "WorkflowFailed"
    assert_history_sound(runaway)
    assert_nothing_left(runaway)
    # Continuing as new keeps each run small: the same limits never trouble it.
    assert looping.result(timeout=UPPER) == 12
    log = worker.log()
    assert log.count("The history of workflow 'runaway' has") == 1, log
    assert "consider ctx.continue_as_new()" in log
    assert "'well-behaved' has" not in log
    assert_no_trouble(worker)


# -- 8. signals -----------------------------------------------------------------------------


def test_events_queue_in_order_and_a_timed_out_wait_consumes_nothing(start_worker, tmp_path):
    gate = make_gate(tmp_path)
    handle = durable.start_workflow(wo_mailbox, "mail", str(gate))
    for n in (1, 2, 3):  # before any workflow code ran
        handle.signal("item", n)
    assert inbox(handle) == [("EventRaised", "item")] * 3
    assert kinds(handle) == ["ExecutionStarted"]
    worker = start_worker()

    gate_started(gate, "busy")  # the three early events were consumed
    handle.signal("item", 4)
    handle.signal("item", 5)
    release(gate, "busy")
    gate_started(gate, "after")  # the wait for "late" timed out
    assert "EventRaised" not in [kind for kind, _ in inbox(handle)]
    handle.signal("late", "came late")
    release(gate, "after")
    assert handle.result(timeout=UPPER) == {
        "early": [1, 2, 3],
        "more": [4, 5],
        "timed_out": True,
        "late": "came late",
    }
    raised = [e.payload["payload"] for e in handle.history() if e.kind == "EventRaised"]
    assert raised == [1, 2, 3, 4, 5, "came late"]
    assert_history_sound(handle)
    assert_no_trouble(worker)


def test_waits_answered_by_events_leave_no_timer_behind(start_worker, tmp_path):
    gate = make_gate(tmp_path)
    handle = durable.start_workflow(wo_waits_with_timeouts, "timers", str(gate))
    handle.signal("first", "already here")  # answers the first wait in the task that starts it
    worker = start_worker()
    wait_for(lambda: waiting_on(handle, "'second'"), timeout=UPPER, what="the second wait")
    timers = items(handle, WorkItemKind.TIMER)
    assert len(timers) == 1, [(t.task_id, t.due_at) for t in timers]  # only the second wait's timeout

    handle.signal("second", "arrived while waiting")
    gate_started(gate, "end")
    assert items(handle, WorkItemKind.TIMER) == []
    assert kinds(handle).count("TimerCanceled") == 2
    release(gate, "end")
    assert handle.result(timeout=UPPER) == ["already here", "arrived while waiting"]
    assert_no_trouble(worker)
