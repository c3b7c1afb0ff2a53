"""Workflows that schedules start, for the schedule tests. Names start with ``sc_``."""

from __future__ import annotations

from typing import Any

import django_durable as durable

from .models import ActivityRun

__all__ = ["sc_continued", "sc_record", "sc_tick", "sc_until_released"]


@durable.activity
def sc_record(key: str, workflow_id: str, tick: str, reason: str) -> None:
    """A side effect per started run: the tests count these rows."""
    ActivityRun.objects.create(key=f"{key}|{workflow_id}|{tick}|{reason}", attempt=1, pid=0)


@durable.workflow
def sc_tick(ctx: durable.WorkflowContext, key: str) -> dict[str, Any]:
    """Record the tick this run was started for, and return it."""
    scheduled = ctx.schedule
    assert scheduled is not None, "started by a schedule"
    ctx.call_activity(sc_record, key, ctx.workflow_id, scheduled.tick.isoformat(), scheduled.reason).result()
    return {"schedule_id": scheduled.schedule_id, "tick": scheduled.tick.isoformat(), "reason": scheduled.reason}


@durable.workflow
def sc_until_released(ctx: durable.WorkflowContext, key: str) -> str:
    """Record the tick, then stay open until the event "release" (the overlap policies' previous run)."""
    scheduled = ctx.schedule
    assert scheduled is not None, "started by a schedule"
    ctx.call_activity(sc_record, key, ctx.workflow_id, scheduled.tick.isoformat(), scheduled.reason).result()
    ctx.wait_for_event("release")
    return "released"


@durable.workflow
def sc_continued(ctx: durable.WorkflowContext, key: str, tick: str = "") -> str:
    """Continue as new once (the tick carried along), then record and wait for "release": the
    schedule's previous run is then the second run of the chain."""
    if not tick:
        scheduled = ctx.schedule
        assert scheduled is not None, "started by a schedule"
        ctx.continue_as_new(key, scheduled.tick.isoformat())
    ctx.call_activity(sc_record, key, ctx.workflow_id, tick, "continued").result()
    ctx.wait_for_event("release")
    return "released"
