"""The exception hierarchy: one base, ``DurableError``.

Each class carries ``status_code``, ``default_detail`` and ``default_code`` so
the HTTP layer can render any of them without a mapping table of its own.
"""

from __future__ import annotations

import builtins
from typing import Any


class DurableError(Exception):
    status_code: int = 500
    default_detail: str = "A durable workflow error occurred."
    default_code: str = "durable_error"

    def __init__(self, detail: str | None = None, *, code: str | None = None) -> None:
        self.detail = detail if detail is not None else self.default_detail
        self.code = code if code is not None else self.default_code
        super().__init__(self.detail)


class SerializationError(DurableError, TypeError):
    status_code = 400
    default_detail = "A value could not be serialised."
    default_code = "not_serializable"


class PayloadTooLarge(SerializationError):
    """A value is larger than ``DURABLE["PAYLOAD_MAX_BYTES"]`` allows for its kind.

    Raised where the value is passed, before anything is written. ``size`` and
    ``limit`` are bytes of JSON (UTF-8); ``kind`` names the limit that applies.
    """

    status_code = 413
    default_detail = "A value is larger than the payload size limit."
    default_code = "payload_too_large"

    def __init__(
        self, detail: str | None = None, *, code: str | None = None, kind: str = "", size: int = 0, limit: int = 0
    ) -> None:
        super().__init__(detail, code=code)
        self.kind = kind
        self.size = size
        self.limit = limit


class NotRegistered(DurableError, LookupError):
    status_code = 400
    default_detail = "No workflow or activity is registered under that name."
    default_code = "not_registered"


class WorkflowNotFound(DurableError, LookupError):
    status_code = 404
    default_detail = "Workflow not found."
    default_code = "workflow_not_found"


class WorkflowAlreadyExists(DurableError):
    status_code = 409
    default_detail = "A workflow with this id is already running."
    default_code = "workflow_already_exists"


class ScheduleNotFound(DurableError, LookupError):
    status_code = 404
    default_detail = "Schedule not found."
    default_code = "schedule_not_found"


class ScheduleAlreadyExists(DurableError):
    status_code = 409
    default_detail = "A schedule with this id already exists."
    default_code = "schedule_already_exists"


class WorkflowStateError(DurableError):
    """The run is not in a state that allows this (e.g. resuming a run that is not suspended)."""

    status_code = 409
    default_detail = "The workflow run is not in a state that allows this."
    default_code = "invalid_state"


class WorkflowNotOpen(WorkflowStateError):
    default_detail = "The workflow run is closed."
    default_code = "workflow_not_open"


class WorkflowStillOpen(WorkflowStateError):
    default_detail = "The workflow run is still open; only closed runs can be purged or rerun."
    default_code = "workflow_open"


class InvalidTaskToken(DurableError):
    status_code = 400
    default_detail = "The task token is invalid."
    default_code = "invalid_token"


class ActivityNotPending(DurableError):
    status_code = 409
    default_detail = (
        "This activity attempt is no longer pending: it finished, timed out, was superseded "
        "by a retry, or its workflow closed."
    )
    default_code = "activity_not_pending"


class TimeoutError(DurableError, builtins.TimeoutError):
    status_code = 504
    default_detail = "Timed out."
    default_code = "timeout"


class WorkflowTaskError(DurableError):
    """The workflow task could not run to a decision (engine-level, retryable)."""

    default_detail = "The workflow task failed."
    default_code = "workflow_task_failed"


class NonDeterminismError(WorkflowTaskError):
    """Workflow code no longer matches its recorded history.

    Raised (and recorded on the workflow task, never in history) when a durable
    call at a sequence number differs in kind or name from what history holds.
    """

    default_detail = "Workflow code does not match its history."
    default_code = "non_determinism"


class CancelledError(BaseException):
    """Raised in workflow code at its next durable call after ``WorkflowHandle.cancel()``
    (and by ``result()`` of a timer canceled with ``ctx.cancel_timer``).

    Let it propagate and the run closes as canceled; catch it (by name) to clean up
    first; durable calls work normally after it was raised once. Like
    ``asyncio.CancelledError`` it is not an ``Exception``, so a broad
    ``except Exception`` around an activity cannot swallow a cancellation.
    """


class HistoryTooLarge(DurableError):
    """A run's history reached ``HISTORY_MAX_EVENTS`` events or would outgrow
    ``HISTORY_MAX_BYTES``; the run fails with this error."""

    default_detail = "The workflow's history is too large."
    default_code = "history_too_large"


class _RemoteError(DurableError):
    """An error that happened elsewhere and was recorded as data."""

    def __init__(
        self,
        message: str,
        *,
        type: str = "",
        traceback: str = "",
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type
        self.traceback = traceback
        self.details = details

    @classmethod
    def from_failure(cls, failure: dict[str, Any], **kwargs: Any) -> _RemoteError:
        return cls(
            failure.get("message", ""),
            type=failure.get("type", ""),
            traceback=failure.get("traceback", ""),
            details=failure.get("details"),
            **kwargs,
        )

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.type else self.message


class ActivityError(_RemoteError):
    """An activity failed for good (retries exhausted, non-retryable, timed out)."""

    default_code = "activity_failed"

    def __init__(self, message: str, *, activity_name: str = "", attempt: int = 0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.activity_name = activity_name
        self.attempt = attempt


class WorkflowFailed(_RemoteError):
    """``WorkflowHandle.result()`` of a run that did not complete."""

    default_code = "workflow_failed"

    def __init__(self, message: str, *, status: str = "failed", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status = status


class ChildWorkflowError(WorkflowFailed):
    """In a parent workflow: a child workflow did not complete (failed, canceled, terminated)."""

    default_code = "child_workflow_failed"

    def __init__(self, message: str, *, workflow_id: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.workflow_id = workflow_id


class DatabaseAccessInWorkflow(BaseException):
    """Workflow code ran a database query. Workflow code must be deterministic (it is
    replayed); database work belongs in an activity. A ``BaseException``, like
    ``SystemExit``, so that an ``except Exception`` in the code cannot swallow it: the
    workflow task fails, backs off and is parked until the code is fixed, and the run
    is not failed for a bug in its code."""
