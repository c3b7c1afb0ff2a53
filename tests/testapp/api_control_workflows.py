"""Workflows for the HTTP API's control verbs (tests/test_api_control.py); names start with apc_."""

from __future__ import annotations

import django_durable as durable

from .async_workflows import ac_request_approval


@durable.activity
def apc_clean_up(reason: str) -> str:
    return f"cleaned up after {reason}"


@durable.workflow
def apc_waits_for(ctx: durable.WorkflowContext, name: str) -> dict:
    """Returns the payload of the event ``name``; a cancel request closes it as canceled."""
    return {"payload": ctx.wait_for_event(name)}


@durable.workflow
def apc_cleans_up_on_cancel(ctx: durable.WorkflowContext, name: str) -> str:
    """Catches the cancel request while it waits, then runs an activity before it returns."""
    try:
        ctx.wait_for_event(name)
    except durable.CancelledError:
        return ctx.call_activity(apc_clean_up, "cancel").result()
    return "not canceled"


@durable.workflow
def apc_child(ctx: durable.WorkflowContext, value: int) -> int:
    return value * 2


@durable.workflow
def apc_parent(ctx: durable.WorkflowContext, child_id: str) -> int:
    return ctx.call_workflow(apc_child, 21, workflow_id=child_id).result()


@durable.workflow
def apc_counts_down(ctx: durable.WorkflowContext, n: int) -> str:
    if n > 0:
        return ctx.continue_as_new(n - 1)
    return "done"


@durable.workflow
def apc_approval_outlives_cancel(ctx: durable.WorkflowContext, folder: str) -> dict:
    """Asked to cancel, it still waits for its approval (finished by token) before it returns."""
    approval = ctx.call_activity(ac_request_approval, folder)
    try:
        return {"approval": approval.result()}
    except durable.CancelledError:
        return {"approval_after_cancel": approval.result()}
