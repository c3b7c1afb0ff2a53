"""Schedules: creating and changing them, and firing their ticks.

A tick fires in one transaction that locks the schedule's row (skipping it if another
worker holds it), creates the tick's run and moves ``next_tick_at`` past the tick, so
each tick fires once whatever the number of workers. Locking order: the schedule's row,
then a run's row (the previous run, cancelled or terminated by the overlap policy);
nothing that holds a run's row waits for a schedule's.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from django.db import IntegrityError, connection
from django.db.models import QuerySet

from ..exceptions import ScheduleAlreadyExists, ScheduleNotFound
from ..faults import crash_point
from ..models import OPEN_STATUSES, OverlapPolicy, Schedule, WorkflowInstance, WorkflowStatus
from ..schedules.spec import ONE_MICROSECOND, InvalidSchedule, ScheduleSpec, tick_workflow_id, trigger_workflow_id
from ..statelog import state_change
from .clock import db_now
from .control import _request_cancel_locked
from .records import JSON
from .runs import _create_run, _lock_instance, _terminate_locked, last_of_chain
from .transactions import write_transaction

# The runs a schedule remembers for describe() and the admin (as Temporal's "recent actions").
RECENT_RUNS = 10
# Ticks one transaction processes at most: a long catch-up continues in the next (the
# schedule's row, and on SQLite the database, stay locked only that long).
TICKS_PER_TRANSACTION = 100
# buffer_all keeps at most this many ticks waiting; more are skipped.
BUFFER_LIMIT = 1000
REMOVED_NOTE = "Removed from settings.DURABLE['SCHEDULES']; declare it again to resume it."
# Missed ticks of a cron schedule counted one by one at most, per catch-up.
MISSED_COUNT_LIMIT = 100_000
# The fields that decide when a schedule ticks (jitter only delays a tick).
TIMING_FIELDS = frozenset({"cron", "every", "timezone", "start_at", "end_at"})


class Reason:
    """Why a schedule started a run (the ``reason`` of its recent runs and of ``ctx.schedule``)."""

    TICK = "tick"
    TRIGGER = "trigger"
    BACKFILL = "backfill"


@dataclasses.dataclass
class Fired:
    """What one pass over the due schedules did."""

    processed: int = 0  # schedules whose row changed
    next_in: float | None = None  # seconds until the next tick is due (after this pass), if any


@dataclasses.dataclass
class Backfill:
    """What ``backfill`` did with the interval's ticks."""

    started: list[str] = dataclasses.field(default_factory=list)  # workflow ids
    buffered: int = 0
    skipped: int = 0  # by the overlap policy
    already_run: int = 0  # a run with the tick's id exists


def spec_of(schedule: Schedule) -> ScheduleSpec:
    return ScheduleSpec(
        cron=schedule.cron or None,
        every=schedule.every,
        timezone=schedule.timezone,
        start_at=schedule.start_at,
        end_at=schedule.end_at,
        jitter=schedule.jitter,
    )


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
    overlap policy; at most ``limit`` ticks (ValueError beyond)."""
    if end < start:
        raise ValueError(f"backfill's end ({end}) is before its start ({start}).")
    with write_transaction():
        schedule = _lock(schedule_id)
        now = db_now()
        ticks = spec_of(schedule).ticks(start - ONE_MICROSECOND, min(end, now), limit=limit + 1)
        if len(ticks) > limit:
            raise ValueError(f"The interval holds more than {limit} ticks; backfill a shorter one.")
        ids = {tick: tick_workflow_id(schedule_id, tick) for tick in ticks}
        existing = set(
            WorkflowInstance.objects.filter(workflow_id__in=ids.values()).values_list("workflow_id", flat=True)
        )
        existing.update(entry["workflow_id"] for entry in schedule.buffered)
        result = Backfill()
        for tick, workflow_id in ids.items():
            if workflow_id in existing:
                result.already_run += 1
                continue
            skipped, buffered = schedule.ticks_skipped, schedule.buffered_count
            run = _fire(schedule, tick, workflow_id, Reason.BACKFILL, now)
            if run is not None:
                result.started.append(workflow_id)
            result.buffered += schedule.buffered_count - buffered
            result.skipped += schedule.ticks_skipped - skipped
        schedule.save()
        state_change("schedule_backfilled", schedule_id=schedule_id, start=start, end=end, started=len(result.started))
        return result


def fire_due_schedules(*, limit: int) -> Fired:
    """Fire the ticks that are due, and start buffered ticks whose previous run has closed:
    each schedule in a transaction of its own. Also says when the next tick falls due (0 if
    some are due still: more than ``limit``, or a long catch-up cut into transactions)."""
    now = db_now()
    due = list(
        Schedule.objects.filter(next_fire_at__lte=now).order_by("next_fire_at").values_list("pk", flat=True)[:limit]
    )
    # Buffered ticks wait for the previous run to close; a continued run is followed to its successor.
    ready = (
        Schedule.objects.filter(buffered_count__gt=0)
        .exclude(last_run__status__in=OPEN_STATUSES)
        .exclude(pk__in=due)
        .values_list("pk", flat=True)[:limit]
    )
    result = Fired()
    for pk in [*due, *ready]:
        with write_transaction():
            schedule = _lock_due(pk)
            if schedule is None:
                continue
            try:
                changed = _advance(schedule, db_now())
            except InvalidSchedule as error:
                # Valid when saved, no longer (a zone gone from tzdata, a row edited by hand):
                # the schedule stops, saying why, rather than failing every worker's loop.
                schedule.paused, schedule.next_fire_at = True, None
                schedule.note = f"Paused by the workers: {error}"
                state_change("schedule_invalid", schedule_id=schedule.schedule_id, error=str(error))
                changed = True
            if changed:
                schedule.save()
                crash_point("before_schedule_commit")
                result.processed += 1
    following = next_fire_at()
    if following is not None:
        result.next_in = max(0.0, (following - db_now()).total_seconds())
    return result


def next_fire_at() -> datetime.datetime | None:
    return (
        Schedule.objects.filter(next_fire_at__isnull=False)
        .order_by("next_fire_at")
        .values_list("next_fire_at", flat=True)
        .first()
    )


def late_schedules(*, late_after: datetime.timedelta, limit: int) -> QuerySet[Schedule]:
    """Unpaused schedules with a tick due more than ``late_after`` ago: no worker fires them."""
    return Schedule.objects.filter(next_fire_at__lt=db_now() - late_after).order_by("next_fire_at")[:limit]


def sync_declared(declared: Mapping[str, Mapping[str, Any]], *, remove: str) -> dict[str, list[str]]:
    """Make the schedules marked ``from_settings`` match ``declared`` (validated model
    fields by schedule id): create the new ones, update the changed ones, and ``remove``
    ("delete" or "pause") those no longer declared. Schedules created at run time are left
    alone: a declared id that names one is reported under "conflicts" and not touched."""
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
        # Declared again after its removal paused it: ``paused`` and ``note`` differ, so it resumes.
        changed = {name: value for name, value in values.items() if getattr(current, name) != value}
        if changed:
            update_schedule(schedule_id, changed)
            outcome["updated"].append(schedule_id)
        else:
            outcome["unchanged"].append(schedule_id)
    for schedule_id, schedule in existing.items():
        if remove == "delete":
            delete_schedule(schedule_id)
        elif schedule.paused:
            continue  # removed by an earlier sync (or paused before it was removed)
        else:
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


def _lock_due(pk: int) -> Schedule | None:
    """The schedule's row, locked, or None if another worker holds it (it is firing it)."""
    return (
        Schedule.objects.select_for_update(skip_locked=connection.features.has_select_for_update_skip_locked)
        .filter(pk=pk)
        .first()
    )


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


def _plan_next(schedule: Schedule, spec: ScheduleSpec, *, after: datetime.datetime) -> None:
    schedule.next_tick_at = spec.next_tick(after)
    _plan_fire(schedule, spec)


def _plan_fire(schedule: Schedule, spec: ScheduleSpec) -> None:
    tick = schedule.next_tick_at
    if tick is None or schedule.paused:
        schedule.next_fire_at = None
        return
    try:
        schedule.next_fire_at = tick + spec.jitter_for(schedule.schedule_id, tick)
    except OverflowError:  # a tick within the jitter of year 9999's end
        schedule.next_fire_at = tick


def _advance(schedule: Schedule, now: datetime.datetime) -> bool:
    """Start a buffered tick if the previous run has closed, then process the due ticks:
    those older than the catch-up window are counted as missed, the others fired.
    Returns whether the row changed."""
    before = (schedule.next_tick_at, schedule.next_fire_at, schedule.buffered_count, schedule.last_run_id)
    spec = spec_of(schedule)
    if schedule.paused or schedule.next_tick_at is None:
        # Paused by a plain UPDATE (not update_schedule()): it would look due forever.
        schedule.next_fire_at = None
    if schedule.buffered:
        _start_buffered(schedule, now)
    processed = 0
    while (
        schedule.next_tick_at is not None
        and schedule.next_fire_at is not None
        and schedule.next_fire_at <= now
        and processed < TICKS_PER_TRANSACTION
    ):
        processed += 1
        tick = schedule.next_tick_at
        cutoff = now - schedule.catchup_window
        if tick < cutoff:
            schedule.ticks_missed += _count_missed(spec, tick, cutoff)
            schedule.last_tick_at = cutoff
            _plan_next(schedule, spec, after=cutoff - ONE_MICROSECOND)
            continue
        _fire(schedule, tick, tick_workflow_id(schedule.schedule_id, tick), Reason.TICK, now)
        schedule.last_tick_at = tick
        _plan_next(schedule, spec, after=tick)
    return before != (schedule.next_tick_at, schedule.next_fire_at, schedule.buffered_count, schedule.last_run_id)


def _count_missed(spec: ScheduleSpec, first: datetime.datetime, cutoff: datetime.datetime) -> int:
    """The ticks from ``first`` (a tick) to before ``cutoff``."""
    last = cutoff - ONE_MICROSECOND
    if spec.every is not None:
        last = min(last, spec.end_at or last)
        return int((last - first).total_seconds() // spec.every) + 1
    return 1 + len(spec.ticks(first, last, limit=MISSED_COUNT_LIMIT))


def _fire(
    schedule: Schedule, tick: datetime.datetime, workflow_id: str, reason: str, now: datetime.datetime
) -> WorkflowInstance | None:
    """Apply the overlap policy to a tick: start its run, buffer it or skip it."""
    if WorkflowInstance.objects.filter(workflow_id=workflow_id).exists():
        return None  # a tick never fires twice (a backfill raced it, or a run was started by hand)
    previous = _open_previous(schedule)
    policy = schedule.overlap
    if previous is None or policy == OverlapPolicy.ALLOW_ALL:
        return _start(schedule, tick, workflow_id, reason, now)
    entry: dict[str, JSON] = {"tick": tick.isoformat(), "workflow_id": workflow_id, "reason": reason}
    if policy == OverlapPolicy.TERMINATE_OTHER:
        instance = _lock_instance(previous.pk)
        if instance is not None and instance.status in OPEN_STATUSES:
            _terminate_locked(previous.pk, instance, f"terminated by schedule {schedule.schedule_id!r}", now)
        return _start(schedule, tick, workflow_id, reason, now)
    if policy == OverlapPolicy.CANCEL_OTHER:
        instance = _lock_instance(previous.pk)
        if instance is not None and instance.status in OPEN_STATUSES:
            _request_cancel_locked(previous.pk, instance, now)
        schedule.ticks_skipped += len(schedule.buffered)  # the newest tick replaces a waiting one
        _set_buffered(schedule, [entry])
    elif policy == OverlapPolicy.BUFFER_ALL and schedule.buffered_count < BUFFER_LIMIT:
        _set_buffered(schedule, [*schedule.buffered, entry])
    elif policy == OverlapPolicy.BUFFER_ONE and not schedule.buffered:
        _set_buffered(schedule, [entry])
    else:
        schedule.ticks_skipped += 1
    return None


def _open_previous(schedule: Schedule) -> WorkflowInstance | None:
    """The schedule's latest run, followed through continue-as-new, if it is open."""
    if schedule.last_run_id is None:
        return None
    run = WorkflowInstance.objects.filter(pk=schedule.last_run_id).only("pk", "status", "workflow_id").first()
    if run is not None and run.status == WorkflowStatus.CONTINUED_AS_NEW:
        run = last_of_chain(run)
        schedule.last_run = run
    return run if run is not None and run.status in OPEN_STATUSES else None


def _start_buffered(schedule: Schedule, now: datetime.datetime) -> None:
    if _open_previous(schedule) is not None:
        return
    entry, *rest = schedule.buffered
    _set_buffered(schedule, rest)
    tick = datetime.datetime.fromisoformat(entry["tick"])
    if not WorkflowInstance.objects.filter(workflow_id=entry["workflow_id"]).exists():
        _start(schedule, tick, entry["workflow_id"], entry["reason"], now)


def _set_buffered(schedule: Schedule, entries: list[dict[str, JSON]]) -> None:
    schedule.buffered = entries
    schedule.buffered_count = len(entries)


def _start(
    schedule: Schedule, tick: datetime.datetime, workflow_id: str, reason: str, now: datetime.datetime
) -> WorkflowInstance:
    started_by: dict[str, JSON] = {"schedule_id": schedule.schedule_id, "tick": tick.isoformat(), "reason": reason}
    run = _create_run(
        workflow_id=workflow_id,
        workflow_name=schedule.workflow_name,
        queue=schedule.queue,
        args=schedule.input.get("args", []),
        kwargs=schedule.input.get("kwargs", {}),
        now=now,
        schedule=started_by,
    )
    schedule.last_run = run
    schedule.runs_started += 1
    recent = {"workflow_id": workflow_id, "run_id": str(run.run_id), "started_at": now.isoformat(), **started_by}
    schedule.recent_runs = [recent, *schedule.recent_runs][:RECENT_RUNS]
    state_change("schedule_fired", schedule_id=schedule.schedule_id, tick=tick, reason=reason, workflow_id=workflow_id)
    return run
