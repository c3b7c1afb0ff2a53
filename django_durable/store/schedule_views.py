"""Reads for the admin's schedule pages and the dashboard, each in a fixed number of queries
(``store.schedules`` holds the writes and the firing)."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import TypedDict

from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.fields.json import KT

from ..engine.events import EventKind
from ..models import HistoryEvent, Schedule, WorkflowInstance

# Columns the schedule list and the dashboard never show: a schedule's own JSON (its input,
# buffered ticks, recent runs); a run's are models.PAYLOAD_COLUMNS.
HEAVY_SCHEDULE_COLUMNS = ("input", "buffered", "recent_runs")


class StartedBy(TypedDict):
    """The schedule tick a run was started for, from its ``ExecutionStarted`` event."""

    schedule_id: str
    tick: datetime.datetime | None
    reason: str
    schedule_pk: int | None  # None once the schedule has been deleted


class RunRef(TypedDict):
    pk: int
    workflow_id: str
    status: str


class ScheduleCounts(TypedDict):
    total: int
    paused: int


def started_by(instance_id: int) -> StartedBy | None:
    """The schedule tick run ``instance_id`` was started for, if a schedule started it: one query."""
    schedule_pk = Schedule.objects.filter(schedule_id=OuterRef("schedule_id")).values("pk")[:1]
    row = (
        HistoryEvent.objects.filter(instance_id=instance_id, seq=1, kind=EventKind.EXECUTION_STARTED)
        .annotate(schedule_id=KT("payload__schedule__schedule_id"))
        .filter(schedule_id__isnull=False)
        .annotate(schedule_pk=Subquery(schedule_pk))
        .values(
            "schedule_id", "schedule_pk", tick=KT("payload__schedule__tick"), reason=KT("payload__schedule__reason")
        )
        .first()
    )
    if row is None:
        return None
    try:
        tick = datetime.datetime.fromisoformat(row["tick"]) if row["tick"] else None
    except ValueError:
        tick = None
    return {
        "schedule_id": row["schedule_id"],
        "tick": tick,
        "reason": row["reason"] or "",
        "schedule_pk": row["schedule_pk"],
    }


def runs_by_run_id(run_ids: Iterable[str]) -> dict[str, RunRef]:
    """The runs (by run id) that still exist, for links to their pages: one query."""
    rows = WorkflowInstance.objects.filter(run_id__in=list(run_ids)).values_list(
        "run_id", "pk", "workflow_id", "status"
    )
    return {
        str(run_id): {"pk": pk, "workflow_id": workflow_id, "status": status}
        for run_id, pk, workflow_id, status in rows
    }


def next_to_fire(*, not_before: datetime.datetime, limit: int) -> list[Schedule]:
    """The schedules that fire next, from ``not_before`` on (earlier ones are late)."""
    schedules = Schedule.objects.defer(*HEAVY_SCHEDULE_COLUMNS).filter(next_fire_at__gte=not_before)
    return list(schedules.order_by("next_fire_at")[:limit])


def schedule_counts() -> ScheduleCounts:
    counts = Schedule.objects.order_by().aggregate(total=Count("pk"), paused=Count("pk", filter=Q(paused=True)))
    return {"total": counts["total"] or 0, "paused": counts["paused"] or 0}
