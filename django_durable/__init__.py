"""Durable workflows for Django.

    import django_durable as durable

Importable before ``django.setup()``: the client functions load the ORM on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .activity import ActivityInfo, ResultPending, activity_info, heartbeat
from .engine.context import WorkflowContext
from .engine.events import ParentClosePolicy
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


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from . import client

        return getattr(client, name)
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
    "InvalidTaskToken",
    "NonDeterminismError",
    "NotRegistered",
    "ParentClosePolicy",
    "ResultPending",
    "RetryPolicy",
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
    "fail_activity",
    "fail_activity_by_id",
    "heartbeat",
    "heartbeat_activity",
    "heartbeat_activity_by_id",
    "get_workflow",
    "start_workflow",
    "workflow",
]
