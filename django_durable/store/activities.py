"""Activity attempts: completing them (one at a time or group-committed, with the run's next
workflow task inline), failing them by their retry policy, heartbeats, and the attempts
a task token or an activity id names."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.db import connection
from django.db.models import Q, QuerySet

from .. import notify
from ..engine.events import Event, EventKind
from ..exceptions import ActivityNotPending
from ..faults import crash_point
from ..models import InboxEvent, WorkflowStatus, WorkItem, WorkItemKind
from ..retry import RetryPolicy
from ..statelog import state_change
from ..tokens import TaskToken
from . import queue_limits
from .claims import _claim_rows, _fence, attempt_deadline, lease_lost
from .clock import _seconds, db_now
from .dialects import dialect_for
from .records import JSON, Claim, Completion, Continuation, Eager, LockedRun, TaskDecisions, activity_options
from .runs import _deliver, _lock_instance, _lock_instances, _parked_at, get_instance
from .transactions import write_transaction
from .workflow_tasks import _commit_task, _TaskWrite, _write_batch


def _attempt_fence(item: Claim, now: datetime.datetime, *, live_only: bool) -> QuerySet[WorkItem]:
    """The item while it still is this attempt; with ``live_only`` also not timed out
    (a lease that has expired but is not reaped yet is no longer pending)."""
    fence = _fence(item)
    if live_only:
        fence = fence.filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__gt=now))
    return fence


def _finish_attempt(item: Claim, instance: LockedRun, *, live_only: bool) -> bool:
    """Delete the attempt's item if it still is this attempt (else False), and set the
    locked run's ``has_workflow_task`` and ``has_inbox`` (on PostgreSQL see ``_finish_attempts``)."""
    assert instance.now is not None  # _lock_instances reads it with the lock
    deleted, _ = _attempt_fence(item, instance.now, live_only=live_only).delete()
    instance.has_workflow_task = WorkItem.objects.filter(
        instance_id=item.instance_id, kind=WorkItemKind.WORKFLOW
    ).exists()
    instance.has_inbox = InboxEvent.objects.filter(instance_id=item.instance_id).exists()
    return bool(deleted)


def _finish_attempts(items: Sequence[Claim], runs: dict[int, LockedRun], *, live_only: bool) -> set[int]:
    """``_finish_attempt`` for attempts of the locked ``runs`` (each run's busy flags
    set): the ids of the items deleted, on PostgreSQL in one statement."""
    if not items:
        return set()
    finished = dialect_for(connection).finish_attempts(items, runs, live_only=live_only)
    if finished is not None:
        return finished
    return {item.id for item in items if _finish_attempt(item, runs[item.instance_id], live_only=live_only)}


def complete_activity(
    item: Claim,
    result: JSON,
    *,
    live_only: bool = False,
    continue_run: Callable[[Continuation], TaskDecisions | None] | None = None,
    eager: Eager | None = None,
) -> bool:
    """Record the attempt's result, or raise ``LeaseLost`` and write nothing.

    With ``continue_run`` (a worker that holds the run's code), the run's next workflow
    task may run right here, in the same transaction: ``continue_run`` gets the result
    as the task's inbox and returns the task's decisions, or None to leave the result
    to an ordinary workflow task. Returns whether the task ran here. It must not raise.
    """
    completion = Completion(item, result, continue_run)
    complete_activities([completion], live_only=live_only, eager=eager)
    if completion.lost:
        raise lease_lost(item)
    return completion.ran


def complete_activities(
    completions: Sequence[Completion], *, live_only: bool = False, eager: Eager | None = None
) -> None:
    """``complete_activity`` for many attempts, in one transaction (group commit): on
    PostgreSQL the runs are locked, the attempts deleted and the ordinary steps written
    with one statement each, whatever their number. Results of one run make one step
    (the first completion's ``continue_run`` gets them all, in order). An attempt that
    is no longer ours is marked ``lost`` and the others still commit."""
    if eager is not None:
        eager.slots = None  # a failed try's locks went with its transaction
    with write_transaction():
        runs = _lock_instances(completion.item.instance_id for completion in completions)
        finished = _finish_attempts(
            [completion.item for completion in completions if completion.item.instance_id in runs],
            runs,
            live_only=live_only,
        )
        _wake_for_freed_slots(completion.item.queue for completion in completions if completion.item.id in finished)
        by_run: dict[int, list[Completion]] = {}
        for completion in completions:
            if completion.item.id in finished:
                by_run.setdefault(completion.item.instance_id, []).append(completion)
            else:
                completion.lost = True
        writes: list[_TaskWrite] = []
        for instance_id, group in by_run.items():
            instance = runs[instance_id]
            now = instance.now
            assert now is not None  # _lock_instances reads it with the lock
            events = []
            for completion in group:
                crash_point("before_activity_commit")
                item = completion.item
                events.append(
                    Event(
                        kind=EventKind.ACTIVITY_COMPLETED,
                        timestamp=now,
                        name=item.name,
                        task_id=item.task_id,
                        payload={"result": completion.result, "attempt": item.attempt},
                    )
                )
            continue_run = group[0].continue_run
            if (
                continue_run is not None
                and instance.status == WorkflowStatus.RUNNING
                and not instance.has_workflow_task
                and not instance.has_inbox
            ):
                decisions = continue_run(
                    Continuation(
                        instance_id=instance_id,
                        workflow_id=instance.workflow_id,
                        run_id=str(instance.run_id),
                        workflow_name=instance.workflow_name,
                        queue=instance.queue,
                        history_length=instance.history_length,
                        now=now,
                        inbox=events,
                    )
                )
                if decisions is not None:
                    _commit_task(instance_id, instance, decisions, now, eager=eager, batch=writes)
                    for completion in group:
                        completion.ran = True
                    continue
            for event in events:
                _deliver(instance_id, instance, event)
        _write_batch(writes, eager)


def _wake_for_freed_slots(queues: Iterable[str]) -> None:
    """Attempts of limited queues finished: wake the workers waiting for their slots (once
    committed; where LISTEN/NOTIFY exists, else they look at their next poll)."""
    limited = queue_limits.known_limited_queues()
    if limited:
        for queue in sorted({queue for queue in queues if queue in limited}):
            notify.notify_work(queue)


def await_completion(item: Claim, heartbeat_at: datetime.datetime | None) -> None:
    """The attempt's function raised ResultPending: it is finished later, by token.

    The worker stops renewing its lease; from now on only the attempt's own
    timeouts (start-to-close, heartbeat) bound it.
    """
    updated = _fence(item).update(awaiting_completion=True, lease_expires_at=attempt_deadline(item, heartbeat_at))
    if not updated:
        raise lease_lost(item)


def record_heartbeat(item: Claim, details: JSON, *, lease_seconds: float, live_only: bool = False) -> datetime.datetime:
    """Keep ``details`` for the next attempt and push out the attempt's heartbeat deadline."""
    with write_transaction():
        now = db_now()
        fence = _attempt_fence(item, now, live_only=live_only)
        # A heartbeat without details keeps what an earlier one reported.
        updates = {"heartbeat_at": now} if details is None else {"heartbeat_details": details, "heartbeat_at": now}
        if not fence.update(**updates):
            raise lease_lost(item)
        deadline = attempt_deadline(item, now)
        fence.filter(awaiting_completion=True).update(lease_expires_at=deadline)
        renewed = now + _seconds(lease_seconds)
        fence.filter(awaiting_completion=False).update(lease_expires_at=min(renewed, deadline) if deadline else renewed)
    return now


def pending_attempt(token: TaskToken) -> Claim:
    """The activity attempt a task token names, while it is leased; else ActivityNotPending."""
    row = _claim_rows(WorkItem.objects.filter(id=token.item_id, kind=WorkItemKind.ACTIVITY), "lease_owner").first()
    if (
        row is None
        or str(row["run_id"]) != token.run_id
        or row["task_id"] != token.task_id
        or row["attempt"] != token.attempt
        or row["lease_owner"] is None
    ):
        raise ActivityNotPending()
    return Claim(owner=row.pop("lease_owner"), **{**row, "run_id": str(row["run_id"])})


def current_attempt_token(workflow_id: str, activity_id: str, run_id: str | None = None) -> TaskToken:
    """The token of an activity's current attempt, by workflow id and activity id."""
    instance = get_instance(workflow_id, run_id)
    try:
        task_id = int(activity_id)
    except (TypeError, ValueError):
        raise ActivityNotPending(f"Workflow {workflow_id!r} has no activity {activity_id!r}.") from None
    row = (
        WorkItem.objects.filter(instance=instance, kind=WorkItemKind.ACTIVITY, task_id=task_id)
        .values("id", "attempt")
        .first()
    )
    if row is None or row["attempt"] == 0:
        raise ActivityNotPending(f"Activity {activity_id} of workflow {workflow_id!r} is not pending.")
    return TaskToken(item_id=row["id"], run_id=str(instance.run_id), task_id=task_id, attempt=row["attempt"])


def fail_activity(
    item: Claim, failure: dict[str, Any], *, retryable: bool = True, live_only: bool = False
) -> datetime.datetime | None:
    """Record a failed attempt: schedule the next one by the retry policy, or fail the
    activity for good. Returns when the retry is due, or None when it gave up."""
    with write_transaction():
        instance = _lock_instance(item.instance_id)
        if instance is None:
            raise lease_lost(item)
        now = db_now()
        fence = _attempt_fence(item, now, live_only=live_only)
        return _fail_attempt(item, fence, instance, failure, retryable=retryable, now=now)


def fail_late_attempt(item: Claim) -> bool:
    """Fail, without running it, an attempt claimed after its schedule-to-close
    deadline: with the previous attempt's error (a retry due just before the deadline
    was claimed just after it), or a TimeoutError when no attempt ever started.
    Returns False (and writes nothing) when the attempt is not late."""
    limit = activity_options(item.payload).get("schedule_to_close_timeout")
    if limit is None or item.claimed_at < item.created_at + _seconds(limit):
        return False
    with write_transaction():
        instance = _lock_instance(item.instance_id)
        if instance is None:
            raise lease_lost(item)
        now = db_now()
        fence = _fence(item)
        last_error = fence.values_list("last_error", flat=True).first()
        if not fence.delete()[0]:
            raise lease_lost(item)
        if item.attempt > 1 and last_error:
            attempt = item.attempt - 1
            failure = {
                **last_error,
                "message": f"{last_error.get('message', '')} (no retry: schedule_to_close_timeout of {limit}s reached)",
            }
        else:
            attempt = item.attempt
            failure = {
                "type": "django_durable.exceptions.TimeoutError",
                "message": f"activity {item.name!r} reached its schedule_to_close_timeout of {limit}s "
                f"before attempt {item.attempt} started",
                "mro": ["TimeoutError"],
            }
        _deliver_activity_failure(item, instance, failure, attempt, now)
    return True


def _fail_attempt(
    item: Claim,
    fence: QuerySet[WorkItem],
    instance: LockedRun,
    failure: dict[str, Any],
    *,
    retryable: bool,
    now: datetime.datetime,
) -> datetime.datetime | None:
    options = activity_options(item.payload)
    retry = options.get("retry")
    policy = RetryPolicy.from_json(retry) if retry else RetryPolicy()
    retry_at = None
    if retryable and policy.allows_retry(item.attempt, failure.get("type", ""), tuple(failure.get("mro", ()))):
        retry_at = now + _seconds(policy.delay(item.attempt))
        limit = options.get("schedule_to_close_timeout")
        if limit is not None and retry_at >= item.created_at + _seconds(limit):
            retry_at = None
            failure = {
                **failure,
                "message": f"{failure.get('message', '')} (no retry: schedule_to_close_timeout of {limit}s reached)",
            }
    if retry_at is not None:
        applied = fence.update(
            lease_owner=None,
            lease_expires_at=None,
            due_at=retry_at,
            last_error=failure,
            parked_at=_parked_at(instance, now),
            dispatched_at=None,
        )
    else:
        applied, _ = fence.delete()
    if not applied:
        raise lease_lost(item)
    if retry_at is not None:
        state_change(
            "retry_scheduled",
            workflow_id=item.workflow_id,
            run_id=item.run_id,
            name=item.name,
            task_id=item.task_id,
            item=item.id,
            attempt=item.attempt,
            retry_at=retry_at,
            error_type=failure.get("type"),
            error=failure.get("message"),
        )
        return retry_at
    _deliver_activity_failure(item, instance, failure, item.attempt, now)
    return None


def _deliver_activity_failure(
    item: Claim, instance: LockedRun, failure: dict[str, Any], attempt: int, now: datetime.datetime
) -> None:
    """The activity failed for good (its ``attempt`` was the last): tell the run."""
    event = Event(
        kind=EventKind.ACTIVITY_FAILED,
        timestamp=now,
        name=item.name,
        task_id=item.task_id,
        payload={"error": failure, "attempt": attempt},
    )
    _deliver(item.instance_id, instance, event)
