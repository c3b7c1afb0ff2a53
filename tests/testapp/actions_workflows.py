"""Workflows for the admin's actions (tests/test_admin_actions.py); names start with act_."""

from __future__ import annotations

import django_durable as durable

# Flipped by the tests: a "bug" in the code that a deploy fixes.
ACT_TASK_CRASHES = {"on": False}
ACT_CODE_BUG = {"on": False}


@durable.workflow
def act_waits(ctx: durable.WorkflowContext, name: str = "go") -> dict:
    """Returns the payload of the event ``name``; a cancel request closes it as canceled."""
    return {"payload": ctx.wait_for_event(name)}


@durable.activity(retry=durable.RetryPolicy(maximum_attempts=1))
def act_external(order: str) -> None:
    """Hands the work to someone else, who finishes it by task token (or an operator by hand)."""
    raise durable.ResultPending()


@durable.workflow
def act_awaits_external(ctx: durable.WorkflowContext, order: str) -> dict:
    try:
        return {"answer": ctx.call_activity(act_external, order).result()}
    except durable.ActivityError as exc:
        return {"error": {"type": exc.type, "message": exc.message, "details": exc.details}}


@durable.workflow
def act_task_crashes(ctx: durable.WorkflowContext) -> str:
    """Its workflow task fails (engine level, backed off, then parked) while the bug is on."""
    if ACT_TASK_CRASHES["on"]:
        raise SystemExit("simulated crash of the workflow task")
    return "fixed"


@durable.activity
def act_step(n: int) -> int:
    return n * 10


@durable.workflow
def act_fails_after_a_step(ctx: durable.WorkflowContext) -> int:
    """Fails (closes as failed) after one activity while the bug is on; a rerun after the fix completes."""
    value = ctx.call_activity(act_step, 4).result()
    if ACT_CODE_BUG["on"]:
        raise ValueError("bug after the step")
    return value + 2


@durable.workflow
def act_needs_external(ctx: durable.WorkflowContext, order: str) -> dict:
    """Fails (closes as failed) when its external activity fails."""
    return {"answer": ctx.call_activity(act_external, order).result()}
