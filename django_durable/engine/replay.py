"""One workflow task: run the workflow function over its history, collect what is new."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ..exceptions import (
    HistoryTooLarge,
    NonDeterminismError,
    WorkflowTaskError,
)
from .context import WorkflowContext
from .events import CLOSE_KINDS, Converter, Event, EventKind, PayloadLimits, events_size
from .failures import failure_from_exception, qualified_name
from .resident import CANCELED, COMPLETED, CONTINUED_AS_NEW, FAILED, RUNNING, ResidentRun

CLOSE_EVENT = {
    COMPLETED: EventKind.WORKFLOW_COMPLETED,
    FAILED: EventKind.WORKFLOW_FAILED,
    CANCELED: EventKind.WORKFLOW_CANCELED,
    CONTINUED_AS_NEW: EventKind.WORKFLOW_CONTINUED_AS_NEW,
}


@dataclasses.dataclass
class TaskOutcome:
    status: str  # RUNNING, COMPLETED, FAILED, CANCELED or CONTINUED_AS_NEW; meaningless with task_error
    new_events: list[Event]
    vars: dict[str, Any]
    result: Any = None
    error: dict[str, Any] | None = None
    waiting_on: str | None = None
    # Engine-level failure: nothing of this task may be committed.
    task_error: WorkflowTaskError | None = None
    # The history crossed the warning size in this task.
    history_warning: str | None = None
    # The code, parked where it waits, for the next task of the run (RUNNING outcomes only):
    # call ``committed()`` on it once this task's events are stored, ``close()`` to drop it.
    resident: ResidentRun | None = dataclasses.field(default=None, compare=False, repr=False)


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
    converter: Converter,
    activity_options: Callable[[Any], tuple[str, dict[str, Any]]],
    workflow_options: Callable[[Any], tuple[str, str | None]],
    history_warn_events: int | None = None,
    history_max_events: int | None = None,
    history_warn_bytes: int | None = None,
    history_max_bytes: int | None = None,
    payload_limits: PayloadLimits | None = None,
    resident: ResidentRun | None = None,
    task_timeout: float | None = None,
    code_guard: Callable[[], AbstractContextManager[Any]] | None = None,
) -> TaskOutcome:
    """Run ``fn`` over ``history`` plus this task's ``inbox`` events.

    ``activity_options(fn_or_name)`` resolves an activity to its registered
    name and the options to record (retry policy, timeouts, queue);
    ``workflow_options`` does the same for child workflows (name, queue).

    With ``resident`` (the run's code kept from its last task), ``history`` holds
    only the events stored since that task's commit, and the code goes on from
    where it waited; without, ``history`` is the whole run and the code replays it.

    ``payload_limits`` ({kind: bytes}) bound the values the code passes (``PayloadTooLarge``
    in the code); ``history_max_events`` / ``history_max_bytes`` fail the run with
    ``HistoryTooLarge`` instead of letting its history grow past them.

    ``code_guard`` is a context manager the code's thread runs in (the worker's forbids
    database queries); an exception it raises there fails the task, as ``sys.exit()`` does.
    """
    measure = history_max_bytes is not None or history_warn_bytes is not None
    started = Event(kind=EventKind.WORKFLOW_TASK_STARTED.value, timestamp=now)
    received = [*history, started, *inbox] if resident is not None else [started, *inbox]
    if resident is None:
        resident = _start(
            fn,
            [*history, *received],
            workflow_id=workflow_id,
            run_id=run_id,
            workflow_name=workflow_name,
            queue=queue,
            converter=converter,
            activity_options=activity_options,
            workflow_options=workflow_options,
            payload_limits=payload_limits,
            measure_history=measure,
            timeout=task_timeout,
            code_guard=code_guard,
        )
        status, result, error = resident.start()
        known = len(history)
    else:
        known = resident.length
        status, result, error = resident.resume(received)
        received = [started, *inbox]
    ctx = resident.ctx
    task_error = _task_error(ctx, status)
    if task_error is not None:
        resident.close()
        return TaskOutcome(status=RUNNING, new_events=[], vars={}, task_error=task_error)

    new_events = [*received, *ctx.new_events]
    size = known + len(new_events)
    # ctx.history_bytes counts what the code has seen: the history and the received events.
    size_bytes = ctx.history_bytes + events_size(ctx.new_events) if measure else 0
    known_bytes = ctx.history_bytes - events_size(received) if measure else 0
    over = None
    if history_max_events is not None and size >= history_max_events:
        over = f"would reach {size} events, the limit is {history_max_events} (DURABLE['HISTORY_MAX_EVENTS'])"
    elif history_max_bytes is not None and size_bytes > history_max_bytes:
        over = (
            f"would grow to {size_bytes} bytes of JSON, over the limit of {history_max_bytes} bytes "
            f"(DURABLE['HISTORY_MAX_BYTES'])"
        )
    if over is not None and status != CONTINUED_AS_NEW:
        status, result = FAILED, None
        error = failure_from_exception(
            HistoryTooLarge(
                f"The history of workflow {workflow_id!r} {over}. Long-running workflows should "
                f"call ctx.continue_as_new() now and then to go on with a fresh history."
            )
        )
        new_events = list(received)
    warning = None
    if history_warn_events is not None and known < history_warn_events <= size:
        warning = (
            f"The history of workflow {workflow_id!r} has {size} events (warning at {history_warn_events}"
            + (f", limit {history_max_events}" if history_max_events else "")
            + "); consider ctx.continue_as_new()."
        )
    elif history_warn_bytes is not None and known_bytes < history_warn_bytes <= size_bytes:
        warning = (
            f"The history of workflow {workflow_id!r} has {size_bytes} bytes of JSON (warning at "
            f"{history_warn_bytes}"
            + (f", limit {history_max_bytes}" if history_max_bytes else "")
            + "); consider ctx.continue_as_new()."
        )
    if status == CONTINUED_AS_NEW:
        new_events.append(_close(EventKind.WORKFLOW_CONTINUED_AS_NEW, ctx, result))
        result = None
    elif status != RUNNING:
        payload = {"result": result} if status == COMPLETED else {"error": error}
        new_events.append(_close(CLOSE_EVENT[status], ctx, payload))
    if status != RUNNING:
        resident.close()  # e.g. failed by the history limit while its code waits
    return TaskOutcome(
        status=status,
        new_events=new_events,
        vars=dict(ctx.vars),
        result=result,
        error=error,
        waiting_on=ctx.suspended_on if status == RUNNING else None,
        history_warning=warning,
        resident=resident if status == RUNNING else None,
    )


def check_history(
    fn: Callable[..., Any],
    *,
    workflow_id: str,
    run_id: str,
    workflow_name: str,
    queue: str,
    history: Sequence[Event],
    converter: Converter,
    activity_options: Callable[[Any], tuple[str, dict[str, Any]]],
    workflow_options: Callable[[Any], tuple[str, str | None]],
    task_timeout: float | None = None,
    code_guard: Callable[[], AbstractContextManager[Any]] | None = None,
) -> WorkflowTaskError | None:
    """Replay a stored history against ``fn`` without running anything; the error the
    next workflow task would hit (e.g. ``NonDeterminismError``), or None if it replays.
    ``task_timeout`` and ``code_guard`` are ``run_workflow_task``'s; what they stop is raised."""
    if not any(event.kind == EventKind.WORKFLOW_TASK_STARTED for event in history):
        return None  # no workflow code has run yet: nothing to compare
    ctx, status, _, _ = _execute(
        fn,
        history,
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_name=workflow_name,
        queue=queue,
        converter=converter,
        activity_options=activity_options,
        workflow_options=workflow_options,
        timeout=task_timeout,
        code_guard=code_guard,
    )
    return _task_error(ctx, status) or _close_error(ctx, status, history)


def _close_error(ctx: WorkflowContext, status: str, history: Sequence[Event]) -> NonDeterminismError | None:
    """Whether the code, having run over ``history`` to ``status``, would write the close event
    history holds (a run terminated or failed by the history limit was closed from outside)."""
    close = next((event for event in reversed(history) if event.kind in CLOSE_KINDS), None)
    closed = close.kind if close is not None else None
    # Terminated runs and runs failed by the history limit were closed from outside their code.
    outside = closed == EventKind.WORKFLOW_TERMINATED or (
        close is not None and (close.payload.get("error") or {}).get("type") == qualified_name(HistoryTooLarge)
    )
    if closed is not None and not outside:
        expected = CLOSE_EVENT[status] if status != RUNNING else None
        if expected != closed:
            return NonDeterminismError(
                f"The run closed with {closed}, but the code "
                + (f"now ends with {expected}" if expected else f"now waits on {ctx.suspended_on}")
                + " at the same point of its history."
            )
    return None


def _start(
    fn: Callable[..., Any],
    history: Sequence[Event],
    *,
    converter: Converter,
    timeout: float | None = None,
    code_guard: Callable[[], AbstractContextManager[Any]] | None = None,
    **context: Any,
) -> ResidentRun:
    ctx = WorkflowContext(history=history, converter=converter, **context)
    execution = history[0]
    args = converter.from_json(execution.payload.get("args", []))
    kwargs = converter.from_json(execution.payload.get("kwargs", {}))
    return ResidentRun(fn, ctx, args, kwargs, timeout=timeout, code_guard=code_guard)


def _execute(
    fn: Callable[..., Any], history: Sequence[Event], *, converter: Converter, **context: Any
) -> tuple[WorkflowContext, str, Any, dict[str, Any] | None]:
    """Run ``fn`` over ``history`` once, to where it waits or ends, then drop it."""
    resident = _start(fn, history, converter=converter, **context)
    try:
        status, result, error = resident.start()
        # What the code did until it waited, before unwinding it runs its finally blocks.
        ctx = resident.ctx
        before = (ctx.vars_before, ctx.vars_before_unknown)
        snapshot = (dict(ctx.vars), ctx.suspended_on, list(ctx.new_events), ctx.swallowed)
    finally:
        resident.close()
    ctx.vars, ctx.suspended_on, ctx.new_events, ctx.swallowed = snapshot
    ctx.vars_before, ctx.vars_before_unknown = before
    return ctx, status, result, error


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


@dataclasses.dataclass
class VarsAt:
    """A run's ``set_var`` variables as of one history event (see ``vars_at``)."""

    seq: int
    event: Event
    vars: dict[str, Any]  # decoded with the converter
    raw_vars: dict[str, Any]  # as stored, like ``WorkflowInstance.vars``
    # pending (no code had run), running, suspended, completed, failed, canceled,
    # continued_as_new, terminated, or unknown (with ``error``)
    status: str
    waiting_on: str | None = None
    result: Any = None  # as stored, when the code had completed
    failure: dict[str, Any] | None = None  # the workflow's own error, when it had failed or was canceled
    # Why the code no longer replays this history (e.g. NonDeterminismError, or what the
    # replay's guards stopped); nothing else is known then.
    error: BaseException | None = None
    # The variables (as stored) as of the event before, from the same replay: what this event changed.
    raw_vars_before: dict[str, Any] = dataclasses.field(default_factory=dict)


def vars_at(
    fn: Callable[..., Any],
    *,
    history: Sequence[Event],
    seq: int,
    workflow_id: str,
    run_id: str,
    workflow_name: str,
    queue: str,
    converter: Converter,
    activity_options: Callable[[Any], tuple[str, dict[str, Any]]],
    workflow_options: Callable[[Any], tuple[str, str | None]],
    task_timeout: float | None = None,
    code_guard: Callable[[], AbstractContextManager[Any]] | None = None,
) -> VarsAt:
    """Replay ``fn`` over events ``1 .. seq`` of ``history`` (a whole run, in order) and
    return the variables its code had set where it then suspended or finished, and
    those as of event ``seq - 1``. The code runs once (twice only when event ``seq`` is a
    cancellation request that met the code at a new durable call rather than at a wait).

    Nothing runs but the workflow code: its durable calls are matched against history
    or dropped, never scheduled. ``seq`` counts from 1, like ``HistoryEvent.seq``.
    ``task_timeout`` and ``code_guard`` are ``run_workflow_task``'s; what they stop is ``error``.
    """
    if not 1 <= seq <= len(history):
        raise ValueError(f"seq must be between 1 and {len(history)}, not {seq}.")
    return _vars_at(
        fn,
        history,
        seq,
        with_before=True,
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_name=workflow_name,
        queue=queue,
        converter=converter,
        activity_options=activity_options,
        workflow_options=workflow_options,
        timeout=task_timeout,
        code_guard=code_guard,
    )


def _vars_at(
    fn: Callable[..., Any],
    history: Sequence[Event],
    seq: int,
    *,
    with_before: bool,
    converter: Converter,
    **context: Any,
) -> VarsAt:
    prefix = list(history[:seq])
    at = VarsAt(seq=seq, event=prefix[-1], vars={}, raw_vars={}, status="pending")
    closed_by = next((event for event in reversed(prefix) if event.kind in CLOSE_KINDS), None)
    if not any(event.kind == EventKind.WORKFLOW_TASK_STARTED for event in prefix):
        if closed_by is not None and closed_by.kind == EventKind.WORKFLOW_TERMINATED:
            at.status = "terminated"
        return at  # no workflow code had run yet
    before = with_before and any(event.kind == EventKind.WORKFLOW_TASK_STARTED for event in prefix[:-1])
    try:
        ctx, status, result, failure = _execute(
            fn,
            prefix,
            lookahead=history[seq:],
            vars_before_index=seq - 1 if before else None,
            converter=converter,
            **context,
        )
        error: BaseException | None = _task_error(ctx, status)
        if error is None and closed_by is not None:
            error = _close_error(ctx, status, prefix)  # the close must be the code's own
        if error is None:
            at.raw_vars = dict(ctx.vars)
            at.vars = {name: converter.from_json(value) for name, value in ctx.vars.items()}
            if ctx.vars_before_unknown:
                earlier = _vars_at(fn, history, seq - 1, with_before=False, converter=converter, **context)
                at.raw_vars_before = earlier.raw_vars
            elif before:
                at.raw_vars_before = ctx.vars_before if ctx.vars_before is not None else dict(ctx.vars)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a workflow task would fail the same way (sys.exit() too); the page says so
        error = exc
    if error is not None:
        at.status, at.error = "unknown", error
        return at
    at.status, at.result, at.failure = status, result if status == COMPLETED else None, failure
    if closed_by is not None and closed_by.kind == EventKind.WORKFLOW_TERMINATED:
        at.status = "terminated"
    elif closed_by is not None and closed_by.kind == EventKind.WORKFLOW_FAILED and status == RUNNING:
        # Failed from outside its code (the history limit): the close event tells why.
        at.status, at.failure = FAILED, closed_by.payload.get("error")
    elif status == RUNNING:
        at.waiting_on = ctx.suspended_on
        pauses = (EventKind.EXECUTION_SUSPENDED, EventKind.EXECUTION_RESUMED)
        pause = next((e.kind for e in reversed(prefix) if e.kind in pauses), None)
        if pause == EventKind.EXECUTION_SUSPENDED:
            at.status = "suspended"
    return at
