"""Every database read and write of the engine.

Locking order, everywhere: a run's ``WorkflowInstance`` row first (it is the
per-run mutex for history, inbox and work items), then work items. Claims lock
only work items, with ``SKIP LOCKED``, in a transaction of their own that
touches no instance. Every write that finishes claimed work is fenced: it only
applies while the item still carries the claimer's lease and attempt.

One module per concern, each importing only those before it in this list:
``records`` (what the store returns and takes) and ``testclock``; ``dialects/``
(the SQL that differs by database, over the portable ORM base); ``clock``
(``db_now``) and ``transactions`` (``write_transaction``, which every transaction
that writes begins with: on SQLite it takes the write lock at BEGIN);
``runs`` (locking, creating, history, delivering events, id reuse,
terminating, starting children, telling parents); ``queue_limits`` (flow control:
which queues are limited, and what their locked row lets a lease take);
``claims`` (claims, dispatch, leases, fencing); ``workflow_tasks``; ``activities``; ``control`` (the verbs);
``schedules`` (schedules and firing their ticks, used as ``store.schedules``);
``maintenance`` (timers, reaping, the next wake-up); ``operations`` (workers,
the dashboard, pruning, health). Callers use the names re-exported here.
"""

from __future__ import annotations

import datetime
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import testclock
from .activities import (
    await_completion,
    complete_activities,
    complete_activity,
    current_attempt_token,
    fail_activity,
    fail_late_attempt,
    pending_attempt,
    record_heartbeat,
)
from .claims import (
    attempt_deadline,
    claim,
    claim_item,
    discard,
    dispatch,
    dispatch_activities,
    lease_lost,
    renew_leases,
)
from .clock import TransactionNow, db_now
from .control import (
    apply_parent_close_policies,
    cancel_requested,
    purge,
    request_cancel,
    rerun,
    resume,
    signal,
    suspend,
    terminate,
)
from .maintenance import (
    fire_due_timers,
    next_wakeup,
    queues_with_work,
    reap_expired_leases,
    seconds_until_due,
)
from .operations import (
    OVERDUE_AFTER,
    PRUNE_COUNT_KEYS,
    RECENT_WINDOW,
    WORKER_ROW_RETENTION,
    check_database,
    count_kept,
    count_prunable,
    dashboard_stats,
    overdue_work,
    prune_batch,
    prune_batch_size,
    record_worker_heartbeat,
    schedule_health,
    unapplied_migrations,
    worker_heartbeat_interval,
    worker_rows,
    worker_stale_after,
    worker_stopped,
)
from .records import (
    CLAIM_FIELDS,
    CLOSING_STATUSES,
    EVENT_FIELDS,
    JSON,
    LOCKED_FIELDS,
    ActivityOptions,
    ActivityPayload,
    Claim,
    Completion,
    Continuation,
    DashboardStats,
    Eager,
    FinishedTask,
    HistorySize,
    LeaseLost,
    LeaseRenewal,
    LockedRun,
    OverdueItem,
    OverdueWork,
    PendingWork,
    RunToReplay,
    ScheduleHealth,
    StoredTask,
    TaskCompletion,
    TaskDecisions,
    WorkerRow,
    WorkflowTaskInput,
)
from .runs import (
    _apply_id_reuse_policy,
    continuation_of,
    create_instance,
    get_history,
    get_instance,
    history_size,
    history_window,
    last_of_chain,
    pending_work,
    runs_to_replay,
)
from .transactions import write_transaction
from .workflow_tasks import (
    complete_workflow_task,
    complete_workflow_tasks,
    fail_workflow_task,
    load_workflow_task,
    load_workflow_tasks,
    unpark_workflow_task,
)

__all__ = [
    "CLAIM_FIELDS",
    "CLOSING_STATUSES",
    "EVENT_FIELDS",
    "JSON",
    "LOCKED_FIELDS",
    "OVERDUE_AFTER",
    "PRUNE_COUNT_KEYS",
    "RECENT_WINDOW",
    "WORKER_ROW_RETENTION",
    "ActivityOptions",
    "ActivityPayload",
    "Claim",
    "Completion",
    "Continuation",
    "DashboardStats",
    "Eager",
    "FinishedTask",
    "HistorySize",
    "LeaseLost",
    "LeaseRenewal",
    "LockedRun",
    "OverdueItem",
    "OverdueWork",
    "PendingWork",
    "RunToReplay",
    "ScheduleHealth",
    "StoredTask",
    "TaskCompletion",
    "TaskDecisions",
    "TransactionNow",
    "WorkerRow",
    "WorkflowTaskInput",
    "_apply_id_reuse_policy",
    "apply_parent_close_policies",
    "attempt_deadline",
    "await_completion",
    "cancel_requested",
    "check_database",
    "claim",
    "claim_item",
    "clock_override",
    "complete_activities",
    "complete_activity",
    "complete_workflow_task",
    "complete_workflow_tasks",
    "continuation_of",
    "count_kept",
    "count_prunable",
    "create_instance",
    "current_attempt_token",
    "dashboard_stats",
    "db_now",
    "discard",
    "dispatch",
    "dispatch_activities",
    "fail_activity",
    "fail_late_attempt",
    "fail_workflow_task",
    "fire_due_timers",
    "get_history",
    "get_instance",
    "history_size",
    "history_window",
    "last_of_chain",
    "lease_lost",
    "load_workflow_task",
    "load_workflow_tasks",
    "next_wakeup",
    "overdue_work",
    "schedule_health",
    "pending_attempt",
    "pending_work",
    "prune_batch",
    "prune_batch_size",
    "purge",
    "queues_with_work",
    "reap_expired_leases",
    "record_heartbeat",
    "record_worker_heartbeat",
    "renew_leases",
    "request_cancel",
    "rerun",
    "resume",
    "runs_to_replay",
    "seconds_until_due",
    "signal",
    "suspend",
    "terminate",
    "unapplied_migrations",
    "unpark_workflow_task",
    "worker_heartbeat_interval",
    "worker_rows",
    "worker_stale_after",
    "worker_stopped",
    "write_transaction",
]


if TYPE_CHECKING:
    # What ``_Store`` makes of the module: the test clock, read and set through the package.
    clock_override: Callable[[], datetime.datetime] | None


class _Store(types.ModuleType):
    """The package as a module whose ``clock_override`` is ``testclock``'s: a copy bound
    here would go stale when ``WorkflowEnvironment`` sets ``store.clock_override``."""

    @property
    def clock_override(self) -> Callable[[], datetime.datetime] | None:
        return testclock.clock_override

    @clock_override.setter
    def clock_override(self, value: Callable[[], datetime.datetime] | None) -> None:
        testclock.clock_override = value


sys.modules[__name__].__class__ = _Store
