"""Firing schedules: the due ticks of each schedule processed in one transaction that
holds its row, under the catch-up window and the overlap policy.

A tick fires in one transaction that locks the schedule's row (skipping it if another
worker holds it), creates the tick's run and moves ``next_tick_at`` past the tick, so
each tick fires once whatever the number of workers. Locking order: the schedule's row,
then a run's row (the previous run, cancelled or terminated by the overlap policy).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging

from django.db import DatabaseError, connection, transaction
from django.db.models import QuerySet

from ..exceptions import WorkflowNotOpen
from ..faults import crash_point
from ..models import OPEN_STATUSES, OverlapPolicy, Schedule, WorkflowInstance, WorkflowStatus
from ..schedules.spec import ONE_MICROSECOND, InvalidSchedule, ScheduleSpec, tick_workflow_id
from ..statelog import state_change
from .clock import db_now
from .control import _request_cancel_locked
from .records import JSON, LockedRun
from .runs import _create_run, _lock_open_run, _terminate_locked, last_of_chain
from .transactions import write_transaction

logger = logging.getLogger("django_durable.store")

# The runs a schedule remembers for describe() and the admin (as Temporal's "recent actions").
RECENT_RUNS = 10
# Ticks one transaction processes at most: a long catch-up or backfill continues in the next
# (the schedule's row, and on SQLite the database, stay locked only that long).
TICKS_PER_TRANSACTION = 100
# buffer_all keeps at most this many ticks waiting; more are skipped.
BUFFER_LIMIT = 1000
# Missed ticks of a cron schedule counted one by one at most, per catch-up (under the row's lock).
MISSED_COUNT_LIMIT = 10_000
# How soon a worker looks again at a due schedule another transaction holds.
CONTENDED_RETRY = 0.25


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


def spec_of(schedule: Schedule) -> ScheduleSpec:
    return ScheduleSpec(
        cron=schedule.cron or None,
        every=schedule.every,
        timezone=schedule.timezone,
        start_at=schedule.start_at,
        end_at=schedule.end_at,
        jitter=schedule.jitter,
    )


def fire_due_schedules(*, limit: int) -> Fired:
    """Fire the due ticks of up to ``limit`` schedules, and start buffered ticks whose previous
    run has closed: each schedule in a transaction of its own. Also says when to look again:
    when the next tick falls due, 0 if some are due still (more than ``limit``, or a long
    catch-up cut into transactions), ``CONTENDED_RETRY`` if the due ones are held by others."""
    result = Fired()
    now = db_now()
    following = next_fire_at()
    failed: list[int] = []  # rows that raised: left for the next pass, not retried in this one
    for _ in range(limit if following is not None and following <= now else 0):
        with write_transaction():
            now = db_now()
            # Picked under the lock: workers that look at once take different rows.
            schedule = _lock_due(Schedule.objects.filter(next_fire_at__lte=now).exclude(pk__in=failed))
            if schedule is None:
                break  # none due, or every due one held by another worker
            _process(schedule, now, result, failed)
    # Buffered ticks wait for the previous run to close; a continued run is followed to its successor.
    ready = list(
        Schedule.objects.filter(buffered_count__gt=0)
        .exclude(last_run__status__in=OPEN_STATUSES)
        .order_by()
        .values_list("pk", flat=True)[:limit]
    )
    for pk in ready:
        with write_transaction():
            schedule = _lock_due(Schedule.objects.filter(pk=pk))
            if schedule is not None:
                _process(schedule, db_now(), result, failed)
    if result.processed or ready:
        following, now = next_fire_at(), db_now()
    if following is not None:
        result.next_in = max(0.0, (following - now).total_seconds())
        if result.next_in == 0 and result.processed < limit:
            result.next_in = CONTENDED_RETRY
    return result


def _process(schedule: Schedule, now: datetime.datetime, result: Fired, failed: list[int]) -> None:
    """``_advance`` the locked schedule and save it; a schedule that cannot be processed is
    left as it was (logged), so that one bad row does not stop a worker's loop."""
    try:
        with transaction.atomic():
            changed = _advance(schedule, now)
    except InvalidSchedule as error:
        # Valid when saved, no longer (a zone gone from tzdata, a row edited by hand):
        # the schedule stops, saying why, rather than failing every worker's loop.
        schedule.refresh_from_db()  # as it was before _advance, whose writes rolled back
        schedule.paused, schedule.next_fire_at = True, None
        schedule.note = f"Paused by the workers: {error}"
        state_change("schedule_invalid", schedule_id=schedule.schedule_id, error=str(error))
        changed = True
    except DatabaseError:
        raise
    except Exception:
        logger.exception("Schedule %r could not be fired; it is left as it was.", schedule.schedule_id)
        failed.append(schedule.pk)
        return
    if changed:
        schedule.save()
        crash_point("before_schedule_commit")
        result.processed += 1


def next_fire_at() -> datetime.datetime | None:
    return (
        Schedule.objects.filter(next_fire_at__isnull=False)
        .order_by("next_fire_at")
        .values_list("next_fire_at", flat=True)
        .first()
    )


def _lock_due(schedules: QuerySet[Schedule]) -> Schedule | None:
    """The first of ``schedules`` to fire, its row locked; rows other transactions hold are
    skipped (on SQLite, whose writers take turns, there are none)."""
    return (
        schedules.select_for_update(skip_locked=connection.features.has_select_for_update_skip_locked)
        .order_by("next_fire_at")
        .first()
    )


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
        if schedule.next_fire_at < cutoff:  # late by more than the window, counted from its jitter
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
        # A tick never fires twice (a backfill raced it, or a run was started with its id).
        schedule.ticks_skipped += 1
        state_change("schedule_skipped", schedule_id=schedule.schedule_id, workflow_id=workflow_id, why="run exists")
        return None
    previous = _open_previous(schedule)
    policy = schedule.overlap
    if previous is None or policy == OverlapPolicy.ALLOW_ALL:
        return _start(schedule, tick, workflow_id, reason, now)
    entry: dict[str, JSON] = {"tick": tick.isoformat(), "workflow_id": workflow_id, "reason": reason}
    if policy == OverlapPolicy.TERMINATE_OTHER:
        if (locked := _lock_previous(previous)) is not None:
            _terminate_locked(*locked, f"terminated by schedule {schedule.schedule_id!r}", now)
        return _start(schedule, tick, workflow_id, reason, now)
    if policy == OverlapPolicy.CANCEL_OTHER:
        if (locked := _lock_previous(previous)) is not None:
            _request_cancel_locked(*locked, now)
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
    run = WorkflowInstance.objects.filter(pk=schedule.last_run_id).only("pk", "status", "workflow_id", "run_id").first()
    if run is not None and run.status == WorkflowStatus.CONTINUED_AS_NEW:
        run = last_of_chain(run)
        schedule.last_run = run
    return run if run is not None and run.status in OPEN_STATUSES else None


def _lock_previous(previous: WorkflowInstance) -> tuple[int, LockedRun] | None:
    """The previous run's row locked, followed to the run its chain has reached under the
    lock (it may have continued as new since we looked), or None if it has closed."""
    try:
        return _lock_open_run(previous.workflow_id, str(previous.run_id))
    except WorkflowNotOpen:
        return None


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
