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
    WORKFLOW_COMPLETED = "WorkflowCompleted"
    WORKFLOW_FAILED = "WorkflowFailed"
    WORKFLOW_TERMINATED = "WorkflowTerminated"

    def __str__(self) -> str:
        return self.value


# Events recording a durable call the workflow code made; matched on replay.
COMMAND_KINDS = frozenset({EventKind.ACTIVITY_SCHEDULED, EventKind.TIMER_STARTED})
# Events that answer a durable call; they arrive through the inbox.
COMPLETION_KINDS = frozenset(
    {EventKind.ACTIVITY_COMPLETED, EventKind.ACTIVITY_FAILED, EventKind.TIMER_FIRED}
)
CLOSE_KINDS = frozenset({EventKind.WORKFLOW_COMPLETED, EventKind.WORKFLOW_FAILED, EventKind.WORKFLOW_TERMINATED})


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
    }.get(EventKind(kind), kind)
    return f"{what} {name!r}" if name else what
