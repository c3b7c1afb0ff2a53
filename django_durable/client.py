"""Starting workflows and looking at them from ordinary Django code."""

from __future__ import annotations

import dataclasses
import datetime
import time
import uuid
from typing import Any

from . import notify, registry, store
from .conf import durable_settings
from .converter import check_size, from_json, to_json
from .engine.events import Event
from .engine.failures import failure_from_exception
from .exceptions import ActivityNotPending, TimeoutError, WorkflowFailed
from .models import OPEN_STATUSES, IdReusePolicy, WorkflowInstance, WorkflowStatus
from .tokens import TaskToken, read_task_token


@dataclasses.dataclass(frozen=True)
class WorkflowDescription:
    workflow_id: str
    run_id: str
    workflow_name: str
    status: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any
    error: dict[str, Any] | None
    vars: dict[str, Any]
    waiting_on: str
    task_error: dict[str, Any] | None
    history_length: int
    created_at: datetime.datetime
    scheduled_start_at: datetime.datetime | None
    started_at: datetime.datetime | None
    updated_at: datetime.datetime
    closed_at: datetime.datetime | None
    pending_work: list[store.PendingWork]


class WorkflowHandle:
    """A workflow run, by id. Made by ``start_workflow`` or ``get_workflow``."""

    def __init__(self, workflow_id: str, run_id: str | None = None) -> None:
        self.workflow_id = workflow_id
        self._run_id = run_id

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.workflow_id} run {self._run_id or 'latest'}>"

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            self._run_id = str(self._instance().run_id)
        return self._run_id

    def _instance(self) -> WorkflowInstance:
        return store.get_instance(self.workflow_id, self._run_id)

    def _current_run_id(self) -> str | None:
        """The run that signals and control verbs reach: the handle's run or, if that
        continued as new, the run its chain has reached (None: the id's latest run)."""
        if self._run_id is None:
            return None
        return str(store.last_of_chain(self._instance()).run_id)

    def status(self) -> str:
        return self._instance().status

    def describe(self) -> WorkflowDescription:
        instance = self._instance()
        return WorkflowDescription(
            workflow_id=instance.workflow_id,
            run_id=str(instance.run_id),
            workflow_name=instance.workflow_name,
            status=instance.status,
            queue=instance.queue,
            args=from_json(instance.input.get("args", [])),
            kwargs=from_json(instance.input.get("kwargs", {})),
            result=from_json(instance.result),
            error=instance.error,
            vars=from_json(instance.vars),
            waiting_on=instance.waiting_on,
            task_error=instance.task_error,
            history_length=instance.history_length,
            created_at=instance.created_at,
            scheduled_start_at=instance.scheduled_start_at,
            started_at=instance.started_at,
            updated_at=instance.updated_at,
            closed_at=instance.closed_at,
            pending_work=store.pending_work(instance.pk),
        )

    def vars(self) -> dict[str, Any]:
        """The latest ``ctx.set_var`` values (as of the last committed workflow task)."""
        return from_json(self._instance().vars)

    def history(self) -> list[Event]:
        return store.get_history(self._instance().pk)

    def retry(self) -> bool:
        """Run a workflow task that is backing off or parked after failures (say, a
        ``NonDeterminismError`` fixed by a deploy) now. Returns whether there was one."""
        return store.unpark_workflow_task(self._instance().pk)

    def terminate(self, reason: str | None = None) -> None:
        """Close the run now; no workflow code runs, pending activities and timers are dropped."""
        store.terminate(self.workflow_id, self._current_run_id(), reason or "terminated")
        store.apply_parent_close_policies(parent_id=store.get_instance(self.workflow_id, self._current_run_id()).pk)

    def signal(self, name: str, payload: Any = None) -> None:
        """Send the external event ``name``; the workflow reads it with
        ``ctx.wait_for_event(name)`` (now, or whenever it next waits for one)."""
        if not isinstance(name, str) or not name or len(name) > 255:
            raise ValueError("An event name must be a non-empty string of at most 255 characters.")
        encoded = to_json(payload, f"the payload of event {name!r}", kind="signal")
        store.signal(self.workflow_id, self._current_run_id(), name, encoded)

    def cancel(self) -> None:
        """Ask the run to cancel. Its code sees ``CancelledError`` at its next durable
        call and may clean up; running activities see it on their next heartbeat."""
        store.request_cancel(self.workflow_id, self._current_run_id())

    def suspend(self, reason: str = "") -> None:
        """Pause the run: no workflow code runs and no new activity starts until ``resume()``."""
        store.suspend(self.workflow_id, self._current_run_id(), reason)

    def resume(self) -> None:
        store.resume(self.workflow_id, self._current_run_id())

    def purge(self) -> int:
        """Delete this closed run (or, for a handle by workflow id, every closed run of
        the id) with its history. Returns how many runs were deleted."""
        return store.purge(self.workflow_id, self._run_id)

    def rerun(self, from_event: int, *, workflow_id: str | None = None) -> WorkflowHandle:
        """Start a new run from a prefix of this closed run's history: events before
        ``from_event`` (a history ``seq``) are kept, the code goes on from there.
        For recovering runs that failed because of a bad deploy."""
        instance = store.rerun(self.workflow_id, self._run_id, from_event, workflow_id)
        return WorkflowHandle(instance.workflow_id, str(instance.run_id))

    def result(self, timeout: float | datetime.timedelta | None = None) -> Any:
        """Wait for the run to close; return its result or raise ``WorkflowFailed``.

        Follows ``continue_as_new``: the result is the chain's last run's. Raises
        ``django_durable.TimeoutError`` if it is still open after ``timeout`` seconds.
        """
        if isinstance(timeout, datetime.timedelta):
            timeout = timeout.total_seconds()
        instance = wait_for_close(self._instance(), timeout, follow_chain=True)
        if instance.status in OPEN_STATUSES:
            raise TimeoutError(f"Workflow {self.workflow_id!r} is still {instance.status} after {timeout}s.")
        if instance.status == WorkflowStatus.COMPLETED:
            return from_json(instance.result)
        error = instance.error or {}
        raise WorkflowFailed(
            error.get("message") or f"Workflow {self.workflow_id!r} {instance.status}.",
            type=error.get("type", ""),
            traceback=error.get("traceback", ""),
            details=error.get("details"),
            status=instance.status,
        )


def wait_for_close(instance: WorkflowInstance, timeout: float | None, *, follow_chain: bool) -> WorkflowInstance:
    """Wait until the run ``instance`` (with ``follow_chain``, the last run of its
    continue-as-new chain) is closed, or ``timeout`` seconds (None: no limit) have
    passed; return the run as last read.

    On PostgreSQL it sleeps on ``notify.CLOSED_CHANNEL`` and re-reads the run when
    that run's close is announced, and at least every ``RESULT_POLL_INTERVAL`` in
    case an announcement was missed; elsewhere it polls with backoff up to that interval.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    current = store.last_of_chain(instance) if follow_chain else instance
    listener: notify.Listener | None = None
    backoff = 0.01
    try:
        while current.status in OPEN_STATUSES:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            poll_interval = durable_settings.RESULT_POLL_INTERVAL
            if listener is None and notify.supported():
                # LISTEN before the re-read below: a close committed after it wakes the wait.
                listener = notify.Listener([notify.CLOSED_CHANNEL])
            elif listener is not None:
                _wait_for_close_notification(listener, str(current.run_id), _at_most(poll_interval, remaining))
            else:
                time.sleep(_at_most(backoff, remaining))
                backoff = min(backoff * 2, poll_interval)
            current = store.get_instance(current.workflow_id, str(current.run_id))
            if follow_chain:
                current = store.last_of_chain(current)
    finally:
        if listener is not None:
            listener.close()
    return current


def _wait_for_close_notification(listener: notify.Listener, run_id: str, seconds: float) -> None:
    """Return when ``run_id``'s close is announced, or when the database should be
    re-read anyway: after ``seconds``, or when the listener may have missed something."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        received = listener.wait(remaining)
        if not received or any(payload == run_id for _, payload in received):
            return


def _at_most(seconds: float, remaining: float | None) -> float:
    return seconds if remaining is None else max(0.0, min(seconds, remaining))


def start_workflow(
    workflow: Any,
    *args: Any,
    workflow_id: str | None = None,
    queue: str | None = None,
    start_at: datetime.datetime | None = None,
    id_reuse_policy: IdReusePolicy | str = IdReusePolicy.ALLOW_DUPLICATE,
    **kwargs: Any,
) -> WorkflowHandle:
    """Start a run of ``workflow`` (the decorated function or its registered name).

    Joins the caller's transaction if there is one: the run exists, and workers
    see it, only once that transaction commits. ``id_reuse_policy`` decides
    whether ``workflow_id`` may name a new run when earlier runs exist
    (default: once the previous run has closed).
    """
    id_reuse_policy = IdReusePolicy(id_reuse_policy)
    definition = registry.get_workflow_definition(workflow)
    if start_at is not None and start_at.tzinfo is None:
        raise ValueError("start_at must be a timezone-aware datetime.")
    encoded_args = to_json(list(args), f"the arguments of workflow {definition.name!r}")
    encoded_kwargs = to_json(kwargs, f"the keyword arguments of workflow {definition.name!r}")
    check_size(
        {"args": encoded_args, "kwargs": encoded_kwargs}, f"the input of workflow {definition.name!r}", "workflow_input"
    )
    instance = store.create_instance(
        workflow_name=definition.name,
        workflow_id=workflow_id or uuid.uuid4().hex,
        queue=queue or definition.queue or durable_settings.DEFAULT_QUEUE,
        args=encoded_args,
        kwargs=encoded_kwargs,
        start_at=start_at,
        id_reuse_policy=id_reuse_policy,
    )
    return WorkflowHandle(instance.workflow_id, str(instance.run_id))


def get_workflow(workflow_id: str, run_id: str | None = None) -> WorkflowHandle:
    """A handle on the latest run of ``workflow_id`` (or the given run)."""
    instance = store.get_instance(workflow_id, run_id)
    return WorkflowHandle(instance.workflow_id, str(instance.run_id) if run_id else None)


# -- finishing activities from anywhere -----------------------------------------------


def complete_activity(task_token: str, result: Any = None) -> None:
    """Complete the activity attempt named by ``task_token`` with ``result``."""
    _complete(read_task_token(task_token), result)


def fail_activity(task_token: str, error: BaseException | dict[str, Any] | str) -> None:
    """Fail the attempt; its retry policy decides whether another attempt follows."""
    _fail(read_task_token(task_token), error)


def heartbeat_activity(task_token: str, details: Any = None) -> bool:
    """Record progress for the attempt; returns whether cancellation was requested."""
    return _heartbeat(read_task_token(task_token), details)


# By id, the attempt is looked up, not named by a signed token: TASK_TOKEN_MAX_AGE does not apply.
def complete_activity_by_id(
    workflow_id: str, activity_id: str, result: Any = None, *, run_id: str | None = None
) -> None:
    """Like ``complete_activity``, naming the activity by workflow id and activity id."""
    _complete(store.current_attempt_token(workflow_id, str(activity_id), run_id), result)


def fail_activity_by_id(
    workflow_id: str, activity_id: str, error: BaseException | dict[str, Any] | str, *, run_id: str | None = None
) -> None:
    _fail(store.current_attempt_token(workflow_id, str(activity_id), run_id), error)


def heartbeat_activity_by_id(
    workflow_id: str, activity_id: str, details: Any = None, *, run_id: str | None = None
) -> bool:
    return _heartbeat(store.current_attempt_token(workflow_id, str(activity_id), run_id), details)


def _complete(token: TaskToken, result: Any) -> None:
    encoded = to_json(result, "the activity result", kind="activity_result")
    _finish(token, lambda item: store.complete_activity(item, encoded, live_only=True))


def _fail(token: TaskToken, error: BaseException | dict[str, Any] | str) -> None:
    failure = _failure(error)
    _finish(token, lambda item: store.fail_activity(item, failure, live_only=True))


def _heartbeat(token: TaskToken, details: Any) -> bool:
    encoded = to_json(details, "the heartbeat details", kind="heartbeat")
    item = _finish(
        token,
        lambda item: store.record_heartbeat(
            item, encoded, lease_seconds=durable_settings.LEASE_SECONDS, live_only=True
        ),
    )
    return store.cancel_requested(item.instance_id)


def _finish(token: TaskToken, action: Any) -> store.Claim:
    item = store.pending_attempt(token)
    try:
        action(item)
    except store.LeaseLost:
        raise ActivityNotPending() from None
    return item


def _failure(error: BaseException | dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(error, BaseException):
        return failure_from_exception(error)
    if isinstance(error, str):
        return {"type": "ActivityFailure", "message": error}
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        raise TypeError('error must be an exception, a message, or {"message": str, "type"?: str, "details"?: ...}.')
    error_type = error.get("type") or "ActivityFailure"
    if not isinstance(error_type, str):
        raise TypeError("error['type'] must be a string.")
    failure: dict[str, Any] = {"type": error_type, "message": error["message"]}
    if error.get("details") is not None:
        failure["details"] = to_json(error["details"], "the error details", kind="activity_result")
    return failure
