"""Workflows for tests/test_admin_browser.py (the admin in a real browser). Names start with ``br_``."""

from __future__ import annotations

import django_durable as durable

__all__ = ["br_add", "br_awaits_approval", "br_steps"]


@durable.activity
def br_add(a: int, b: int) -> int:
    return a + b


@durable.workflow
def br_steps(ctx: durable.WorkflowContext, n: int) -> int:
    """``n`` rounds of set_var, an activity and a timer: many workflow tasks, and
    variables that differ from one point of the history to the next."""
    total = 0
    for step in range(1, n + 1):
        ctx.set_var("step", step)
        total = ctx.call_activity(br_add, total, step).result()
        ctx.set_var("total", total)
        ctx.sleep(60)
    ctx.set_var("done", True)
    return total


@durable.workflow
def br_awaits_approval(ctx: durable.WorkflowContext) -> dict:
    """Waits for the ``approve`` event: open (running) until someone sends it."""
    ctx.set_var("state", "waiting for approval")
    decision = ctx.wait_for_event("approve")
    ctx.set_var("state", "approved")
    return {"approved_by": decision}
