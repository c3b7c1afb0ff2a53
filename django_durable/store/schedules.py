"""Schedules: creating, changing, triggering and backfilling them, and the schedules
declared in settings. Firing their ticks is ``schedule_ticks``; each verb here holds the
schedule's row for its transaction, as firing does."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from django.db import IntegrityError
from django.db.models import QuerySet

from ..exceptions import ScheduleAlreadyExists, ScheduleNotFound
from ..models import Schedule, WorkflowInstance
from ..schedules.spec import ONE_MICROSECOND, tick_workflow_id, trigger_workflow_id
from ..statelog import state_change
from .clock import db_now
from .schedule_ticks import (
    TICKS_PER_TRANSACTION,
    Fired,
    Reason,
    _fire,
    _plan_fire,
    _plan_next,
    fire_due_schedules,
    next_fire_at,
    spec_of,
)
from .transactions import write_transaction

__all__ = [
    "Backfill",
    "Fired",
    "Reason",
    "backfill",
    "create_schedule",
    "delete_schedule",
    "fire_due_schedules",
    "get_schedule",
    "late_schedules",
    "next_fire_at",
    "run_statuses",
    "set_paused",
    "spec_of",
    "sync_declared",
    "trigger",
    "update_schedule",
]

REMOVED_NOTE = "Removed from settings.DURABLE['SCHEDULES']; declare it again to resume it."
# The fields that decide when a schedule ticks (jitter only delays a tick).
TIMING_FIELDS = frozenset({"cron", "every", "timezone", "start_at", "end_at"})


@dataclasses.dataclass
class Backfill:
    """What ``backfill`` did with the interval's ticks."""

    started: list[str] = dataclasses.field(default_factory=list)  # workflow ids
    buffered: int = 0
    skipped: int = 0  # by the overlap policy
    already_run: int = 0  # a run with the tick's id exists


def get_schedule(schedule_id: str) -> Schedule:
    try:
        return Schedule.objects.select_related("last_run").get(schedule_id=schedule_id)
    except Schedule.DoesNotExist:
        raise ScheduleNotFound(f"No schedule with id {schedule_id!r}.") from None


def create_schedule(values: Mapping[str, Any]) -> Schedule:
    """Insert a schedule (``values`` are validated model fields); its first tick is the first
    after now (or after ``start_at``)."""
    exists = ScheduleAlreadyExists(f"A schedule with id {values['schedule_id']!r} already exists.")
    try:
        with write_transaction():
            if Schedule.objects.filter(schedule_id=values["schedule_id"]).exists():
                raise exists
            now = db_now()
            schedule = Schedule(**values, created_at=now)
            _plan_next(schedule, spec_of(schedule), after=now)
            schedule.save(force_insert=True)
    except IntegrityError:
        raise exists from None  # created by another transaction since we looked
    state_change("schedule_created", schedule_id=schedule.schedule_id, next_tick_at=schedule.next_tick_at)
    return schedule


def update_schedule(schedule_id: str, values: Mapping[str, Any]) -> Schedule:
    """Change fields of a schedule; a new specification takes effect from now (ticks that
    already fired are not fired again, the next tick is the new spec's first after now).
    Unpausing drops the ticks that fell while paused; other changes keep a due tick due."""
    with write_transaction():
        schedule = _lock(schedule_id)
        now = db_now()
        changed = {name for name, value in values.items() if getattr(schedule, name) != value}
        unpaused = "paused" in changed and schedule.paused
        for name, value in values.items():
            setattr(schedule, name, value)
        if unpaused:
            schedule.last_tick_at = now
        if unpaused or changed & TIMING_FIELDS:
            _plan_next(schedule, spec_of(schedule), after=max(now, schedule.last_tick_at or now))
        elif changed & {"jitter", "paused"}:
            _plan_fire(schedule, spec_of(schedule))
        schedule.save()
        state_change("schedule_updated", schedule_id=schedule_id, fields=sorted(changed))
        return schedule


def delete_schedule(schedule_id: str) -> None:
    """Delete the schedule; the runs it started go on."""
    with write_transaction():
        deleted, _ = Schedule.objects.filter(schedule_id=schedule_id).delete()
    if not deleted:
        raise ScheduleNotFound(f"No schedule with id {schedule_id!r}.")
    state_change("schedule_deleted", schedule_id=schedule_id)


def set_paused(schedule_id: str, paused: bool, note: str | None = None) -> Schedule:
    values: dict[str, Any] = {"paused": paused}
    if note is not None:
        values["note"] = note
    return update_schedule(schedule_id, values)


def trigger(schedule_id: str) -> WorkflowInstance | None:
    """Start a run now, under the overlap policy, even while paused: the run, or None if the
    policy skipped or buffered it."""
    with write_transaction():
        schedule = _lock(schedule_id)
        now = db_now()
        started = _fire(schedule, now, _free_trigger_id(schedule, now), Reason.TRIGGER, now)
        schedule.save()
        return started


def backfill(schedule_id: str, start: datetime.datetime, end: datetime.datetime, *, limit: int) -> Backfill:
    """Fire the ticks in ``[start, end]`` that have no run yet, oldest first, under the
    overlap policy; at most ``limit`` ticks (ValueError beyond), ``TICKS_PER_TRANSACTION``
    to a transaction (a tick's run id makes a later chunk skip what an earlier one started)."""
    if end < start:
        raise ValueError(f"backfill's end ({end}) is before its start ({start}).")
    ticks = spec_of(get_schedule(schedule_id)).ticks(start - ONE_MICROSECOND, min(end, db_now()), limit=limit + 1)
    if len(ticks) > limit:
        raise ValueError(f"The interval holds more than {limit} ticks; backfill a shorter one.")
    result = Backfill()
    for first in range(0, len(ticks), TICKS_PER_TRANSACTION) or [0]:
        with write_transaction():
            schedule = _lock(schedule_id)
            now = db_now()
            ids = {tick: tick_workflow_id(schedule_id, tick) for tick in ticks[first : first + TICKS_PER_TRANSACTION]}
            existing = set(
                WorkflowInstance.objects.filter(workflow_id__in=ids.values()).values_list("workflow_id", flat=True)
            )
            existing.update(entry["workflow_id"] for entry in schedule.buffered)
            for tick, workflow_id in ids.items():
                if workflow_id in existing:
                    result.already_run += 1
                    continue
                skipped, buffered = schedule.ticks_skipped, schedule.buffered_count
                if _fire(schedule, tick, workflow_id, Reason.BACKFILL, now) is not None:
                    result.started.append(workflow_id)
                result.buffered += schedule.buffered_count - buffered
                result.skipped += schedule.ticks_skipped - skipped
            schedule.save()
    state_change("schedule_backfilled", schedule_id=schedule_id, start=start, end=end, started=len(result.started))
    return result


def late_schedules(*, late_after: datetime.timedelta, limit: int) -> QuerySet[Schedule]:
    """Unpaused schedules with a tick due more than ``late_after`` ago: no worker fires them."""
    return Schedule.objects.filter(next_fire_at__lt=db_now() - late_after).order_by("next_fire_at")[:limit]


def sync_declared(declared: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Make the schedules marked ``from_settings`` match ``declared`` (validated model fields
    by schedule id): create the new ones, update the changed ones, and pause those no longer
    declared. ``paused`` and ``note`` are compared only where declared: an operator's pause
    survives the next worker start; a schedule paused by its removal resumes when declared
    again. Schedules created at run time are left alone: a declared id that names one is
    reported under "conflicts" and not touched."""
    outcome: dict[str, list[str]] = {"created": [], "updated": [], "removed": [], "unchanged": [], "conflicts": []}
    existing = {schedule.schedule_id: schedule for schedule in Schedule.objects.filter(from_settings=True)}
    for schedule_id, values in declared.items():
        current = existing.pop(schedule_id, None)
        if current is None:
            try:
                create_schedule({**values, "schedule_id": schedule_id, "from_settings": True})
            except ScheduleAlreadyExists:
                # Another worker's sync created it just now, or it was created at run time.
                created_by_sync = Schedule.objects.filter(schedule_id=schedule_id, from_settings=True).exists()
                outcome["unchanged" if created_by_sync else "conflicts"].append(schedule_id)
            else:
                outcome["created"].append(schedule_id)
            continue
        changed = {name: value for name, value in values.items() if getattr(current, name) != value}
        if current.paused and current.note == REMOVED_NOTE:
            changed.setdefault("paused", False)
            changed.setdefault("note", "")
        if changed:
            update_schedule(schedule_id, changed)
            outcome["updated"].append(schedule_id)
        else:
            outcome["unchanged"].append(schedule_id)
    for schedule_id, schedule in existing.items():
        if not schedule.paused:  # else removed by an earlier sync, or paused before it was removed
            set_paused(schedule_id, True, note=REMOVED_NOTE)
            outcome["removed"].append(schedule_id)
    return outcome


def run_statuses(run_ids: Iterable[str]) -> dict[str, str]:
    """The status of each run (by run id) that still exists."""
    return {
        str(run_id): status
        for run_id, status in WorkflowInstance.objects.filter(run_id__in=list(run_ids)).values_list("run_id", "status")
    }


# -- under the schedule's lock ---------------------------------------------------------


def _lock(schedule_id: str) -> Schedule:
    schedule = Schedule.objects.select_for_update().filter(schedule_id=schedule_id).first()
    if schedule is None:
        raise ScheduleNotFound(f"No schedule with id {schedule_id!r}.")
    return schedule


def _free_trigger_id(schedule: Schedule, now: datetime.datetime) -> str:
    """The id of a run triggered ``now``; a trigger in the same millisecond as an earlier one
    (a double click, or a test's clock standing still) takes the next free millisecond."""
    waiting = {entry["workflow_id"] for entry in schedule.buffered}
    moment = now
    while True:
        workflow_id = trigger_workflow_id(schedule.schedule_id, moment)
        if workflow_id not in waiting and not WorkflowInstance.objects.filter(workflow_id=workflow_id).exists():
            return workflow_id
        moment += datetime.timedelta(milliseconds=1)
