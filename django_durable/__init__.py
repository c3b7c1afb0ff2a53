"""Durable workflows for Django.

    import django_durable as durable

Importable before ``django.setup()``: the client functions load the ORM on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .activity import ActivityInfo, ResultPending, activity_info, heartbeat
from .engine.context import WorkflowContext
from .engine.events import ParentClosePolicy, ScheduledTick
from .engine.handles import Task
from .exceptions import (
    ActivityError,
    ActivityNotPending,
    CancelledError,
    ChildWorkflowError,
    DatabaseAccessInWorkflow,
    DurableError,
    HistoryTooLarge,
    InvalidTaskToken,
    NonDeterminismError,
    NotRegistered,
    PayloadTooLarge,
    ScheduleAlreadyExists,
    ScheduleNotFound,
    SerializationError,
    TimeoutError,
    WorkflowAlreadyExists,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowNotOpen,
    WorkflowStateError,
    WorkflowStillOpen,
    WorkflowTaskError,
)
from .registry import activity, workflow
from .retry import RetryPolicy
from .schedules.spec import InvalidSchedule

if TYPE_CHECKING:
    from .client import (
        IdReusePolicy,
        WorkflowDescription,
        WorkflowHandle,
        complete_activity,
        complete_activity_by_id,
        fail_activity,
        fail_activity_by_id,
        get_workflow,
        heartbeat_activity,
        heartbeat_activity_by_id,
        start_workflow,
    )
    from .models import OverlapPolicy
    from .schedules.client import ScheduleDescription, ScheduledRun, ScheduleHandle, create_schedule, get_schedule

__version__ = "0.1.0"

_CLIENT_NAMES = {
    "IdReusePolicy",
    "start_workflow",
    "get_workflow",
    "WorkflowHandle",
    "WorkflowDescription",
    "complete_activity",
    "fail_activity",
    "heartbeat_activity",
    "complete_activity_by_id",
    "fail_activity_by_id",
    "heartbeat_activity_by_id",
}


_SCHEDULE_NAMES = {"create_schedule", "get_schedule", "ScheduleHandle", "ScheduleDescription", "ScheduledRun"}


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from . import client

        return getattr(client, name)
    if name in _SCHEDULE_NAMES:
        from .schedules import client as schedules

        return getattr(schedules, name)
    if name == "OverlapPolicy":
        from .models import OverlapPolicy

        return OverlapPolicy
    raise AttributeError(f"module 'django_durable' has no attribute {name!r}")


__all__ = [
    "ActivityError",
    "ActivityInfo",
    "ActivityNotPending",
    "CancelledError",
    "ChildWorkflowError",
    "DurableError",
    "DatabaseAccessInWorkflow",
    "HistoryTooLarge",
    "PayloadTooLarge",
    "IdReusePolicy",
    "InvalidSchedule",
    "InvalidTaskToken",
    "NonDeterminismError",
    "NotRegistered",
    "OverlapPolicy",
    "ParentClosePolicy",
    "ResultPending",
    "RetryPolicy",
    "ScheduleAlreadyExists",
    "ScheduleDescription",
    "ScheduleHandle",
    "ScheduleNotFound",
    "ScheduledRun",
    "ScheduledTick",
    "SerializationError",
    "Task",
    "TimeoutError",
    "WorkflowAlreadyExists",
    "WorkflowContext",
    "WorkflowDescription",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowNotFound",
    "WorkflowNotOpen",
    "WorkflowStateError",
    "WorkflowStillOpen",
    "WorkflowTaskError",
    "activity",
    "activity_info",
    "complete_activity",
    "complete_activity_by_id",
    "create_schedule",
    "fail_activity",
    "fail_activity_by_id",
    "heartbeat",
    "heartbeat_activity",
    "heartbeat_activity_by_id",
    "get_schedule",
    "get_workflow",
    "start_workflow",
    "workflow",
]
