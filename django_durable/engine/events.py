"""History event kinds and the plain-data event the engine works on."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any, Protocol

from ..exceptions import PayloadTooLarge


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


@dataclasses.dataclass(frozen=True)
class ScheduledTick:
    """The schedule tick a run was started for: ``ctx.schedule``.

    ``reason`` is "tick" (the schedule fired it), "trigger" (``trigger()``: ``tick`` is when) or
    "backfill"; ``tick`` is an aware datetime in UTC."""

    schedule_id: str
    tick: datetime.datetime
    reason: str

    @classmethod
    def of_start(cls, started: Event) -> ScheduledTick | None:
        """Read from a run's ``ExecutionStarted`` event, if a schedule started the run."""
        scheduled = started.payload.get("schedule")
        if not scheduled:
            return None
        tick = datetime.datetime.fromisoformat(scheduled["tick"])
        return cls(schedule_id=scheduled["schedule_id"], tick=tick, reason=scheduled["reason"])


def describe_call(kind: str, name: str) -> str:
    what = {
        EventKind.ACTIVITY_SCHEDULED: "activity",
        EventKind.TIMER_STARTED: "timer",
        EventKind.EVENT_WAIT_STARTED: "wait for event",
        EventKind.CHILD_WORKFLOW_SCHEDULED: "child workflow",
    }.get(EventKind(kind), kind)
    return f"{what} {name!r}" if name else what


# The kinds of values with a size limit (``DURABLE["PAYLOAD_MAX_BYTES"]``), as errors name them.
PAYLOAD_KINDS: dict[str, str] = {
    "workflow_input": "workflow inputs",  # start_workflow(), child workflows, continue_as_new()
    "workflow_result": "workflow results",
    "activity_input": "activity inputs",
    "activity_result": "activity results",  # returned, completed by token, or failure details
    "signal": "signal payloads",
    "heartbeat": "heartbeat details",
    "variable": "workflow variables",  # ctx.set_var()
}
# kind -> the largest size in bytes, or None for no limit
PayloadLimits = Mapping[str, "int | None"]


class Converter(Protocol):
    """What the engine needs of a data converter (``django_durable.converter.DataConverter``),
    which the caller passes in: workflow values to JSON data and back."""

    def to_json(self, value: Any) -> Any: ...

    def from_json(self, data: Any) -> Any: ...


# Converted values are trees (the converter refuses cycles): no need to look for one.
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False, default=str)


def json_size(value: Any) -> int:
    """Bytes of ``value`` (already converted to JSON data) as compact UTF-8 JSON:
    what payload and history limits count."""
    if not value and isinstance(value, (dict, list)):
        return 2
    text = _compact.encode(value)
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def events_size(events: Iterable[Event]) -> int:
    """The bytes of JSON of ``events``' payloads (what ``HISTORY_MAX_BYTES`` counts)."""
    return sum(json_size(event.payload) for event in events)


def check_payload_size(value: Any, *, what: str, kind: str, limits: PayloadLimits | None) -> None:
    """Raise ``PayloadTooLarge`` if ``value`` (JSON data) is larger than ``limits`` allow for ``kind``."""
    limit = limits.get(kind) if limits else None
    if limit is None:
        return
    size = json_size(value)
    if size > limit:
        raise PayloadTooLarge(
            f"Cannot store {what}: {size} bytes of JSON, over the limit of {limit} bytes "
            f"for {PAYLOAD_KINDS[kind]} (DURABLE['PAYLOAD_MAX_BYTES']).",
            kind=kind,
            size=size,
            limit=limit,
        )
