"""Workflows for tests/test_testing_helpers.py (django_durable.testing). Names start with ``th_``."""

from __future__ import annotations

import datetime
import os

import django_durable as durable

from .models import ActivityRun

__all__ = [
    "th_approval",
    "th_awaits_external",
    "th_awaits_external_with_timeout",
    "th_cancellable",
    "th_charge",
    "th_charge_declines_at_once",
    "th_cleanup",
    "th_collector",
    "th_counter",
    "th_double",
    "th_external",
    "th_external_with_timeout",
    "th_failing_child",
    "th_long_sleep",
    "th_parent",
    "th_retrying",
    "th_sleepy_child",
    "th_slow_retry",
    "th_spinner",
    "th_subscription",
    "th_crashes_every_task",
    "th_task_crashes_then_works",
    "th_waits_forever",
    "th_waits_on_child",
]

DAY = datetime.timedelta(days=1)
# How many more workflow tasks of th_task_crashes_then_works crash (set by the test; in-process only).
TASK_CRASHES = {"left": 0}


def _record(key: str) -> None:
    ActivityRun.objects.create(key=key, attempt=durable.activity_info().attempt, pid=os.getpid())


class PaymentDeclined(Exception):
    pass


@durable.activity(retry=durable.RetryPolicy(initial_interval=60, maximum_attempts=3))
def th_charge(key: str, amount: int) -> str:
    """The real payment: its side effect (an ActivityRun row) shows whether it ran."""
    _record(key)
    return f"real-receipt-{amount}"


@durable.activity(retry=durable.RetryPolicy(maximum_attempts=1))
def th_charge_declines_at_once(key: str, amount: int) -> str:
    """A fake for th_charge with options of its own: no retries."""
    raise PaymentDeclined(f"{amount} declined")


@durable.workflow
def th_subscription(ctx: durable.WorkflowContext, key: str, amount: int, cycles: int) -> list:
    receipts: list = []
    for cycle in range(cycles):
        ctx.set_var("cycle", cycle)
        ctx.sleep(datetime.timedelta(days=30))
        try:
            receipts.append(ctx.call_activity(th_charge, f"{key}:{cycle}", amount).result())
        except durable.ActivityError as exc:
            receipts.append({"error": exc.message, "attempt": exc.attempt})
        ctx.set_var("paid_at", ctx.now().isoformat())
    ctx.set_var("cycle", cycles)
    return receipts


@durable.workflow
def th_long_sleep(ctx: durable.WorkflowContext, days: int) -> dict:
    ctx.set_var("sleeping", True)
    ctx.sleep(datetime.timedelta(days=days))
    return {"started": ctx.started_at.isoformat(), "woke": ctx.now().isoformat()}


@durable.activity(retry=durable.RetryPolicy(initial_interval=3600, backoff_coefficient=2, maximum_attempts=5))
def th_slow_retry(key: str, fail_times: int) -> int:
    """Fails its first ``fail_times`` attempts; retries an hour, two, four... later."""
    _record(key)
    attempt = durable.activity_info().attempt
    if attempt <= fail_times:
        raise ConnectionError(f"attempt {attempt} failed")
    return attempt


@durable.workflow
def th_retrying(ctx: durable.WorkflowContext, key: str, fail_times: int) -> dict:
    attempt = ctx.call_activity(th_slow_retry, key, fail_times).result()
    return {"attempt": attempt, "at": ctx.now().isoformat()}


@durable.workflow
def th_approval(ctx: durable.WorkflowContext, timeout_days: int) -> dict:
    try:
        decision = ctx.wait_for_event("approve", timeout=datetime.timedelta(days=timeout_days))
    except durable.TimeoutError:
        return {"outcome": "timed out", "at": ctx.now().isoformat()}
    return {"outcome": "approved", "by": decision["by"], "at": ctx.now().isoformat()}


@durable.activity
def th_double(n: int) -> int:
    return n * 2


@durable.workflow
def th_sleepy_child(ctx: durable.WorkflowContext, n: int) -> int:
    ctx.sleep(DAY * n)
    return ctx.call_activity(th_double, n).result()


@durable.workflow
def th_failing_child(ctx: durable.WorkflowContext) -> None:
    ctx.sleep(DAY)
    raise ValueError("the child gave up")


@durable.workflow
def th_parent(ctx: durable.WorkflowContext, n: int) -> dict:
    doubled = ctx.wait_all(
        [ctx.call_workflow(th_sleepy_child, i, workflow_id=f"{ctx.workflow_id}-child-{i}") for i in range(1, n + 1)]
    )
    try:
        ctx.call_workflow(th_failing_child).result()
        failure = None
    except durable.ChildWorkflowError as exc:
        failure = {"status": exc.status, "message": exc.message}
    return {"doubled": doubled, "failure": failure, "at": ctx.now().isoformat()}


@durable.workflow
def th_counter(ctx: durable.WorkflowContext, n: int, limit: int) -> dict:
    ctx.set_var("n", n)
    if n >= limit:
        return {"n": n, "at": ctx.now().isoformat()}
    ctx.sleep(DAY)
    ctx.continue_as_new(n + 1, limit)


@durable.workflow
def th_collector(ctx: durable.WorkflowContext, collected: list, want: int) -> list:
    """Takes one event per run: the rest wait in the next run (carried by continue-as-new)."""
    collected = [*collected, ctx.wait_for_event("item")]
    if len(collected) == want:
        return collected
    ctx.continue_as_new(collected, want)


@durable.activity
def th_cleanup(key: str) -> str:
    _record(key)
    return key


@durable.workflow
def th_cancellable(ctx: durable.WorkflowContext, key: str) -> str:
    try:
        ctx.sleep(datetime.timedelta(days=365))
    except durable.CancelledError:
        ctx.call_activity(th_cleanup, f"{key}:cleanup").result()
        raise
    return "slept a year"


@durable.workflow
def th_waits_forever(ctx: durable.WorkflowContext) -> object:
    return ctx.wait_for_event("never-sent")


@durable.workflow
def th_waits_on_child(ctx: durable.WorkflowContext) -> object:
    return ctx.call_workflow(th_waits_forever, workflow_id=f"{ctx.workflow_id}-child").result()


@durable.activity
def th_external(order: str) -> None:
    """Hands the work to someone else; they finish it by task token. No timeout."""
    raise durable.ResultPending()


@durable.activity(start_to_close_timeout=3600, retry=durable.RetryPolicy(maximum_attempts=1))
def th_external_with_timeout(order: str) -> None:
    raise durable.ResultPending()


@durable.workflow
def th_awaits_external(ctx: durable.WorkflowContext, order: str) -> dict:
    return {"answer": ctx.call_activity(th_external, order).result(), "at": ctx.now().isoformat()}


@durable.workflow
def th_awaits_external_with_timeout(ctx: durable.WorkflowContext, order: str) -> dict:
    try:
        return {"answer": ctx.call_activity(th_external_with_timeout, order).result()}
    except durable.ActivityError as exc:
        return {"error": exc.type, "at": ctx.now().isoformat()}


@durable.workflow
def th_task_crashes_then_works(ctx: durable.WorkflowContext) -> str:
    """Its workflow task crashes (an engine-level failure, retried with backoff) while
    TASK_CRASHES["left"] > 0; a crash stands for a bug fixed by a deploy."""
    if TASK_CRASHES["left"] > 0:
        TASK_CRASHES["left"] -= 1
        raise SystemExit("simulated crash of the workflow task")
    return ctx.now().isoformat()


@durable.workflow
def th_crashes_every_task(ctx: durable.WorkflowContext) -> str:
    raise SystemExit("workflow code called sys.exit()")


@durable.workflow
def th_spinner(ctx: durable.WorkflowContext) -> None:
    while True:
        ctx.sleep(0)
