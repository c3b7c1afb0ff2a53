"""Integration tests: workflows run by real ``durable_worker`` subprocesses on the
test database, driven and inspected through the public client API only.

``start_worker(batch=True)`` exits once nothing is due *now*; tests whose workflows
wait on a timer or an activity retry use a long-running worker instead.
"""

from __future__ import annotations

import builtins
import datetime
import itertools
import os
import subprocess
import sys
import time
import uuid

import pytest
from django.db import transaction
from django.utils import timezone

import django_durable as durable
from django_durable.models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem
from tests.conftest import REPO, wait_for
from tests.testapp import workflows as wf
from tests.testapp.models import ActivityRun

pytestmark = pytest.mark.workers

CLOSE_KINDS = {"WorkflowCompleted", "WorkflowFailed"}
TIMEOUT = 60


# -- helpers ------------------------------------------------------------------------


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """A key for ActivityRun rows that is unique to the test."""
    return f"{request.node.name}-{uuid.uuid4().hex[:8]}"


def finished(worker) -> None:
    """The worker exits by itself (batch) or after SIGTERM, with status 0."""
    code = worker.wait(TIMEOUT)
    assert code == 0, f"worker exited with {code}:\n{worker.log()}"


def stop(worker) -> None:
    worker.terminate()
    finished(worker)


def attempts(key: str) -> list[int]:
    """The attempts of the activity executions recorded under ``key``, in order."""
    return list(ActivityRun.objects.filter(key=key).order_by("id").values_list("attempt", flat=True))


def kinds(events) -> list[str]:
    return [event.kind for event in events]


def check_history(handle, *, closed: bool = True) -> list:
    """Seqs are 1..n, it starts with ExecutionStarted, and holds one close event, last (if closed)."""
    events = handle.history()
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert events[0].kind == "ExecutionStarted"
    closes = [event for event in events if event.kind in CLOSE_KINDS]
    if closed:
        assert len(closes) == 1, kinds(events)
        assert events[-1].kind in CLOSE_KINDS, kinds(events)
    else:
        assert closes == [], kinds(events)
    assert handle.describe().history_length == len(events)
    return events


def nothing_written() -> bool:
    return not (
        WorkflowInstance.objects.exists()
        or HistoryEvent.objects.exists()
        or InboxEvent.objects.exists()
        or WorkItem.objects.exists()
    )


# -- activities: parallel, sequential, retries, giving up ------------------------------


def test_fan_out_schedules_all_activities_at_once_and_returns_their_results(start_worker):
    handle = durable.start_workflow(wf.fan_out, 8)
    worker = start_worker(batch=True)
    assert handle.result(timeout=TIMEOUT) == [0, 2, 4, 6, 8, 10, 12, 14]
    finished(worker)

    events = check_history(handle)
    scheduled = [event for event in events if event.kind == "ActivityScheduled"]
    completed = [event for event in events if event.kind == "ActivityCompleted"]
    assert [event.task_id for event in scheduled] == list(range(1, 9))
    assert {event.name for event in scheduled} == {"add"}
    assert [event.payload["args"] for event in scheduled] == [[i, i] for i in range(8)]
    assert sorted(event.task_id for event in completed) == list(range(1, 9))
    # All eight were scheduled by the first workflow task, before any result came back.
    assert max(event.seq for event in scheduled) < min(event.seq for event in completed)
    assert events[-1].kind == "WorkflowCompleted"


def test_fan_out_activities_run_concurrently(start_worker, key):
    handle = durable.start_workflow(wf.tw_fan_out_slow, key, 4, 0.5)
    worker = start_worker(batch=True, concurrency=4)
    assert handle.result(timeout=TIMEOUT) == [f"{key}:{i}" for i in range(4)]
    finished(worker)
    started = ActivityRun.objects.filter(key__in=[f"{key}:{i}" for i in range(4)])
    done = ActivityRun.objects.filter(key__in=[f"{key}:{i}:done" for i in range(4)])
    assert started.count() == done.count() == 4
    # Every activity started before the first one finished: they overlapped.
    assert max(started.values_list("created_at", flat=True)) < min(done.values_list("created_at", flat=True))


def test_sequential_workflow_sets_vars(start_worker, key):
    handle = durable.start_workflow(wf.sequence, key, 4)
    worker = start_worker(batch=True)
    assert handle.result(timeout=TIMEOUT) == 4
    finished(worker)

    assert handle.vars() == {"done": 4}
    assert handle.describe().vars == {"done": 4}
    keys = ActivityRun.objects.filter(key__startswith=f"{key}:").order_by("id").values_list("key", flat=True)
    assert list(keys) == [f"{key}:{i}" for i in range(4)]
    events = check_history(handle)
    activity_events = [event.kind for event in events if event.kind.startswith("Activity")]
    # One at a time: each activity is scheduled only once the previous one completed.
    assert activity_events == ["ActivityScheduled", "ActivityCompleted"] * 4


def test_retries_with_backoff_then_success(start_worker, key):
    handle = durable.start_workflow(wf.retrying, key, 2)
    worker = start_worker()  # not batch: it must wait out the backoff
    assert handle.result(timeout=TIMEOUT) == 3
    stop(worker)

    rows = list(ActivityRun.objects.filter(key=key).order_by("id"))
    assert [row.attempt for row in rows] == [1, 2, 3]
    gaps = [(later.created_at - earlier.created_at).total_seconds() for earlier, later in itertools.pairwise(rows)]
    # FAST_RETRY: 0.05 s after the first failure, 0.1 s after the second (a little slack for clocks).
    assert gaps[0] >= 0.04, gaps
    assert gaps[1] >= 0.09, gaps

    events = check_history(handle)
    assert kinds(events).count("ActivityScheduled") == 1
    assert "ActivityFailed" not in kinds(events)  # failed attempts that were retried are not history
    (completed,) = [event for event in events if event.kind == "ActivityCompleted"]
    assert completed.payload["attempt"] == 3


def test_giving_up_exhausted_and_non_retryable(start_worker, key):
    handle = durable.start_workflow(wf.giving_up, key)
    worker = start_worker()
    assert handle.result(timeout=TIMEOUT) == {
        "always_fails": {"type": "RuntimeError", "message": "boom", "attempt": 2},
        "rejects": {"type": "ValueError", "message": "card declined", "attempt": 1},
    }
    stop(worker)

    assert attempts(f"{key}:always_fails") == [1, 2]  # maximum_attempts=2
    assert attempts(f"{key}:rejects") == [1]  # ValueError is non-retryable
    events = check_history(handle)
    failed = [event for event in events if event.kind == "ActivityFailed"]
    assert [(event.name, event.payload["attempt"]) for event in failed] == [
        ("always_fails", 2),
        ("rejects", 1),
    ]
    assert handle.status() == "completed"


def test_unhandled_activity_failure_fails_the_workflow(start_worker, key):
    handle = durable.start_workflow(wf.fails_unhandled, key)
    worker = start_worker()
    with pytest.raises(durable.WorkflowFailed) as info:
        handle.result(timeout=TIMEOUT)
    stop(worker)

    failure = info.value
    assert isinstance(failure, durable.DurableError)
    assert failure.status == "failed"
    assert failure.type == "django_durable.exceptions.ActivityError"
    assert "RuntimeError" in failure.message and "boom" in failure.message
    assert "boom" in str(failure)
    assert handle.status() == "failed"
    description = handle.describe()
    assert description.status == "failed"
    assert description.error["type"] == failure.type
    assert description.error["message"] == failure.message
    assert description.result is None
    assert description.closed_at is not None
    assert description.pending_work == []
    assert attempts(key) == [1, 2]
    events = check_history(handle)
    assert events[-1].kind == "WorkflowFailed"


# -- timers -------------------------------------------------------------------------


def test_sleeper_sleeps_and_now_advances(start_worker):
    began = time.monotonic()
    handle = durable.start_workflow(wf.sleeper, 1.0)
    worker = start_worker()
    result = handle.result(timeout=TIMEOUT)
    elapsed = time.monotonic() - began
    stop(worker)

    before = datetime.datetime.fromisoformat(result["before"])
    after = datetime.datetime.fromisoformat(result["after"])
    assert result["slept"] >= 1.0
    assert elapsed >= 1.0
    assert after - before == datetime.timedelta(seconds=result["slept"])
    description = handle.describe()
    assert before == description.started_at  # ctx.now() starts at the run's start
    assert after <= description.closed_at

    events = check_history(handle)
    timers = [event for event in events if event.kind == "TimerStarted"]
    assert len(timers) == 2
    assert datetime.datetime.fromisoformat(timers[0].payload["fire_at"]) == before + datetime.timedelta(seconds=1)
    assert kinds(events).count("TimerFired") == 2


def test_wait_any_timer_wins_against_slow_work(start_worker, key):
    handle = durable.start_workflow(wf.race, key, 5.0, 0.3)
    start_worker()  # killed at teardown: SIGTERM would wait for the slow activity
    assert handle.result(timeout=TIMEOUT) == "timer"
    events = check_history(handle)
    assert "TimerFired" in kinds(events)
    assert "ActivityCompleted" not in kinds(events)
    # The losing activity's work died with the run.
    assert handle.describe().pending_work == []
    assert not ActivityRun.objects.filter(key=f"{key}:done").exists()


def test_wait_any_work_wins_against_a_long_timer(start_worker, key):
    handle = durable.start_workflow(wf.race, key, 0.05, 30.0)
    worker = start_worker(batch=True)
    assert handle.result(timeout=TIMEOUT) == "work"
    # The 30 s timer was dropped when the run closed, so the batch worker has nothing left.
    finished(worker)
    events = check_history(handle)
    assert "ActivityCompleted" in kinds(events)
    assert "TimerFired" not in kinds(events)
    assert handle.describe().pending_work == []
    assert attempts(f"{key}:done") == [1]


# -- starting: start_at, ids, errors --------------------------------------------------


def test_start_at_in_the_future_delays_the_start(start_worker):
    worker = start_worker()
    wait_for(lambda: "started on queues" in worker.log(), what="the worker to start")
    start_at = timezone.now() + datetime.timedelta(seconds=2)
    handle = durable.start_workflow(wf.fan_out, 2, start_at=start_at)
    while True:
        status = handle.status()
        if timezone.now() >= start_at:
            break
        assert status == "pending"  # read before start_at, however loaded the machine
        time.sleep(0.1)
    assert handle.result(timeout=TIMEOUT) == [0, 2]
    stop(worker)

    description = handle.describe()
    assert description.scheduled_start_at == start_at
    assert description.created_at < start_at
    assert description.started_at >= start_at
    check_history(handle)


def test_batch_worker_leaves_a_future_start_alone(start_worker):
    start_at = timezone.now() + datetime.timedelta(hours=1)
    handle = durable.start_workflow(wf.fan_out, 2, start_at=start_at)
    worker = start_worker(batch=True)
    finished(worker)  # nothing is due yet: a batch worker leaves at once
    description = handle.describe()
    assert description.status == "pending"
    assert description.started_at is None
    (task,) = description.pending_work
    assert (task["kind"], task["due_at"], task["attempt"]) == ("workflow", start_at, 0)


@pytest.mark.database
def test_start_at_must_be_aware(db):
    with pytest.raises(ValueError):
        durable.start_workflow(wf.fan_out, 1, start_at=datetime.datetime.now())
    assert nothing_written()


def test_workflow_id_in_use_then_reused_once_closed(start_worker):
    workflow_id = f"order-{uuid.uuid4().hex[:8]}"
    first = durable.start_workflow(wf.sleeper, 1.5, workflow_id=workflow_id)
    assert first.workflow_id == workflow_id
    with pytest.raises(durable.WorkflowAlreadyExists):  # pending is open
        durable.start_workflow(wf.fan_out, 1, workflow_id=workflow_id)

    worker = start_worker()
    wait_for(lambda: first.status() == "running", what="the first run to be running")
    with pytest.raises(durable.WorkflowAlreadyExists) as info:
        durable.start_workflow(wf.fan_out, 1, workflow_id=workflow_id)
    assert isinstance(info.value, durable.DurableError)
    assert WorkflowInstance.objects.filter(workflow_id=workflow_id).count() == 1
    first_result = first.result(timeout=TIMEOUT)

    second = durable.start_workflow(wf.fan_out, 3, workflow_id=workflow_id)
    assert second.workflow_id == workflow_id
    assert second.run_id != first.run_id
    assert second.result(timeout=TIMEOUT) == [0, 2, 4]
    stop(worker)

    latest = durable.get_workflow(workflow_id)
    assert latest.run_id == second.run_id
    assert latest.describe().workflow_name == "fan_out"
    assert latest.result(timeout=1) == [0, 2, 4]
    old = durable.get_workflow(workflow_id, run_id=first.run_id)
    assert old.run_id == first.run_id
    assert old.describe().workflow_name == "sleeper"
    assert old.result(timeout=1) == first_result
    assert first.result(timeout=1) == first_result  # a handle stays on its own run
    assert WorkflowInstance.objects.filter(workflow_id=workflow_id).count() == 2


@pytest.mark.database
def test_get_workflow_of_unknown_id(db):
    with pytest.raises(durable.WorkflowNotFound):
        durable.get_workflow("no-such-workflow")
    handle = durable.start_workflow(wf.fan_out, 1, workflow_id="known")
    with pytest.raises(durable.WorkflowNotFound):
        durable.get_workflow("known", run_id=str(uuid.uuid4()))
    assert durable.get_workflow("known", run_id=handle.run_id).status() == "pending"


@pytest.mark.database
def test_start_of_an_unregistered_workflow(db):
    with pytest.raises(durable.NotRegistered):
        durable.start_workflow("no_such_workflow")

    def not_decorated(ctx):
        return None

    with pytest.raises(durable.NotRegistered):
        durable.start_workflow(not_decorated)
    assert nothing_written()


@pytest.mark.database
@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((object(),), {}),
        ((), {"n": {1, 2}}),
        (({1: "non-string key"},), {}),
        ((float("nan"),), {}),
    ],
    ids=["object", "set-kwarg", "int-key", "nan"],
)
def test_unserialisable_start_arguments_write_nothing(db, args, kwargs):
    with pytest.raises(durable.SerializationError) as info:
        durable.start_workflow(wf.fan_out, *args, **kwargs)
    assert isinstance(info.value, TypeError)
    assert "fan_out" in str(info.value)
    assert nothing_written()


# -- values across the durable boundary ---------------------------------------------


def test_dataclass_round_trip(start_worker):
    positional = durable.start_workflow(wf.money, wf.Money(21, "EUR"))
    keyword = durable.start_workflow(wf.money, amount=wf.Money(5, "USD"))
    worker = start_worker(batch=True)
    result = positional.result(timeout=TIMEOUT)
    assert isinstance(result, wf.Money)
    assert result == wf.Money(42, "EUR")
    assert keyword.result(timeout=TIMEOUT) == wf.Money(10, "USD")
    finished(worker)
    assert positional.describe().args == [wf.Money(21, "EUR")]
    assert keyword.describe().kwargs == {"amount": wf.Money(5, "USD")}
    assert positional.describe().result == wf.Money(42, "EUR")


def test_unserialisable_activity_result_fails_the_activity_without_retry(start_worker, key):
    plain = durable.start_workflow(wf.bad_result)
    counted = durable.start_workflow(wf.tw_bad_result_counted, key)
    worker = start_worker()  # not batch: a (wrong) retry would be scheduled in the future
    message = plain.result(timeout=TIMEOUT)
    assert "the result of activity 'unserialisable'" in message
    outcome = counted.result(timeout=TIMEOUT)
    stop(worker)

    assert outcome["type"] == "django_durable.exceptions.SerializationError"
    assert outcome["attempt"] == 1
    assert "tw_recorded_unserialisable" in outcome["message"]
    assert attempts(key) == [1]  # FAST_RETRY allows 5, but a bad result is not retried
    failed = [event for event in check_history(plain) if event.kind == "ActivityFailed"]
    assert [event.payload["attempt"] for event in failed] == [1]


def test_unserialisable_activity_argument_is_caught_in_the_workflow(start_worker):
    handle = durable.start_workflow(wf.bad_argument)
    continues = durable.start_workflow(wf.tw_bad_argument_then_continue)
    worker = start_worker(batch=True)
    message = handle.result(timeout=TIMEOUT)
    assert "the arguments of activity 'add'" in message
    outcome = continues.result(timeout=TIMEOUT)
    finished(worker)

    assert "ActivityScheduled" not in kinds(check_history(handle))
    assert outcome["sum"] == 5
    assert "the arguments of activity 'add'" in outcome["error"]
    scheduled = [event for event in check_history(continues) if event.kind == "ActivityScheduled"]
    assert [event.payload["args"] for event in scheduled] == [[2, 3]]


def test_unserialisable_variable_and_return_value(start_worker):
    handle = durable.start_workflow(wf.tw_bad_values)
    worker = start_worker(batch=True)
    with pytest.raises(durable.WorkflowFailed) as info:
        handle.result(timeout=TIMEOUT)
    finished(worker)
    assert info.value.type == "django_durable.exceptions.SerializationError"
    assert "the workflow's return value" in info.value.message
    variables = handle.vars()
    assert "bad" not in variables
    assert "variable 'bad'" in variables["var_error"]
    assert handle.history()[-1].kind == "WorkflowFailed"


def test_deterministic_helpers_are_stable_across_tasks(start_worker):
    handles = [durable.start_workflow(wf.deterministic) for _ in range(2)]
    worker = start_worker(batch=True)
    results = [handle.result(timeout=TIMEOUT) for handle in handles]
    finished(worker)

    for handle, result in zip(handles, results, strict=True):
        first = handle.vars()["first"]
        assert set(first) == {"now", "started_at", "random", "uuid"}
        assert {name: result[name] for name in first} == first
        assert result["random_after"] != result["random"]
        assert uuid.UUID(result["uuid"]).version == 4
        assert datetime.datetime.fromisoformat(result["started_at"]) == handle.describe().started_at
        assert result["now"] == result["started_at"]
    # Seeded per run: two runs do not share their random values.
    assert results[0]["random"] != results[1]["random"]
    assert results[0]["uuid"] != results[1]["uuid"]


def test_deterministic_values_of_the_first_task_survive_replay(start_worker):
    handle = durable.start_workflow(wf.tw_deterministic_paused, 1.5)
    worker = start_worker()

    def first_task_committed():
        description = handle.describe()
        return description if description.vars.get("first") else None

    description = wait_for(first_task_committed, what="the first workflow task")
    # ExecutionStarted, WorkflowTaskStarted, TimerStarted: these vars are the first task's.
    assert description.history_length == 3
    assert description.status == "running"
    first = description.vars["first"]
    result = handle.result(timeout=TIMEOUT)
    stop(worker)

    assert {name: result[name] for name in first} == first
    assert first["workflow_id"] == handle.workflow_id
    assert first["run_id"] == handle.run_id
    assert result["now_after"] > result["now"]
    assert handle.vars()["first"] == first


# -- looking at runs: describe(), history(), result(timeout) ----------------------------


def test_describe_while_waiting_then_after_completion(start_worker):
    handle = durable.start_workflow(wf.sleeper, 60, workflow_id="describe-me")
    description = handle.describe()
    assert description.status == "pending"
    assert description.started_at is None and description.closed_at is None
    assert description.history_length == 1 == len(handle.history())
    assert [item["kind"] for item in description.pending_work] == ["workflow"]

    worker = start_worker()

    def waiting():
        current = handle.describe()
        return current if current.waiting_on else None

    description = wait_for(waiting, what="the workflow to wait on its timer")
    assert description.workflow_id == "describe-me"
    assert description.run_id == handle.run_id
    assert description.workflow_name == "sleeper"
    assert description.status == "running"
    assert description.queue == "default"
    assert description.args == [60]
    assert description.kwargs == {}
    assert description.result is None and description.error is None and description.task_error is None
    assert "timer" in description.waiting_on
    assert description.created_at <= description.started_at <= description.updated_at
    assert description.scheduled_start_at is None
    assert description.closed_at is None
    assert description.history_length == len(handle.history()) == 3
    (timer,) = description.pending_work
    assert timer["kind"] == "timer"
    assert timer["due_at"] == description.started_at + datetime.timedelta(seconds=60)
    check_history(handle, closed=False)

    began = time.monotonic()
    with pytest.raises(durable.TimeoutError) as info:
        handle.result(timeout=0.2)
    assert 0.2 <= time.monotonic() - began < 5
    assert isinstance(info.value, builtins.TimeoutError)
    assert isinstance(info.value, durable.DurableError)
    with pytest.raises(TimeoutError):
        handle.result(timeout=datetime.timedelta(milliseconds=100))
    assert handle.status() == "running"
    stop(worker)


def test_describe_of_a_completed_run(start_worker):
    handle = durable.start_workflow(wf.fan_out, 3)
    worker = start_worker(batch=True)
    assert handle.result(timeout=TIMEOUT) == [0, 2, 4]
    finished(worker)

    description = handle.describe()
    assert description.status == "completed"
    assert description.result == [0, 2, 4]
    assert description.error is None and description.task_error is None
    assert description.waiting_on == ""
    assert description.pending_work == []
    assert description.created_at <= description.started_at <= description.closed_at
    events = check_history(handle)
    assert description.history_length == len(events)
    assert events[-1].payload["result"] == [0, 2, 4]


# -- broken workflow code ------------------------------------------------------------


def test_non_determinism_leaves_the_workflow_retryable_after_a_fix(start_worker, key):
    handle = durable.start_workflow(wf.versioned, key, 2.0)
    v1 = start_worker(batch=True, env={"DURABLE_TEST_VERSION": "1"})
    finished(v1)  # left once only the timer remained
    before = handle.history()
    assert [event.kind for event in before if event.task_id] == [
        "ActivityScheduled",
        "ActivityCompleted",
        "TimerStarted",
    ]
    assert handle.status() == "running"

    v2 = start_worker(env={"DURABLE_TEST_VERSION": "2"})

    def task_error():
        description = handle.describe()
        return description if description.task_error else None

    wait_for(task_error, what="the bad worker's task error")
    stop(v2)

    description = handle.describe()
    assert description.status == "running"
    assert description.task_error["type"].endswith("NonDeterminismError")
    assert "sequence number 1" in description.task_error["message"]
    assert handle.history() == before  # the bad worker committed nothing
    assert description.history_length == len(before)
    assert attempts(key) == [1] and attempts(f"{key}:after") == []

    fixed = start_worker(env={"DURABLE_TEST_VERSION": "1"})
    assert handle.result(timeout=TIMEOUT) == "1"
    stop(fixed)
    assert handle.describe().task_error is None
    assert attempts(key) == [1] and attempts(f"{key}:after") == [1]
    events = check_history(handle)
    assert events[: len(before)] == before


def test_workflow_code_that_exits_is_a_task_error(start_worker):
    handle = durable.start_workflow(wf.crasher)
    worker = start_worker()

    def task_error():
        description = handle.describe()
        return description if description.task_error else None

    wait_for(task_error, what="the crasher's task error")
    stop(worker)

    description = handle.describe()
    assert "sys.exit()" in description.task_error["message"]
    assert description.status in ("pending", "running")
    assert description.result is None and description.closed_at is None
    assert kinds(check_history(handle, closed=False)) == ["ExecutionStarted"]
    (task,) = description.pending_work
    assert task["kind"] == "workflow"
    assert task["failures"] >= 1
    assert "sys.exit()" in task["last_error"]["message"]
    with pytest.raises(durable.TimeoutError):
        handle.result(timeout=0.1)


def test_workflow_that_raises_fails_with_its_traceback(start_worker, key):
    handle = durable.start_workflow(wf.tw_explodes, key)
    worker = start_worker(batch=True)
    with pytest.raises(durable.WorkflowFailed) as info:
        handle.result(timeout=TIMEOUT)
    finished(worker)

    failure = info.value
    assert failure.type == "LookupError"
    assert failure.message == f"{key}: nothing found after 3"
    assert "tw_explodes" in failure.traceback
    description = handle.describe()
    assert description.status == "failed"
    assert description.result is None
    assert description.closed_at is not None
    assert description.error["type"] == "LookupError"
    assert "in tw_explodes" in description.error["traceback"]
    assert "raise LookupError" in description.error["traceback"]
    events = check_history(handle)
    assert events[-1].kind == "WorkflowFailed"
    assert events[-1].payload["error"]["type"] == "LookupError"


# -- queues and transactions ----------------------------------------------------------


def test_worker_queues_option(start_worker):
    handle = durable.start_workflow(wf.fan_out, 2, queue="other")
    assert handle.describe().queue == "other"
    default_worker = start_worker(batch=True)
    finished(default_worker)
    assert handle.status() == "pending"
    assert [item["attempt"] for item in handle.describe().pending_work] == [0]

    other_worker = start_worker(batch=True, queues="other")
    finished(other_worker)
    assert handle.result(timeout=5) == [0, 2]


def test_worker_serves_several_queues(start_worker):
    alpha = durable.start_workflow(wf.fan_out, 1, queue="alpha")
    beta = durable.start_workflow(wf.fan_out, 2, queue="beta")
    default = durable.start_workflow(wf.fan_out, 3)
    worker = start_worker(batch=True, queues="alpha,beta")
    finished(worker)
    assert alpha.result(timeout=5) == [0]
    assert beta.result(timeout=5) == [0, 2]
    assert default.status() == "pending"


@pytest.mark.database
def test_start_in_a_rolled_back_transaction_leaves_nothing(transactional_db):
    with pytest.raises(RuntimeError, match="roll back"), transaction.atomic():
        handle = durable.start_workflow(wf.fan_out, 2, workflow_id="in-transaction")
        assert handle.status() == "pending"  # visible inside the transaction
        raise RuntimeError("roll back")
    assert nothing_written()
    with pytest.raises(durable.WorkflowNotFound):
        durable.get_workflow("in-transaction")
    # The id is free again.
    assert durable.start_workflow(wf.fan_out, 2, workflow_id="in-transaction").status() == "pending"


def test_start_in_a_committed_transaction_runs(start_worker):
    with transaction.atomic():
        handle = durable.start_workflow(wf.fan_out, 2)
    worker = start_worker(batch=True)
    assert handle.result(timeout=TIMEOUT) == [0, 2]
    finished(worker)


# -- project checks (subprocesses) ------------------------------------------------------


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _scratch_db_name(tmp_path) -> str:
    """A database for commands that peek at one: never the suite's own."""
    scratch = {"postgres": "postgres", "mariadb": "information_schema"}
    return scratch.get(os.environ.get("DURABLE_TEST_DB", "sqlite"), str(tmp_path / "scratch.sqlite3"))


def test_system_checks_pass_without_warnings(tmp_path):
    proc = _run(
        [
            sys.executable,
            "-m",
            "django",
            "check",
            "--settings",
            "tests.settings",
            "--fail-level",
            "WARNING",
        ],
        DURABLE_DB_NAME=_scratch_db_name(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "System check identified no issues (0 silenced)." in proc.stdout, proc.stdout + proc.stderr


def test_no_missing_migrations(tmp_path):
    proc = _run(
        [
            sys.executable,
            "-m",
            "django",
            "makemigrations",
            "--check",
            "--dry-run",
            "--settings",
            "tests.settings",
            "django_durable",
            "testapp",
        ],
        DURABLE_DB_NAME=_scratch_db_name(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No changes detected" in proc.stdout, proc.stdout + proc.stderr


def test_demo_project_check(tmp_path):
    demo_env = {
        "DJANGO_SETTINGS_MODULE": "demo_project.settings",
        "DEMO_DB": str(tmp_path / "demo.sqlite3"),
    }
    proc = _run([sys.executable, "manage.py", "check", "--fail-level", "WARNING"], **demo_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "System check identified no issues (0 silenced)." in proc.stdout, proc.stdout + proc.stderr
    proc = _run([sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"], **demo_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No changes detected" in proc.stdout, proc.stdout + proc.stderr
