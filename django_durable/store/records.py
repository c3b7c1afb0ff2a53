"""The records the store takes and returns: claims, task inputs, decisions and completions."""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias, TypedDict

from ..engine.events import Event
from ..models import WorkflowStatus

if TYPE_CHECKING:
    from ..engine import TaskOutcome

# A value as the JSON columns hold it: what the data converter makes of a workflow's values.
JSON: TypeAlias = "dict[str, JSON] | list[JSON] | str | int | float | bool | None"

EVENT_FIELDS = ("seq", "kind", "name", "task_id", "payload", "timestamp")

CLAIM_FIELDS = (
    "id",
    "kind",
    "instance_id",
    "queue",
    "name",
    "task_id",
    "payload",
    "attempt",
    "claimed_at",
    "lease_expires_at",
    "created_at",
    "failures",
    "heartbeat_details",
    "heartbeat_at",
)

# A run's columns its lock reads, in ``LockedRun``'s order (PostgreSQL builds it from the row).
LOCKED_FIELDS = (
    "status",
    "history_length",
    "queue",
    "workflow_id",
    "run_id",
    "workflow_name",
    "started_at",
    "cancel_requested_at",
    "parent_id",
    "parent_task_id",
    "parent_close_policy",
)

CLOSING_STATUSES = (
    WorkflowStatus.COMPLETED,
    WorkflowStatus.FAILED,
    WorkflowStatus.CANCELED,
    WorkflowStatus.CONTINUED_AS_NEW,
)


class ActivityOptions(TypedDict, total=False):
    """An activity's options as its ``ActivityScheduled`` event records them (see
    ``registry.activity_call_options``); timeouts in seconds."""

    queue: str | None
    retry: dict[str, JSON] | None  # RetryPolicy.to_json()
    start_to_close_timeout: float | None
    schedule_to_close_timeout: float | None
    heartbeat_timeout: float | None
    concurrency_key: str  # only when the call set one
    priority: int  # only when the call set one (recorded; the next release orders by it)


class ActivityPayload(TypedDict, total=False):
    """A work item's payload: an activity's arguments and options (``{}`` for workflow
    tasks and timers)."""

    args: list[JSON]
    kwargs: dict[str, JSON]
    options: ActivityOptions


def activity_options(payload: Mapping[str, Any]) -> ActivityOptions:
    """The options in an activity's payload (its work item's, or its ``ActivityScheduled`` event's)."""
    return payload.get("options") or ActivityOptions()


class LeaseLost(Exception):
    """The claimed item is no longer ours: nothing was written."""


@dataclasses.dataclass(slots=True)
class LockedRun:
    """A run's row as read under its lock (LOCKED_FIELDS); ``now``, the database's clock as
    ``db_now()`` reads it, where the lock read it too; and, once an attempt of the run finished
    (``_finish_attempts``), whether the run has a workflow task and inbox events."""

    status: str
    history_length: int
    queue: str
    workflow_id: str
    run_id: uuid.UUID
    workflow_name: str
    started_at: datetime.datetime | None
    cancel_requested_at: datetime.datetime | None
    parent_id: int | None
    parent_task_id: int | None
    parent_close_policy: str
    now: datetime.datetime | None = None
    has_workflow_task: bool = False
    has_inbox: bool = False


assert LOCKED_FIELDS == tuple(field.name for field in dataclasses.fields(LockedRun))[: len(LOCKED_FIELDS)]


class LeaseRenewal(NamedTuple):
    """A lease to renew: its item, the attempt holding it, and the attempt's deadline (its
    timeout), past which it is not extended; None: no deadline."""

    item_id: int
    attempt: int
    cap: datetime.datetime | None


@dataclasses.dataclass(frozen=True)
class HistorySize:
    """How long and how large a run's history is (``history_size``)."""

    events: int
    bytes: int  # of the payloads' JSON, as the database renders it (about what the engine counts)


class FinishedTask(NamedTuple):
    """What finishing a workflow task under its run's lock found and did."""

    more: bool  # inbox events arrived that the task did not see
    unseen_signal: bool  # a signal among them (when asked): nothing was deleted
    deleted: bool  # the task's item, still ours, was deleted


@dataclasses.dataclass
class Claim:
    id: int
    kind: str
    instance_id: int
    queue: str
    name: str
    task_id: int | None
    payload: ActivityPayload
    attempt: int
    owner: str
    claimed_at: datetime.datetime
    lease_expires_at: datetime.datetime
    created_at: datetime.datetime
    failures: int = 0
    heartbeat_details: JSON = None
    heartbeat_at: datetime.datetime | None = None
    workflow_id: str = ""
    run_id: str = ""


@dataclasses.dataclass
class WorkflowTaskInput:
    workflow_id: str
    run_id: str
    workflow_name: str
    queue: str
    status: str
    history: list[Event]  # the whole run's, or only the events after ``known_length``
    inbox: list[Event]
    inbox_ids: list[int]
    history_length: int = 0
    known_length: int | None = None


class StoredRun(TypedDict):
    """The run's fields a workflow task's input needs."""

    workflow_id: str
    run_id: uuid.UUID
    workflow_name: str
    queue: str
    status: str
    history_length: int


class StoredTask(NamedTuple):
    """A workflow task's input as read: the run's fields, its inbox events with their ids
    and, where the same statement read it, the history after the known length."""

    run: StoredRun
    inbox_ids: list[int]
    inbox: list[Event]
    history: list[Event] | None


@dataclasses.dataclass
class Eager:
    """Activities a worker takes at once from the commit that schedules them: leased to
    ``owner``, up to ``limit``, on ``queues``; they skip a claim round trip."""

    owner: str
    queues: Sequence[str]
    limit: int
    lease_seconds: float
    claims: list[Claim] = dataclasses.field(default_factory=list)
    # Beyond ``limit``: activities with neither a start-to-close nor a heartbeat timeout,
    # which may wait for a thread in the worker (no clock of theirs runs while they do).
    spare: int = 0
    # Limited queues whose lock the commit holds, with the slots left (``queue_limits.EagerSlots``).
    slots: Any = None


@dataclasses.dataclass
class TaskDecisions:
    """What one workflow task decided (see ``run_workflow_task``'s outcome)."""

    new_events: Sequence[Event]
    status: str
    vars: dict[str, JSON]
    result: JSON = None
    error: dict[str, JSON] | None = None
    waiting_on: str | None = None

    @classmethod
    def from_outcome(cls, outcome: TaskOutcome) -> TaskDecisions:
        return cls(
            new_events=outcome.new_events,
            status=outcome.status,
            vars=outcome.vars,
            result=outcome.result,
            error=outcome.error,
            waiting_on=outcome.waiting_on,
        )


@dataclasses.dataclass
class TaskCompletion:
    """A workflow task's decisions for ``complete_workflow_tasks``, which sets ``committed``
    (they are written) or ``lost`` (the task is no longer ours: nothing of it was written).
    Neither: the run would close while an event it has not seen arrived, and the task was
    handed back to run again with it."""

    item: Claim
    decisions: TaskDecisions
    inbox_ids: Sequence[int]
    committed: bool = False
    lost: bool = False


@dataclasses.dataclass
class Continuation:
    """A run whose next workflow task may run inside an activity's completion: it is
    running, has no workflow task and no inbox, and its row is locked."""

    instance_id: int
    workflow_id: str
    run_id: str
    workflow_name: str
    queue: str
    history_length: int
    now: datetime.datetime
    inbox: list[Event]


@dataclasses.dataclass
class Completion:
    """An attempt's result for ``complete_activities``, which sets ``ran`` (the run's next
    workflow task ran in the same transaction, see ``continue_run``) or ``lost`` (the
    attempt is no longer ours: nothing of it was written)."""

    item: Claim
    result: JSON
    continue_run: Callable[[Continuation], TaskDecisions | None] | None = None
    ran: bool = False
    lost: bool = False


class CarriedEvent(TypedDict):
    """An inbox event that a run continuing as new hands to its next run."""

    kind: str
    name: str
    payload: dict[str, JSON]


class PendingWork(TypedDict):
    """One of a run's outstanding work items (``pending_work``)."""

    kind: str
    name: str
    task_id: int | None
    queue: str
    due_at: datetime.datetime
    attempt: int
    lease_owner: str | None
    lease_expires_at: datetime.datetime | None
    failures: int
    parked_at: datetime.datetime | None
    last_error: dict[str, Any] | None


class RunToReplay(TypedDict):
    """A run for ``durable_replay`` to check (``runs_to_replay``)."""

    id: int
    workflow_id: str
    run_id: uuid.UUID
    workflow_name: str
    queue: str
    status: str


class WorkerRow(TypedDict):
    """A worker that has not said it stopped (``worker_rows``)."""

    name: str
    hostname: str
    pid: int
    queues: list[str]
    last_seen_at: datetime.datetime


class OverdueItem(TypedDict):
    """The oldest of the overdue work items or expired leases (``overdue_work``)."""

    id: int
    kind: str
    name: str
    queue: str
    due_at: datetime.datetime
    attempt: int
    lease_owner: str | None
    lease_expires_at: datetime.datetime | None
    workflow_id: str
    run_id: uuid.UUID


class OverdueWork(TypedDict):
    """Work no worker is keeping up with (``overdue_work``)."""

    now: datetime.datetime
    overdue: int
    lease_expired: int
    parked: int
    oldest_due: OverdueItem | None
    oldest_lease_expired: OverdueItem | None


class LateSchedule(TypedDict):
    """A schedule whose next tick is late (``schedule_health``)."""

    schedule_id: str
    workflow_name: str
    next_tick_at: datetime.datetime
    next_fire_at: datetime.datetime


class ScheduleHealth(TypedDict):
    """Whether the schedules' ticks are fired in time (``schedule_health``)."""

    now: datetime.datetime
    active: int  # unpaused, with a tick to come
    late: int
    next_fire_at: datetime.datetime | None
    oldest_late: list[LateSchedule]


class StatusCounts(TypedDict):
    count: int
    recent: int  # closed within RECENT_WINDOW


class RunCounts(TypedDict):
    by_status: dict[str, StatusCounts]
    total: int
    open: int


class FailureCounts(TypedDict):
    failed: int
    terminated: int
    workflow_tasks_failing: int
    workflow_tasks_parked: int


class WorkCounts(TypedDict):
    by_kind: dict[str, dict[str, int]]  # kind -> the dashboard's work counts by name
    total: dict[str, int]


class OldestPending(TypedDict):
    """The oldest unclaimed due work item, and how long it has waited."""

    id: int
    kind: str
    name: str
    queue: str
    due_at: datetime.datetime
    attempt: int
    instance_id: int
    workflow_id: str
    workflow_name: str
    run_id: uuid.UUID
    waited: datetime.timedelta


class FailingTask(TypedDict):
    """A workflow task that failed at engine level: retrying or parked."""

    instance_id: int
    failures: int
    parked_at: datetime.datetime | None
    due_at: datetime.datetime
    last_error: dict[str, Any] | None
    workflow_id: str
    workflow_name: str
    run_id: uuid.UUID
    status: str


class DashboardWorker(TypedDict):
    name: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: datetime.datetime
    last_seen_at: datetime.datetime
    stopped_at: datetime.datetime | None
    state: str  # alive, stale or stopped


class WorkerCounts(TypedDict):
    alive: int
    stale: int
    stopped: int
    list: list[DashboardWorker]


class DashboardStats(TypedDict):
    """The operator's overview (``dashboard_stats``)."""

    now: datetime.datetime
    since: datetime.datetime
    overdue_after: datetime.timedelta
    stale_after: datetime.timedelta
    runs: RunCounts
    failures: FailureCounts
    work: WorkCounts
    oldest_pending: OldestPending | None
    failing_tasks: list[FailingTask]
    workers: WorkerCounts
