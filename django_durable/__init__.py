"""Durable workflows for Django.

    import django_durable as durable

Importable before ``django.setup()``: the client functions load the ORM on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .activity import ActivityInfo, activity_info
from .engine.context import Task, WorkflowContext
from .exceptions import (
    ActivityError,
    ActivityNotPending,
    DurableError,
    InvalidTaskToken,
    NonDeterminismError,
    NotRegistered,
    SerializationError,
    TimeoutError,
    WorkflowAlreadyExists,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTaskError,
)
from .registry import activity, workflow
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .client import WorkflowDescription, WorkflowHandle, get_workflow, start_workflow

__version__ = "0.1.0"

_CLIENT_NAMES = {"start_workflow", "get_workflow", "WorkflowHandle", "WorkflowDescription"}


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'django_durable' has no attribute {name!r}")


__all__ = [
    "ActivityError",
    "ActivityInfo",
    "ActivityNotPending",
    "DurableError",
    "InvalidTaskToken",
    "NonDeterminismError",
    "NotRegistered",
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
    "WorkflowTaskError",
    "activity",
    "activity_info",
    "get_workflow",
    "start_workflow",
    "workflow",
]
