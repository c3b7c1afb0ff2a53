"""History event kinds and the plain-data event the engine works on."""

from __future__ import annotations

import dataclasses
import datetime
from enum import Enum
from typing import Any


class EventKind(str, Enum):
    EXECUTION_STARTED = "ExecutionStarted"
    WORKFLOW_TASK_STARTED = "WorkflowTaskStarted"
    ACTIVITY_SCHEDULED = "ActivityScheduled"
    ACTIVITY_COMPLETED = "ActivityCompleted"
    ACTIVITY_FAILED = "ActivityFailed"
    TIMER_STARTED = "TimerStarted"
    TIMER_FIRED = "TimerFired"
    TIMER_CANCELED = "TimerCanceled"
    EVENT_WAIT_STARTED = "EventWaitStarted"
    EVENT_RAISED = "EventRaised"
    CHILD_WORKFLOW_SCHEDULED = "ChildWorkflowScheduled"
    CHILD_WORKFLOW_COMPLETED = "ChildWorkflowCompleted"
    CHILD_WORKFLOW_FAILED = "ChildWorkflowFailed"
    PATCH_MARKER = "PatchMarker"
    CANCEL_REQUESTED = "CancelRequested"
    EXECUTION_SUSPENDED = "ExecutionSuspended"
    EXECUTION_RESUMED = "ExecutionResumed"
    WORKFLOW_COMPLETED = "WorkflowCompleted"
    WORKFLOW_FAILED = "WorkflowFailed"
    WORKFLOW_CANCELED = "WorkflowCanceled"
    WORKFLOW_CONTINUED_AS_NEW = "WorkflowContinuedAsNew"
    WORKFLOW_TERMINATED = "WorkflowTerminated"

    def __str__(self) -> str:
        return self.value


class ParentClosePolicy(str, Enum):
    """What happens to a child workflow still running when its parent closes."""

    TERMINATE = "terminate"
    CANCEL = "cancel"  # ask the child to cancel (cooperatively)
    ABANDON = "abandon"  # let it run on

    def __str__(self) -> str:
        return self.value


# Events recording a durable call the workflow code made; matched on replay by task_id.
# (A PatchMarker is found by its change id instead, so a patched() call can be removed later.)
COMMAND_KINDS = frozenset(
    {
        EventKind.ACTIVITY_SCHEDULED,
        EventKind.TIMER_STARTED,
        EventKind.EVENT_WAIT_STARTED,
        EventKind.CHILD_WORKFLOW_SCHEDULED,
    }
)
# Events that answer a durable call (by task_id); they arrive through the inbox.
COMPLETION_KINDS = frozenset(
    {
        EventKind.ACTIVITY_COMPLETED,
        EventKind.ACTIVITY_FAILED,
        EventKind.TIMER_FIRED,
        EventKind.CHILD_WORKFLOW_COMPLETED,
        EventKind.CHILD_WORKFLOW_FAILED,
    }
)
FAILURE_KINDS = frozenset({EventKind.ACTIVITY_FAILED, EventKind.CHILD_WORKFLOW_FAILED})
CLOSE_KINDS = frozenset(
    {
        EventKind.WORKFLOW_COMPLETED,
        EventKind.WORKFLOW_FAILED,
        EventKind.WORKFLOW_CANCELED,
        EventKind.WORKFLOW_CONTINUED_AS_NEW,
        EventKind.WORKFLOW_TERMINATED,
    }
)


@dataclasses.dataclass
class Event:
    kind: str
    timestamp: datetime.datetime
    name: str = ""
    task_id: int | None = None
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)
    seq: int | None = None  # position in history; None until stored


def describe_call(kind: str, name: str) -> str:
    what = {
        EventKind.ACTIVITY_SCHEDULED: "activity",
        EventKind.TIMER_STARTED: "timer",
        EventKind.EVENT_WAIT_STARTED: "wait for event",
        EventKind.CHILD_WORKFLOW_SCHEDULED: "child workflow",
    }.get(EventKind(kind), kind)
    return f"{what} {name!r}" if name else what
