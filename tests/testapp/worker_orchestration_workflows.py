"""Workflows for the orchestration tests that run on real worker processes.

Names start with ``wo_`` to stay clear of the other test modules' registrations.
Activities that must block until the test says so wait on files in a "gate"
directory: they announce themselves with ``started-<name>`` and go on once the
test creates ``release-<name>``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import django_durable as durable
from django_durable.models import WorkItem

from .models import ActivityRun

QUICK_RETRY = durable.RetryPolicy(initial_interval=0.05, maximum_interval=0.2, maximum_attempts=5)
GATE_LIMIT = 120.0  # an activity never blocks longer than this, whatever a test does
SIDE_QUEUE = "wo-side"


def _record(key: str) -> None:
    ActivityRun.objects.create(key=key, attempt=durable.activity_info().attempt, pid=os.getpid())


def announce(gate_dir: str, name: str) -> None:
    """Write ``started-<name>`` (this process's pid) atomically: readers never see half a file."""
    staging = Path(gate_dir, f".started-{name}.tmp")
    staging.write_text(str(os.getpid()))
    staging.replace(Path(gate_dir, f"started-{name}"))


def released(gate_dir: str, name: str) -> bool:
    return Path(gate_dir, f"release-{name}").exists()


def _wait_for_release(gate_dir: str, name: str) -> None:
    deadline = time.monotonic() + GATE_LIMIT
    while not released(gate_dir, name):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gate {name!r} in {gate_dir} never opened")
        time.sleep(0.02)


# -- activities --------------------------------------------------------------------


@durable.activity
def wo_record(key: str) -> str:
    _record(key)
    return key


@durable.activity
def wo_increment(value: int) -> int:
    return value + 1


@durable.activity(queue=SIDE_QUEUE)
def wo_side(key: str) -> str:
    """Runs only on workers that serve SIDE_QUEUE."""
    _record(key)
    return key


@durable.activity(start_to_close_timeout=GATE_LIMIT + 30, retry=QUICK_RETRY)
def wo_gate(key: str, gate_dir: str, name: str, beat: bool = False, pause: float = 0.02) -> str:
    """Records itself, announces gate ``name``, waits for its release; with ``beat`` it
    heartbeats (every ``pause`` seconds) while it waits and records ``<key>:not-pending``
    if the heartbeat is refused."""
    _record(key)
    announce(gate_dir, name)
    deadline = time.monotonic() + GATE_LIMIT
    while not released(gate_dir, name):
        if beat:
            try:
                durable.heartbeat()
            except durable.ActivityNotPending:
                _record(f"{key}:not-pending")
                raise
        if time.monotonic() > deadline:
            raise RuntimeError(f"gate {name!r} never opened")
        time.sleep(pause)
    _record(f"{key}:done")
    return key


# Long enough for an attempt that heartbeats or returns at once never to miss it on a loaded
# machine; short enough that a stalled attempt is soon reaped.
STALL_TIMEOUT = 2.0


@durable.activity(
    heartbeat_timeout=STALL_TIMEOUT,
    start_to_close_timeout=GATE_LIMIT + 30,
    retry=durable.RetryPolicy(initial_interval=0.05, maximum_attempts=3),
)
def wo_beats_then_stalls(key: str, gate_dir: str, stalling_attempts: int) -> dict:
    """Records what the previous attempt reported; the first ``stalling_attempts`` attempts
    report progress, then stop heartbeating (blocked on gate ``<attempt>``)."""
    info = durable.activity_info()
    _record(f"{key}:saw:{json.dumps(info.heartbeat_details, sort_keys=True)}")
    if info.attempt > stalling_attempts:
        return {"attempt": info.attempt, "previous": info.heartbeat_details}
    for progress in range(3):
        durable.heartbeat({"attempt": info.attempt, "progress": progress})
    announce(gate_dir, str(info.attempt))
    _wait_for_release(gate_dir, str(info.attempt))
    _record(f"{key}:stale-finished")
    return {"attempt": info.attempt, "stale": True}


@durable.activity(
    schedule_to_close_timeout=1.5,
    retry=durable.RetryPolicy(initial_interval=0.1, backoff_coefficient=1.0, maximum_attempts=0),
)
def wo_keeps_failing(key: str) -> None:
    """Records itself, and how long after the activity was scheduled this attempt was
    claimed (``<key>:claimed-after:<seconds>``, by the database's clock, read from its work item)."""
    _record(key)
    info = durable.activity_info()
    claimed_at, scheduled_at = WorkItem.objects.values_list("claimed_at", "created_at").get(
        instance__run_id=info.run_id, task_id=int(info.activity_id), attempt=info.attempt
    )
    _record(f"{key}:claimed-after:{(claimed_at - scheduled_at).total_seconds():.6f}")
    raise ConnectionError("the service is still down")


@durable.activity(schedule_to_close_timeout=1.0, retry=QUICK_RETRY)
def wo_hangs(key: str, gate_dir: str) -> str:
    """Blocks (without heartbeats) until released: only schedule_to_close_timeout bounds it."""
    _record(key)
    announce(gate_dir, f"hang-{durable.activity_info().attempt}")
    _wait_for_release(gate_dir, "hang")
    return key


@durable.activity(heartbeat_timeout=5, start_to_close_timeout=GATE_LIMIT + 30)
def wo_heartbeat_until_canceled(key: str, gate_dir: str) -> str:
    _record(key)
    announce(gate_dir, "beating")
    deadline = time.monotonic() + GATE_LIMIT
    beats = 0
    while time.monotonic() < deadline:
        beats += 1
        if durable.heartbeat({"beats": beats}):
            _record(f"{key}:saw-cancel")
            return f"stopped after {beats} heartbeats"
        time.sleep(0.02)
    raise RuntimeError("the cancellation never showed in a heartbeat")


# -- workflows ----------------------------------------------------------------------


@durable.workflow
def wo_suspendable(ctx: durable.WorkflowContext, key: str, gate_dir: str) -> list:
    ctx.call_activity(wo_record, f"{key}:1").result()
    ctx.call_activity(wo_gate, f"{key}:gate", gate_dir, "a").result()
    ctx.call_activity(wo_record, f"{key}:2").result()
    events = [ctx.wait_for_event("go"), ctx.wait_for_event("go")]
    ctx.call_activity(wo_record, f"{key}:3").result()
    return events


@durable.workflow
def wo_side_step(ctx: durable.WorkflowContext, key: str) -> str:
    return ctx.call_activity(wo_side, key).result()


@durable.workflow
def wo_sleep_then_record(ctx: durable.WorkflowContext, key: str, seconds: float) -> str:
    ctx.sleep(seconds)
    return ctx.call_activity(wo_record, key).result()


@durable.workflow
def wo_one_gate(
    ctx: durable.WorkflowContext, key: str, gate_dir: str, beat: bool = False, pause: float = 0.02, name: str = "a"
) -> str:
    return ctx.call_activity(wo_gate, key, gate_dir, name, beat, pause).result()


def _outcome(ctx: durable.WorkflowContext, activity: object, *args: object) -> dict:
    try:
        return {"result": ctx.call_activity(activity, *args).result()}
    except durable.ActivityError as exc:
        return {"error": {"type": exc.type, "message": exc.message, "attempt": exc.attempt}}


@durable.workflow
def wo_heartbeat_work(ctx: durable.WorkflowContext, key: str, gate_dir: str, stalling_attempts: int) -> dict:
    return _outcome(ctx, wo_beats_then_stalls, key, gate_dir, stalling_attempts)


@durable.workflow
def wo_keeps_failing_work(ctx: durable.WorkflowContext, key: str) -> dict:
    return _outcome(ctx, wo_keeps_failing, key)


@durable.workflow
def wo_hanging_work(ctx: durable.WorkflowContext, key: str, gate_dir: str) -> dict:
    return _outcome(ctx, wo_hangs, key, gate_dir)


@durable.workflow
def wo_cancellable_sleep(ctx: durable.WorkflowContext, key: str, swallow: bool) -> str:
    try:
        ctx.sleep(3600)
    except durable.CancelledError:
        ctx.call_activity(wo_record, f"{key}:cleanup").result()
        if swallow:
            return "cleaned up"
        raise
    return "slept"


@durable.workflow
def wo_cancel_running_activity(ctx: durable.WorkflowContext, key: str, gate_dir: str) -> str:
    work = ctx.call_activity(wo_heartbeat_until_canceled, key, gate_dir)
    try:
        return work.result()
    except durable.CancelledError:
        # Wait for the activity to notice the cancellation (its heartbeat says so) and stop.
        ctx.set_var("activity_outcome", work.result())
        raise


@durable.workflow
def wo_child(ctx: durable.WorkflowContext, n: int) -> int:
    return ctx.call_activity(wo_increment, n * 10).result()


@durable.workflow
def wo_failing_child(ctx: durable.WorkflowContext, message: str) -> None:
    ctx.call_activity(wo_increment, 0).result()
    raise LookupError(message)


@durable.workflow
def wo_fan_out_records(ctx: durable.WorkflowContext, key: str, n: int) -> list[str]:
    """``n`` recording activities at once: an activity that ran twice shows as two rows."""
    return ctx.wait_all([ctx.call_activity(wo_record, f"{key}:{i}") for i in range(n)])


@durable.workflow
def wo_parent_fan_out(ctx: durable.WorkflowContext, n: int) -> list[int]:
    return ctx.wait_all([ctx.call_workflow(wo_child, i) for i in range(n)])


@durable.workflow
def wo_parent_catches(ctx: durable.WorkflowContext, child_id: str) -> dict:
    try:
        ctx.call_workflow(wo_failing_child, "out of stock", workflow_id=child_id).result()
    except durable.ChildWorkflowError as exc:
        return {"status": exc.status, "type": exc.type, "message": exc.message, "workflow_id": exc.workflow_id}
    return {}


@durable.workflow
def wo_waiting_child(ctx: durable.WorkflowContext, key: str) -> object:
    try:
        return ctx.wait_for_event("finish")
    except durable.CancelledError:
        ctx.call_activity(wo_record, f"{key}:child-cleanup").result()
        raise


@durable.workflow
def wo_parent_of_waiting(ctx: durable.WorkflowContext, key: str, child_id: str, policy: str) -> object:
    return ctx.call_workflow(wo_waiting_child, key, workflow_id=child_id, parent_close_policy=policy).result()


@durable.workflow
def wo_counter(ctx: durable.WorkflowContext, count: int, until: int) -> int:
    count = ctx.call_activity(wo_increment, count).result()
    ctx.set_var("count", count)
    if count < until:
        ctx.continue_as_new(count, until)
    return count


@durable.workflow
def wo_carry_events(ctx: durable.WorkflowContext, run_number: int, gate_dir: str = "") -> list:
    """Run 1 waits for "go" and continues as new; run 2 reads two "later" events.

    With ``gate_dir``, run 1's workflow code pauses (gate "continue") between reading
    "go" and continuing, so that a test can send an event while that workflow task runs.
    """
    if run_number == 1:
        ctx.wait_for_event("go")
        if gate_dir and not released(gate_dir, "continue"):
            announce(gate_dir, "continue")
            _wait_for_release(gate_dir, "continue")
        ctx.continue_as_new(2, gate_dir)
    return [ctx.wait_for_event("later"), ctx.wait_for_event("later")]


@durable.workflow
def wo_endless(ctx: durable.WorkflowContext) -> None:
    step = 0
    while True:
        step = ctx.call_activity(wo_increment, step).result()
        ctx.set_var("step", step)


@durable.workflow
def wo_mailbox(ctx: durable.WorkflowContext, key: str, gate_dir: str) -> dict:
    early = [ctx.wait_for_event("item") for _ in range(3)]
    ctx.call_activity(wo_gate, f"{key}:busy", gate_dir, "busy").result()
    more = [ctx.wait_for_event("item"), ctx.wait_for_event("item")]
    try:
        ctx.wait_for_event("late", timeout=0.3)
        timed_out = False
    except durable.TimeoutError:
        timed_out = True
    ctx.call_activity(wo_gate, f"{key}:after-timeout", gate_dir, "after").result()
    return {"early": early, "more": more, "timed_out": timed_out, "late": ctx.wait_for_event("late")}


@durable.workflow
def wo_waits_with_timeouts(ctx: durable.WorkflowContext, key: str, gate_dir: str) -> list:
    """Two waits with long timeouts, both answered by events; then a gate, to look at the run."""
    first = ctx.wait_for_event("first", timeout=3600)
    second = ctx.wait_for_event("second", timeout=3600)
    ctx.call_activity(wo_gate, f"{key}:end", gate_dir, "end").result()
    return [first, second]


@durable.workflow
def wo_decides_slowly(ctx: durable.WorkflowContext, key: str, gate_dir: str) -> str:
    """After "go", the workflow code itself pauses (gate "decide") before scheduling an
    activity, so that a test can act while that workflow task runs."""
    ctx.wait_for_event("go")
    if not released(gate_dir, "decide"):
        announce(gate_dir, "decide")
        _wait_for_release(gate_dir, "decide")
    return ctx.call_activity(wo_record, key).result()


@durable.workflow
def wo_parent_of_counter(ctx: durable.WorkflowContext, until: int, child_id: str) -> int:
    """Its child continues as new several times; the parent gets the last run's result."""
    return ctx.call_workflow(wo_counter, 0, until, workflow_id=child_id).result()
