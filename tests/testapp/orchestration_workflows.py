"""Workflows for the orchestration tests (events, children, continue-as-new, cancel, patched)."""

from __future__ import annotations

import django_durable as durable

from .models import ActivityRun


def bad_deploy_flag(step_key: str) -> str:
    return f"{step_key}:bad-deploy"


@durable.activity(retry=durable.RetryPolicy(initial_interval=0.05, maximum_attempts=1))
def ow_step(key: str) -> str:
    ActivityRun.objects.create(key=key, attempt=durable.activity_info().attempt, pid=0)
    if ActivityRun.objects.filter(key=bad_deploy_flag(key)).exists():
        raise RuntimeError(f"step {key} failed (bad deploy)")
    return key


@durable.workflow
def ow_three_steps(ctx: durable.WorkflowContext, key: str) -> list[str]:
    """Three steps; a step fails while its "bad deploy" flag row exists (recovered with rerun)."""
    return [ctx.call_activity(ow_step, f"{key}:{step}").result() for step in (1, 2, 3)]


@durable.workflow
def ow_waiter(ctx: durable.WorkflowContext) -> object:
    return ctx.wait_for_event("go")


@durable.workflow
def ow_child(ctx: durable.WorkflowContext, value: int) -> int:
    if value < 0:
        raise ValueError("negative")
    return value * 10


@durable.workflow
def ow_parent_with_fixed_child_id(ctx: durable.WorkflowContext, child_id: str) -> dict:
    try:
        return {"result": ctx.call_workflow(ow_child, 1, workflow_id=child_id).result()}
    except durable.ChildWorkflowError as exc:
        return {"status": exc.status, "type": exc.type}


@durable.workflow
def ow_parent(ctx: durable.WorkflowContext, values: list[int]) -> object:
    children = [ctx.call_workflow(ow_child, value) for value in values]
    try:
        return ctx.wait_all(children)
    except durable.ChildWorkflowError as exc:
        return {"failed": exc.workflow_id, "status": exc.status, "message": exc.message}


@durable.workflow
def ow_continue_once(ctx: durable.WorkflowContext, generation: int) -> object:
    if generation == 0:
        ctx.continue_as_new(1)
    return ctx.wait_for_event("late")


@durable.workflow
def ow_returns_at_once(ctx: durable.WorkflowContext) -> str:
    return "done"


@durable.workflow
def ow_fire_and_forget(ctx: durable.WorkflowContext) -> str:
    ctx.call_workflow(ow_waiter, workflow_id=f"{ctx.workflow_id}-kid", parent_close_policy="abandon")
    ctx.call_workflow(ow_waiter, workflow_id=f"{ctx.workflow_id}-doomed")  # terminate: the default
    return "parent done"
