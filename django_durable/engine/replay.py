"""One workflow task: run the workflow function over its history, collect what is new."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import SerializationError, WorkflowTaskError
from .context import Abort, Suspend, WorkflowContext
from .events import Event, EventKind
from .failures import failure_from_exception

if TYPE_CHECKING:
    from ..converter import DataConverter

RUNNING, COMPLETED, FAILED = "running", "completed", "failed"


@dataclasses.dataclass
class TaskOutcome:
    status: str  # RUNNING, COMPLETED or FAILED; meaningless when task_error is set
    new_events: list[Event]
    vars: dict[str, Any]
    result: Any = None
    error: dict[str, Any] | None = None
    waiting_on: str | None = None
    # Engine-level failure: nothing of this task may be committed.
    task_error: WorkflowTaskError | None = None


def run_workflow_task(
    fn: Callable[..., Any],
    *,
    workflow_id: str,
    run_id: str,
    workflow_name: str,
    queue: str,
    history: Sequence[Event],
    inbox: Sequence[Event],
    now: datetime.datetime,
    converter: DataConverter,
    activity_options: Callable[[Any], tuple[str, dict[str, Any]]],
) -> TaskOutcome:
    """Replay ``fn`` over ``history`` plus this task's ``inbox`` events.

    ``activity_options(fn_or_name)`` resolves an activity to its registered
    name and the options to record (retry policy, timeouts, queue).
    """
    started = Event(kind=EventKind.WORKFLOW_TASK_STARTED.value, timestamp=now)
    received = [started, *inbox]
    full_history = [*history, *received]
    ctx = WorkflowContext(
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_name=workflow_name,
        queue=queue,
        history=full_history,
        converter=converter,
        activity_options=activity_options,
    )
    execution = history[0]
    args = converter.from_json(execution.payload.get("args", []))
    kwargs = converter.from_json(execution.payload.get("kwargs", {}))

    status, result, error = RUNNING, None, None
    try:
        value = fn(ctx, *args, **kwargs)
    except Suspend:
        pass
    except Abort:
        pass
    except Exception as exc:  # the workflow code failed: the workflow fails
        status, error = FAILED, failure_from_exception(exc)
    else:
        try:
            status, result = COMPLETED, ctx._encode(value, "the workflow's return value")
        except SerializationError as exc:
            status, error = FAILED, failure_from_exception(exc)

    task_error = _task_error(ctx, status)
    if task_error is not None:
        return TaskOutcome(status=RUNNING, new_events=[], vars={}, task_error=task_error)

    new_events = [*received, *ctx.new_events]
    if status == COMPLETED:
        new_events.append(_close(EventKind.WORKFLOW_COMPLETED, ctx, {"result": result}))
    elif status == FAILED:
        new_events.append(_close(EventKind.WORKFLOW_FAILED, ctx, {"error": error}))
    return TaskOutcome(
        status=status,
        new_events=new_events,
        vars=ctx.vars,
        result=result,
        error=error,
        waiting_on=ctx.suspended_on if status == RUNNING else None,
    )


def _task_error(ctx: WorkflowContext, status: str) -> WorkflowTaskError | None:
    if isinstance(ctx.fatal, WorkflowTaskError):
        return ctx.fatal
    if ctx.suspended_on is not None and (ctx.swallowed or status != RUNNING):
        return WorkflowTaskError(
            f"Workflow code swallowed the engine's suspension while waiting on "
            f"{ctx.suspended_on}: a bare 'except:' or 'except BaseException:' caught it and "
            f"the code went on. Let BaseException subclasses propagate (catch Exception instead)."
        )
    return ctx.unmatched_history()


def _close(kind: EventKind, ctx: WorkflowContext, payload: dict[str, Any]) -> Event:
    return Event(kind=kind.value, timestamp=ctx._now, payload=payload)
