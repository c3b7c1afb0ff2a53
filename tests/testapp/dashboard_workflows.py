"""Workflows for tests/test_admin_dashboard.py (the operator's dashboard). Names start with ``dash_``."""

from __future__ import annotations

import django_durable as durable

__all__ = ["dash_crashes", "dash_fails", "dash_returns", "dash_waits"]


@durable.workflow
def dash_returns(ctx: durable.WorkflowContext) -> str:
    return "done"


@durable.workflow
def dash_waits(ctx: durable.WorkflowContext) -> object:
    return ctx.wait_for_event("go")


@durable.workflow
def dash_fails(ctx: durable.WorkflowContext) -> None:
    raise ValueError("the workflow gave up")


@durable.workflow
def dash_crashes(ctx: durable.WorkflowContext) -> None:
    """Its workflow task always fails at engine level: retried with backoff, then parked."""
    raise SystemExit("simulated crash of the workflow task")
