"""Workflows for tests/test_admin_inspect.py (the admin's run list and run page). Names start with ``in_``."""

from __future__ import annotations

import datetime

import django_durable as durable

__all__ = ["INSPECT_CODE", "in_changes_its_code", "in_child", "in_everything", "in_odd_name", "in_steps", "in_twice"]

# Which version of in_changes_its_code's code is deployed (flipped by a test, in-process only).
INSPECT_CODE = {"version": 1}


@durable.activity(retry=durable.RetryPolicy(initial_interval=10, maximum_attempts=3))
def in_twice(n: int) -> int:
    """Fails its first attempt, then succeeds: history records the attempt that did."""
    if durable.activity_info().attempt == 1:
        raise ConnectionError("first attempt <always> fails & retries")
    return n


# A name that needs escaping wherever it is shown.
@durable.activity(name="in_odd<name>&co")
def in_odd_name(n: int) -> int:
    return n + 1


@durable.activity
def in_steps(n: int) -> int:
    return n


@durable.workflow
def in_child(ctx: durable.WorkflowContext, n: int) -> int:
    ctx.sleep(datetime.timedelta(minutes=5))
    return n * 10


@durable.workflow
def in_everything(ctx: durable.WorkflowContext, n: int) -> dict:
    """A retried activity, a timer, a wait that times out, a wait answered by a signal and a child."""
    ctx.set_var("stage", "activity")
    first = ctx.call_activity(in_twice, n).result()
    odd = ctx.call_activity(in_odd_name, n).result()
    ctx.set_var("stage", "sleeping")
    ctx.sleep(60)
    try:
        ctx.wait_for_event("approve", timeout=30)
        timed_out = False
    except durable.TimeoutError:
        timed_out = True
    ctx.set_var("stage", "waiting")
    decision = ctx.wait_for_event("approve")
    child = ctx.call_workflow(in_child, n, workflow_id=f"{ctx.workflow_id}-child").result()
    ctx.set_var("stage", "done")
    return {"first": first, "odd": odd, "timed_out": timed_out, "decision": decision, "child": child}


@durable.workflow
def in_changes_its_code(ctx: durable.WorkflowContext) -> str:
    """Version 2 sleeps where version 1 called an activity: replaying a version-1 history fails."""
    if INSPECT_CODE["version"] == 2:
        ctx.sleep(1)
    else:
        ctx.call_activity(in_steps, 1).result()
    ctx.wait_for_event("go")
    return "done"
