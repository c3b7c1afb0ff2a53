"""Schedules from ordinary Django code: ``create_schedule``, ``get_schedule`` and the handle's verbs."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from django.conf import settings

from .. import registry
from ..client import WorkflowHandle
from ..conf import durable_settings
from ..converter import check_size, to_json
from ..models import OverlapPolicy, Schedule
from ..store import schedules as schedule_store
from .spec import InvalidSchedule, ScheduleSpec, Seconds

# The longest schedule id: its runs' ids add a timestamp of up to 21 characters, and a
# workflow id holds 255.
SCHEDULE_ID_MAX_LENGTH = 200
BACKFILL_LIMIT = 1000
DEFAULT_CATCHUP_WINDOW = datetime.timedelta(hours=1)
MIN_CATCHUP_WINDOW = datetime.timedelta(seconds=10)
# The options create_schedule() takes beyond the id and the workflow, as update() takes them.
OPTIONS = (
    "args",
    "kwargs",
    "cron",
    "every",
    "timezone",
    "overlap",
    "catchup_window",
    "jitter",
    "start_at",
    "end_at",
    "paused",
    "queue",
    "note",
)


@dataclasses.dataclass(frozen=True)
class ScheduledRun:
    """A run a schedule started, as ``describe()`` lists it (newest first)."""

    workflow_id: str
    run_id: str
    tick: datetime.datetime
    reason: str  # "tick", "trigger" or "backfill"
    started_at: datetime.datetime
    status: str | None  # None once the run has been pruned


@dataclasses.dataclass(frozen=True)
class ScheduleDescription:
    schedule_id: str
    workflow_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    spec: ScheduleSpec
    overlap: str
    catchup_window: datetime.timedelta
    paused: bool
    note: str
    from_settings: bool
    next_fire_times: list[datetime.datetime]  # the next ticks (none while paused), jitter not added
    recent_runs: list[ScheduledRun]
    buffered: int  # ticks waiting for the previous run to close
    runs_started: int
    ticks_skipped: int  # by the overlap policy
    ticks_missed: int  # older than the catch-up window when a worker got to them
    created_at: datetime.datetime


class ScheduleHandle:
    """A handle on a schedule by its id; each call reads or changes the database."""

    def __init__(self, schedule_id: str) -> None:
        self.schedule_id = schedule_id

    def __repr__(self) -> str:
        return f"<ScheduleHandle {self.schedule_id!r}>"

    def pause(self, note: str | None = None) -> None:
        """Stop firing ticks; those that fall while paused are dropped, not fired on ``unpause()``.
        ``note`` replaces the schedule's note (None keeps it), as in the admin and the API."""
        schedule_store.set_paused(self.schedule_id, True, note)

    def unpause(self, note: str | None = None) -> None:
        """Fire again from the next tick after now."""
        schedule_store.set_paused(self.schedule_id, False, note)

    def trigger(self) -> WorkflowHandle | None:
        """Start a run now (even while paused) under the overlap policy: its handle, or None if
        the policy skipped the run or buffered it until the previous run closes."""
        run = schedule_store.trigger(self.schedule_id)
        return None if run is None else WorkflowHandle(run.workflow_id, str(run.run_id))

    def backfill(self, start: datetime.datetime, end: datetime.datetime) -> schedule_store.Backfill:
        """Fire the ticks from ``start`` to ``end`` (inclusive, not past now) that have no run yet,
        oldest first, under the overlap policy. At most 1,000 ticks at a time."""
        for name, moment in (("start", start), ("end", end)):
            if not isinstance(moment, datetime.datetime) or moment.tzinfo is None:
                raise ValueError(f"backfill's {name} must be a timezone-aware datetime; got {moment!r}")
        return schedule_store.backfill(self.schedule_id, start, end, limit=BACKFILL_LIMIT)

    def update(self, **changes: Any) -> None:
        """Change any of create_schedule()'s options (not the id); validated as create_schedule() does."""
        unknown = sorted(set(changes) - {"workflow", *OPTIONS})
        if unknown:
            raise TypeError(f"update() got unknown options {unknown}; it takes workflow, {', '.join(OPTIONS)}")
        current = schedule_store.get_schedule(self.schedule_id)
        options = current_options(current)
        # A cron replaces an interval and the other way round, without naming the old one None.
        for given, other in (("cron", "every"), ("every", "cron")):
            if changes.get(given) is not None and other not in changes:
                options[other] = None
        values = schedule_values(self.schedule_id, **{**options, **changes})
        # What was not given stays as stored: encoding the stored (encoded) input again would wrap it again.
        values["input"] = {
            name: values["input"][name] if name in changes else current.input.get(name, default)
            for name, default in (("args", []), ("kwargs", {}))
        }
        changed = {name: value for name, value in values.items() if getattr(current, name) != value}
        if changed:
            schedule_store.update_schedule(self.schedule_id, changed)

    def delete(self) -> None:
        """Delete the schedule. The runs it started go on."""
        schedule_store.delete_schedule(self.schedule_id)

    def describe(self, *, upcoming: int = 10) -> ScheduleDescription:
        return describe(schedule_store.get_schedule(self.schedule_id), upcoming=upcoming)


def create_schedule(
    schedule_id: str,
    workflow: Any,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    cron: str | None = None,
    every: Seconds | None = None,
    timezone: str | None = None,
    overlap: OverlapPolicy | str = OverlapPolicy.SKIP,
    catchup_window: Seconds = DEFAULT_CATCHUP_WINDOW,
    jitter: Seconds | None = None,
    start_at: datetime.datetime | None = None,
    end_at: datetime.datetime | None = None,
    paused: bool = False,
    queue: str | None = None,
    note: str = "",
) -> ScheduleHandle:
    """Start ``workflow`` (the decorated function or its registered name) on a cron expression
    or every N seconds; see docs/schedules.md. ``ScheduleAlreadyExists`` if the id is taken."""
    values = schedule_values(
        schedule_id,
        workflow=workflow,
        args=args,
        kwargs=kwargs,
        cron=cron,
        every=every,
        timezone=timezone,
        overlap=overlap,
        catchup_window=catchup_window,
        jitter=jitter,
        start_at=start_at,
        end_at=end_at,
        paused=paused,
        queue=queue,
        note=note,
    )
    schedule_store.create_schedule({"schedule_id": schedule_id, **values})
    return ScheduleHandle(schedule_id)


def get_schedule(schedule_id: str) -> ScheduleHandle:
    """A handle on an existing schedule; ``ScheduleNotFound`` if there is none."""
    schedule_store.get_schedule(schedule_id)
    return ScheduleHandle(schedule_id)


def schedule_values(
    schedule_id: str,
    *,
    workflow: Any,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    cron: str | None = None,
    every: Seconds | None = None,
    timezone: str | None = None,
    overlap: OverlapPolicy | str = OverlapPolicy.SKIP,
    catchup_window: Seconds = DEFAULT_CATCHUP_WINDOW,
    jitter: Seconds | None = None,
    start_at: datetime.datetime | None = None,
    end_at: datetime.datetime | None = None,
    paused: bool = False,
    queue: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    """The ``Schedule`` model's values for these options, validated: ``InvalidSchedule`` (a
    ValueError) says what is wrong, ``NotRegistered`` names an unknown workflow."""
    if not isinstance(schedule_id, str) or not schedule_id.strip() or len(schedule_id) > SCHEDULE_ID_MAX_LENGTH:
        raise InvalidSchedule(f"a schedule id is a non-empty string of at most {SCHEDULE_ID_MAX_LENGTH} characters")
    definition = registry.get_workflow_definition(workflow)
    spec = ScheduleSpec.build(
        cron=cron,
        every=every,
        timezone=timezone or settings.TIME_ZONE or "UTC",
        start_at=start_at,
        end_at=end_at,
        jitter=jitter,
    )
    if isinstance(args, (str, bytes, Mapping)) or not isinstance(args, Sequence):
        raise InvalidSchedule(f"args must be a list; got {args!r}")
    encoded_args = to_json(list(args), f"the arguments of schedule {schedule_id!r}")
    encoded_kwargs = to_json(dict(kwargs or {}), f"the keyword arguments of schedule {schedule_id!r}")
    check_size(
        {"args": encoded_args, "kwargs": encoded_kwargs}, f"the input of schedule {schedule_id!r}", "workflow_input"
    )
    try:
        overlap = OverlapPolicy(overlap)
    except ValueError:
        raise InvalidSchedule(f"overlap must be one of {', '.join(OverlapPolicy.values)}; got {overlap!r}") from None
    return {
        "workflow_name": definition.name,
        "input": {"args": encoded_args, "kwargs": encoded_kwargs},
        "queue": queue or definition.queue or durable_settings.DEFAULT_QUEUE,
        "cron": spec.cron or "",
        "every": spec.every,
        "timezone": spec.timezone,
        "start_at": spec.start_at,
        "end_at": spec.end_at,
        "jitter": spec.jitter,
        "overlap": overlap.value,
        "catchup_window": _catchup_window(catchup_window),
        "paused": bool(paused),
        "note": str(note or ""),
    }


def current_options(schedule: Schedule) -> dict[str, Any]:
    """The options that would create ``schedule`` as it is (what ``update()`` starts from)."""
    return {
        "workflow": schedule.workflow_name,
        "args": schedule.input.get("args", []),
        "kwargs": schedule.input.get("kwargs", {}),
        "cron": schedule.cron or None,
        "every": schedule.every,
        "timezone": schedule.timezone,
        "overlap": schedule.overlap,
        "catchup_window": schedule.catchup_window,
        "jitter": schedule.jitter,
        "start_at": schedule.start_at,
        "end_at": schedule.end_at,
        "paused": schedule.paused,
        "queue": schedule.queue,
        "note": schedule.note,
    }


def describe(schedule: Schedule, *, upcoming: int = 10) -> ScheduleDescription:
    spec = schedule_store.spec_of(schedule)
    statuses = schedule_store.run_statuses(entry["run_id"] for entry in schedule.recent_runs)
    next_ticks: list[datetime.datetime] = []
    if not schedule.paused and schedule.next_tick_at is not None:
        next_ticks = [schedule.next_tick_at, *spec.upcoming(schedule.next_tick_at, upcoming - 1)][:upcoming]
    return ScheduleDescription(
        schedule_id=schedule.schedule_id,
        workflow_name=schedule.workflow_name,
        args=schedule.input.get("args", []),
        kwargs=schedule.input.get("kwargs", {}),
        queue=schedule.queue,
        spec=spec,
        overlap=schedule.overlap,
        catchup_window=schedule.catchup_window,
        paused=schedule.paused,
        note=schedule.note,
        from_settings=schedule.from_settings,
        next_fire_times=next_ticks,
        recent_runs=[
            ScheduledRun(
                workflow_id=entry["workflow_id"],
                run_id=entry["run_id"],
                tick=datetime.datetime.fromisoformat(entry["tick"]),
                reason=entry["reason"],
                started_at=datetime.datetime.fromisoformat(entry["started_at"]),
                status=statuses.get(entry["run_id"]),
            )
            for entry in schedule.recent_runs
        ],
        buffered=schedule.buffered_count,
        runs_started=schedule.runs_started,
        ticks_skipped=schedule.ticks_skipped,
        ticks_missed=schedule.ticks_missed,
        created_at=schedule.created_at,
    )


def _catchup_window(value: object) -> datetime.timedelta:
    if isinstance(value, bool) or not isinstance(value, (int, float, datetime.timedelta)):
        raise InvalidSchedule(f"catchup_window must be seconds or a timedelta; got {value!r}")
    window = value if isinstance(value, datetime.timedelta) else datetime.timedelta(seconds=value)
    if window < MIN_CATCHUP_WINDOW:
        # Shorter, a worker that is late by a poll interval and a busy moment drops the tick.
        raise InvalidSchedule(f"catchup_window must be at least 10 seconds (Temporal's minimum too); got {value!r}")
    return window
