"""Every database read and write of the engine.

Locking order, everywhere: a run's ``WorkflowInstance`` row first (it is the
per-run mutex for history, inbox and work items), then work items. Claims lock
only work items, with ``SKIP LOCKED``, in a transaction of their own that
touches no instance. Every write that finishes claimed work is fenced: it only
applies while the item still carries the claimer's lease and attempt.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Greatest

from .engine.events import Event, EventKind
from .exceptions import ActivityNotPending, WorkflowAlreadyExists, WorkflowNotFound, WorkflowNotOpen
from .models import (
    OPEN_STATUSES,
    IdReusePolicy,
    HistoryEvent,
    InboxEvent,
    WorkflowInstance,
    WorkflowStatus,
    WorkItem,
    WorkItemKind,
)
from .retry import RetryPolicy
from .tokens import TaskToken

logger = logging.getLogger("django_durable.store")

EVENT_FIELDS = ("seq", "kind", "name", "task_id", "payload", "timestamp")
CLAIM_FIELDS = (
    "id", "kind", "instance_id", "queue", "name", "task_id", "payload", "attempt", "claimed_at",
    "lease_expires_at", "created_at", "failures", "heartbeat_details", "heartbeat_at",
)


def _claim_rows(items: Any, *extra: str) -> Any:
    """``values()`` for building ``Claim``s, with the run's ids joined in (no query per item)."""
    return items.values(*CLAIM_FIELDS, *extra, workflow_id=F("instance__workflow_id"), run_id=F("instance__run_id"))


class LeaseLost(Exception):
    """The claimed item is no longer ours: nothing was written."""


@dataclasses.dataclass
class Claim:
    id: int
    kind: str
    instance_id: int
    queue: str
    name: str
    task_id: int | None
    payload: dict[str, Any]
    attempt: int
    owner: str
    claimed_at: datetime.datetime
    lease_expires_at: datetime.datetime
    created_at: datetime.datetime
    failures: int = 0
    heartbeat_details: Any = None
    heartbeat_at: datetime.datetime | None = None
    workflow_id: str = ""
    run_id: str = ""


@dataclasses.dataclass
class WorkflowTaskInput:
    workflow_id: str
    run_id: str
    workflow_name: str
    queue: str
    status: str
    history: list[Event]
    inbox: list[Event]
    inbox_ids: list[int]


def db_now() -> datetime.datetime:
    """The database's clock: leases, due times and retries are compared with it."""
    if connection.vendor == "sqlite":
        # SQLite runs in this process, on this machine's clock.
        return datetime.datetime.now(datetime.timezone.utc)
    with connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_TIMESTAMP")
        (now,) = cursor.fetchone()
    return now


def _lock_instance(instance_id: int, *, skip_locked: bool = False) -> dict[str, Any] | None:
    skip_locked = skip_locked and connection.features.has_select_for_update_skip_locked
    return (
        WorkflowInstance.objects.select_for_update(skip_locked=skip_locked)
        .filter(pk=instance_id)
        .values("status", "history_length", "queue", "workflow_id", "run_id", "workflow_name")
        .first()
    )


def _seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


# -- starting and reading runs ----------------------------------------------------


def create_instance(
    *,
    workflow_name: str,
    workflow_id: str,
    queue: str,
    args: list[Any],
    kwargs: dict[str, Any],
    start_at: datetime.datetime | None,
    id_reuse_policy: IdReusePolicy = IdReusePolicy.ALLOW_DUPLICATE,
) -> WorkflowInstance:
    """A new run: the instance, its ``ExecutionStarted`` event and its first workflow task."""
    try:
        with transaction.atomic():
            now = db_now()
            _apply_id_reuse_policy(workflow_id, IdReusePolicy(id_reuse_policy), now)
            instance = WorkflowInstance.objects.create(
                workflow_id=workflow_id,
                workflow_name=workflow_name,
                queue=queue,
                input={"args": args, "kwargs": kwargs},
                history_length=1,
                scheduled_start_at=start_at,
            )
            HistoryEvent.objects.create(
                instance=instance,
                seq=1,
                kind=EventKind.EXECUTION_STARTED,
                name=workflow_name,
                payload={"args": args, "kwargs": kwargs, "queue": queue},
                timestamp=now,
            )
            WorkItem.objects.create(
                kind=WorkItemKind.WORKFLOW,
                instance=instance,
                queue=queue,
                name=workflow_name,
                due_at=max(start_at, now) if start_at else now,
                created_at=now,
            )
    except IntegrityError:
        # Another transaction started a run with this id between our check and insert.
        raise WorkflowAlreadyExists(f"Workflow {workflow_id!r} is already running.") from None
    return instance


def _apply_id_reuse_policy(workflow_id: str, policy: IdReusePolicy, now: datetime.datetime) -> None:
    latest = WorkflowInstance.objects.filter(workflow_id=workflow_id).order_by("-id").values("pk", "status").first()
    if latest is None:
        return
    if latest["status"] in OPEN_STATUSES:
        if policy != IdReusePolicy.TERMINATE_IF_RUNNING:
            raise WorkflowAlreadyExists(f"Workflow {workflow_id!r} is already running.")
        instance = _lock_instance(latest["pk"])
        if instance is not None and instance["status"] in OPEN_STATUSES:
            _terminate_locked(latest["pk"], instance, "terminated by a new run with the same id", now)
    elif policy == IdReusePolicy.REJECT_DUPLICATE or (
        policy == IdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY and latest["status"] == WorkflowStatus.COMPLETED
    ):
        raise WorkflowAlreadyExists(
            f"Workflow id {workflow_id!r} was used before ({latest['status']}) and the id reuse policy "
            f"{policy.value!r} does not allow another run."
        )


def get_instance(workflow_id: str, run_id: str | None = None) -> WorkflowInstance:
    runs = WorkflowInstance.objects.filter(workflow_id=workflow_id)
    if run_id is not None:
        runs = runs.filter(run_id=run_id)
    # Runs of one id are strictly sequential (one open run at a time): the newest has the highest id.
    instance = runs.order_by("-id").first()
    if instance is None:
        raise WorkflowNotFound(f"No workflow with id {workflow_id!r}" + (f" and run {run_id}." if run_id else "."))
    return instance


def get_history(instance_id: int) -> list[Event]:
    return [Event(**row) for row in HistoryEvent.objects.filter(instance_id=instance_id).values(*EVENT_FIELDS)]


def pending_work(instance_id: int) -> list[dict[str, Any]]:
    return list(
        WorkItem.objects.filter(instance_id=instance_id).values(
            "kind", "name", "task_id", "queue", "due_at", "attempt", "lease_owner",
            "lease_expires_at", "failures", "parked_at", "last_error",
        )
    )


# -- claiming ---------------------------------------------------------------------


def claim(*, owner: str, kind: str, queues: Sequence[str], limit: int, lease_seconds: float) -> list[Claim]:
    """Claim up to ``limit`` due items of ``kind`` in one short transaction."""
    if limit <= 0:
        return []
    with transaction.atomic():
        now = db_now()
        candidates = WorkItem.objects.filter(
            kind=kind,
            queue__in=list(queues),
            lease_owner__isnull=True,
            parked_at__isnull=True,
            due_at__lte=now,
        ).order_by("due_at")
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        ids = list(candidates.values_list("id", flat=True)[:limit])
        if not ids:
            return []
        # On SQLite there are no row locks: the lease condition makes this a
        # compare-and-set, and IMMEDIATE transactions serialise claimers.
        WorkItem.objects.filter(id__in=ids, lease_owner__isnull=True).update(
            lease_owner=owner,
            lease_expires_at=now + _seconds(lease_seconds),
            claimed_at=now,
            attempt=F("attempt") + 1,
            heartbeat_at=None,
            awaiting_completion=False,
        )
        rows = _claim_rows(WorkItem.objects.filter(id__in=ids, lease_owner=owner, claimed_at=now))
        claims = [Claim(owner=owner, **{**row, "run_id": str(row["run_id"])}) for row in rows]
        for item in claims:
            deadline = attempt_deadline(item, None)
            if deadline is not None and deadline < item.lease_expires_at:
                WorkItem.objects.filter(id=item.id).update(lease_expires_at=deadline)
                item.lease_expires_at = deadline
        return claims


def renew_leases(
    *, owner: str, leases: Sequence[tuple[int, int, datetime.datetime | None]], lease_seconds: float
) -> set[int]:
    """Extend the leases of ``(item id, attempt, cap)`` still ours; a cap (the attempt's
    timeout) bounds the extension. Returns the ids whose lease was lost."""
    if not leases:
        return set()
    wanted = {(item_id, attempt): cap for item_id, attempt, cap in leases}
    with transaction.atomic():
        now = db_now()
        candidates = WorkItem.objects.filter(
            id__in=[item_id for item_id, _, _ in leases],
            lease_owner=owner,
            awaiting_completion=False,
            lease_expires_at__gt=now,  # an expired lease is the reaper's now
        ).order_by("id")
        if connection.features.has_select_for_update_skip_locked:
            # Rows locked by a transaction finishing them are skipped, not waited on:
            # waiting could deadlock with a run's close, which locks its items in turn.
            candidates = candidates.select_for_update(skip_locked=True)
        ours = [key for key in candidates.values_list("id", "attempt") if key in wanted]
        by_expiry: dict[datetime.datetime, list[int]] = {}
        for key in ours:
            cap = wanted[key]
            expiry = now + _seconds(lease_seconds)
            by_expiry.setdefault(min(expiry, cap) if cap else expiry, []).append(key[0])
        for expiry, ids in by_expiry.items():
            # Greatest: a heartbeat may have pushed the lease further meanwhile.
            WorkItem.objects.filter(id__in=ids).update(lease_expires_at=Greatest("lease_expires_at", Value(expiry)))
        missing = {item_id for item_id, _ in set(wanted) - set(ours)}
        if not missing:
            return set()
        # Not renewed and not simply finished or busy being finished: lost.
        lost = WorkItem.objects.filter(id__in=missing).exclude(
            lease_owner=owner, lease_expires_at__gt=now, awaiting_completion=False
        )
        return set(lost.values_list("id", flat=True))


def _fence(item: Claim) -> Any:
    return WorkItem.objects.filter(id=item.id, lease_owner=item.owner, attempt=item.attempt)


def _lease_lost(item: Claim) -> LeaseLost:
    return LeaseLost(f"{item.kind} {item.name!r} attempt {item.attempt} is no longer leased by {item.owner}")


def discard(item: Claim) -> None:
    """Drop a claimed item that has nothing left to do (its run is gone or closed)."""
    _fence(item).delete()


# -- workflow tasks -------------------------------------------------------------


def load_workflow_task(item: Claim) -> WorkflowTaskInput | None:
    instance = (
        WorkflowInstance.objects.filter(pk=item.instance_id)
        .values("workflow_id", "run_id", "workflow_name", "queue", "status")
        .first()
    )
    if instance is None:
        return None
    inbox_rows = list(
        InboxEvent.objects.filter(instance_id=item.instance_id).values(
            "id", "kind", "name", "task_id", "payload", "timestamp"
        )
    )
    inbox_ids = [row.pop("id") for row in inbox_rows]
    return WorkflowTaskInput(
        workflow_id=instance["workflow_id"],
        run_id=str(instance["run_id"]),
        workflow_name=instance["workflow_name"],
        queue=instance["queue"],
        status=instance["status"],
        history=get_history(item.instance_id),
        inbox=[Event(**row) for row in inbox_rows],
        inbox_ids=inbox_ids,
    )


def complete_workflow_task(
    item: Claim,
    *,
    new_events: Sequence[Event],
    inbox_ids: Sequence[int],
    status: str,
    vars: dict[str, Any],
    result: Any = None,
    error: dict[str, Any] | None = None,
    waiting_on: str | None = None,
) -> None:
    """Commit one workflow task's decisions atomically, or raise ``LeaseLost`` and write nothing."""
    with transaction.atomic():
        instance = _lock_instance(item.instance_id)
        if instance is None:
            raise LeaseLost(f"run of work item {item.id} no longer exists")
        now = db_now()
        closing = status in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED)
        more_inbox = (
            not closing
            and InboxEvent.objects.filter(instance_id=item.instance_id).exclude(id__in=inbox_ids).exists()
        )
        if more_inbox:
            # Events arrived while this task ran: leave the task claimable at once.
            fenced = _fence(item).update(
                lease_owner=None, lease_expires_at=None, due_at=now, failures=0, last_error=None
            )
        else:
            fenced, _ = _fence(item).delete()
        if not fenced:
            raise _lease_lost(item)

        first_seq = instance["history_length"] + 1
        HistoryEvent.objects.bulk_create(
            HistoryEvent(
                instance_id=item.instance_id,
                seq=first_seq + offset,
                kind=event.kind,
                name=event.name,
                task_id=event.task_id,
                payload=event.payload,
                timestamp=event.timestamp,
            )
            for offset, event in enumerate(new_events)
        )
        if inbox_ids:
            InboxEvent.objects.filter(id__in=inbox_ids).delete()

        updates: dict[str, Any] = {
            "history_length": first_seq + len(new_events) - 1,
            "vars": vars,
            "status": status,
            "waiting_on": (waiting_on or "")[:500],
            "task_error": None,
            "updated_at": now,
        }
        if instance["status"] == WorkflowStatus.PENDING:
            updates["started_at"] = new_events[0].timestamp
        if closing:
            updates.update(result=result, error=error, closed_at=now)
            # Outstanding activities and timers die with the run; late results find no item.
            WorkItem.objects.filter(instance_id=item.instance_id).delete()
            InboxEvent.objects.filter(instance_id=item.instance_id).delete()
        else:
            WorkItem.objects.bulk_create(_work_items_for(item.instance_id, instance["queue"], new_events, now))
        WorkflowInstance.objects.filter(pk=item.instance_id).update(**updates)


def _work_items_for(instance_id: int, workflow_queue: str, events: Iterable[Event], now: datetime.datetime) -> list[WorkItem]:
    items = []
    for event in events:
        if event.kind == EventKind.ACTIVITY_SCHEDULED:
            options = event.payload.get("options") or {}
            items.append(
                WorkItem(
                    kind=WorkItemKind.ACTIVITY,
                    instance_id=instance_id,
                    queue=options.get("queue") or workflow_queue,
                    name=event.name,
                    task_id=event.task_id,
                    payload={"args": event.payload["args"], "kwargs": event.payload["kwargs"], "options": options},
                    due_at=now,
                    created_at=now,
                )
            )
        elif event.kind == EventKind.TIMER_STARTED:
            items.append(
                WorkItem(
                    kind=WorkItemKind.TIMER,
                    instance_id=instance_id,
                    queue=workflow_queue,
                    task_id=event.task_id,
                    due_at=datetime.datetime.fromisoformat(event.payload["fire_at"]),
                    created_at=now,
                )
            )
    return items


def fail_workflow_task(
    item: Claim,
    error: dict[str, Any],
    *,
    max_failures: int,
    backoff: float,
    backoff_max: float,
    expired_only: bool = False,
) -> bool:
    """Record an engine-level failure; back off, or park after ``max_failures``. Returns parked."""
    with transaction.atomic():
        if _lock_instance(item.instance_id) is None:
            raise LeaseLost(f"run of work item {item.id} no longer exists")
        now = db_now()
        failures = item.failures + 1
        parked = failures >= max_failures
        delay = min(backoff * 2 ** (failures - 1), backoff_max)
        fence = _fence(item).filter(lease_expires_at__lte=now) if expired_only else _fence(item)
        fenced = fence.update(
            lease_owner=None,
            lease_expires_at=None,
            failures=failures,
            last_error=error,
            due_at=now + _seconds(delay),
            parked_at=now if parked else None,
        )
        if not fenced:
            raise _lease_lost(item)
        WorkflowInstance.objects.filter(pk=item.instance_id).update(task_error=error, updated_at=now)
    return parked


def unpark_workflow_task(instance_id: int) -> bool:
    """Make a parked (or backing-off) workflow task claimable now, e.g. after a code fix."""
    with transaction.atomic():
        _lock_instance(instance_id)
        return bool(
            WorkItem.objects.filter(instance_id=instance_id, kind=WorkItemKind.WORKFLOW, lease_owner__isnull=True)
            .update(parked_at=None, failures=0, due_at=db_now())
        )


# -- activities and timers --------------------------------------------------------


def _deliver(instance_id: int, instance: dict[str, Any], event: Event) -> None:
    """Put ``event`` in the run's inbox and make sure a workflow task will read it.

    Must run under the instance's lock. An existing workflow task is left as it
    is: due, running (its commit sees the new event), backing off or parked.
    """
    InboxEvent.objects.create(
        instance_id=instance_id,
        kind=event.kind,
        name=event.name,
        task_id=event.task_id,
        payload=event.payload,
        timestamp=event.timestamp,
    )
    if not WorkItem.objects.filter(instance_id=instance_id, kind=WorkItemKind.WORKFLOW).exists():
        WorkItem.objects.create(
            kind=WorkItemKind.WORKFLOW,
            instance_id=instance_id,
            queue=instance["queue"],
            name=instance["workflow_name"],
            due_at=event.timestamp,
            created_at=event.timestamp,
        )


def _attempt_fence(item: Claim, now: datetime.datetime, *, live_only: bool) -> Any:
    """The item while it still is this attempt; with ``live_only`` also not timed out
    (a lease that has expired but is not reaped yet is no longer pending)."""
    fence = _fence(item)
    if live_only:
        fence = fence.filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__gt=now))
    return fence


def attempt_deadline(item: Claim, heartbeat_at: datetime.datetime | None) -> datetime.datetime | None:
    """When this attempt times out: its start-to-close or heartbeat timeout, or None."""
    options = item.payload.get("options") or {}
    deadlines = []
    if options.get("start_to_close_timeout") is not None:
        deadlines.append(item.claimed_at + _seconds(options["start_to_close_timeout"]))
    if options.get("heartbeat_timeout") is not None:
        deadlines.append((heartbeat_at or item.claimed_at) + _seconds(options["heartbeat_timeout"]))
    return min(deadlines, default=None)


def complete_activity(item: Claim, result: Any, *, live_only: bool = False) -> None:
    with transaction.atomic():
        instance = _lock_instance(item.instance_id)
        now = db_now()
        deleted, _ = _attempt_fence(item, now, live_only=live_only).delete() if instance else (0, None)
        if not deleted:
            raise _lease_lost(item)
        _deliver(
            item.instance_id,
            instance,
            Event(
                kind=EventKind.ACTIVITY_COMPLETED,
                timestamp=now,
                name=item.name,
                task_id=item.task_id,
                payload={"result": result, "attempt": item.attempt},
            ),
        )


def await_completion(item: Claim, heartbeat_at: datetime.datetime | None) -> None:
    """The attempt's function raised ResultPending: it is finished later, by token.

    The worker stops renewing its lease; from now on only the attempt's own
    timeouts (start-to-close, heartbeat) bound it.
    """
    updated = _fence(item).update(awaiting_completion=True, lease_expires_at=attempt_deadline(item, heartbeat_at))
    if not updated:
        raise _lease_lost(item)


def record_heartbeat(
    item: Claim, details: Any, *, lease_seconds: float, live_only: bool = False
) -> datetime.datetime:
    """Keep ``details`` for the next attempt and push out the attempt's heartbeat deadline."""
    with transaction.atomic():
        now = db_now()
        fence = _attempt_fence(item, now, live_only=live_only)
        # A heartbeat without details keeps what an earlier one reported.
        updates = {"heartbeat_at": now} if details is None else {"heartbeat_details": details, "heartbeat_at": now}
        if not fence.update(**updates):
            raise _lease_lost(item)
        deadline = attempt_deadline(item, now)
        fence.filter(awaiting_completion=True).update(lease_expires_at=deadline)
        renewed = now + _seconds(lease_seconds)
        fence.filter(awaiting_completion=False).update(
            lease_expires_at=min(renewed, deadline) if deadline else renewed
        )
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


def terminate(workflow_id: str, run_id: str | None, reason: str) -> None:
    """Close an open run at once: no workflow code runs; outstanding work is dropped."""
    instance_id = get_instance(workflow_id, run_id).pk
    with transaction.atomic():
        instance = _lock_instance(instance_id)
        if instance is None or instance["status"] not in OPEN_STATUSES:
            raise WorkflowNotOpen(f"Workflow {workflow_id!r} is not running (it is {instance and instance['status']}).")
        _terminate_locked(instance_id, instance, reason, db_now())


def _terminate_locked(instance_id: int, instance: dict[str, Any], reason: str, now: datetime.datetime) -> None:
    error = {"type": "django_durable.Terminated", "message": reason}
    seq = instance["history_length"] + 1
    HistoryEvent.objects.create(
        instance_id=instance_id, seq=seq, kind=EventKind.WORKFLOW_TERMINATED,
        payload={"reason": reason}, timestamp=now,
    )
    WorkItem.objects.filter(instance_id=instance_id).delete()
    InboxEvent.objects.filter(instance_id=instance_id).delete()
    WorkflowInstance.objects.filter(pk=instance_id).update(
        status=WorkflowStatus.TERMINATED, error=error, history_length=seq, closed_at=now,
        updated_at=now, waiting_on="",
    )


def fail_activity(
    item: Claim, failure: dict[str, Any], *, retryable: bool = True, live_only: bool = False
) -> datetime.datetime | None:
    """Record a failed attempt: schedule the next one by the retry policy, or fail the
    activity for good. Returns when the retry is due, or None when it gave up."""
    with transaction.atomic():
        instance = _lock_instance(item.instance_id)
        if instance is None:
            raise _lease_lost(item)
        now = db_now()
        fence = _attempt_fence(item, now, live_only=live_only)
        return _fail_attempt(item, fence, instance, failure, retryable=retryable, now=now)


def _fail_attempt(
    item: Claim,
    fence: Any,
    instance: dict[str, Any],
    failure: dict[str, Any],
    *,
    retryable: bool,
    now: datetime.datetime,
) -> datetime.datetime | None:
    options = item.payload.get("options") or {}
    policy = RetryPolicy.from_json(options["retry"]) if options.get("retry") else RetryPolicy()
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
        applied = fence.update(lease_owner=None, lease_expires_at=None, due_at=retry_at, last_error=failure)
    else:
        applied, _ = fence.delete()
    if not applied:
        raise _lease_lost(item)
    if retry_at is not None:
        return retry_at
    _deliver(
        item.instance_id,
        instance,
        Event(
            kind=EventKind.ACTIVITY_FAILED,
            timestamp=now,
            name=item.name,
            task_id=item.task_id,
            payload={"error": failure, "attempt": item.attempt},
        ),
    )
    return None


def fire_due_timers(*, queues: Sequence[str], limit: int) -> int:
    """Deliver ``TimerFired`` for due timers; each in its own transaction under its run's lock."""
    now = db_now()
    due = list(
        WorkItem.objects.filter(
            kind=WorkItemKind.TIMER,
            queue__in=list(queues),
            lease_owner__isnull=True,
            parked_at__isnull=True,
            due_at__lte=now,
        ).values_list("id", "instance_id", "task_id", "due_at")[:limit]
    )
    fired = 0
    for item_id, instance_id, task_id, due_at in due:
        with transaction.atomic():
            # A run locked by someone else is skipped: they may be firing this very timer.
            instance = _lock_instance(instance_id, skip_locked=True)
            deleted, _ = WorkItem.objects.filter(id=item_id).delete() if instance else (0, None)
            if not deleted:
                continue  # fired by another worker, the run is busy or closed: next round
            _deliver(
                instance_id,
                instance,
                Event(
                    kind=EventKind.TIMER_FIRED,
                    timestamp=now,
                    task_id=task_id,
                    payload={"fire_at": due_at.isoformat()},
                ),
            )
            fired += 1
    return fired


def reap_expired_leases(*, limit: int, workflow_backoff: float, workflow_backoff_max: float, max_failures: int) -> int:
    """Take back work whose claimer stopped renewing its lease (died, hung, or timed out).

    An expired activity attempt counts as failed (a timeout) and goes through the
    retry policy; an expired workflow task counts as an engine-level failure.
    """
    now = db_now()
    expired = list(
        _claim_rows(WorkItem.objects.filter(lease_owner__isnull=False, lease_expires_at__lte=now), "lease_owner")[
            :limit
        ]
    )
    reaped = 0
    for row in expired:
        item = Claim(owner=row.pop("lease_owner"), **{**row, "run_id": str(row["run_id"])})
        try:
            if item.kind == WorkItemKind.ACTIVITY:
                _reap_activity(item)
            else:
                fail_workflow_task(
                    item,
                    {"type": "django_durable.LeaseExpired", "message": f"lease of {item.owner} expired"},
                    max_failures=max_failures,
                    backoff=workflow_backoff,
                    backoff_max=workflow_backoff_max,
                    expired_only=True,
                )
        except LeaseLost:
            continue  # renewed, completed or reaped by someone else meanwhile
        logger.warning(
            "Reaped %s %s of workflow run %s (attempt %s): lease of %s expired",
            item.kind, item.name or "", item.instance_id, item.attempt, item.owner,
        )
        reaped += 1
    return reaped


def _reap_activity(item: Claim) -> None:
    with transaction.atomic():
        instance = _lock_instance(item.instance_id)
        now = db_now()
        if instance is None:
            raise LeaseLost(f"run of work item {item.id} no longer exists")
        options = item.payload.get("options") or {}
        timeout = options.get("start_to_close_timeout")
        heartbeat_timeout = options.get("heartbeat_timeout")
        if timeout is not None and item.lease_expires_at >= item.claimed_at + _seconds(timeout):
            message = f"activity {item.name!r} attempt {item.attempt} exceeded its start_to_close_timeout of {timeout}s"
        elif heartbeat_timeout is not None and item.lease_expires_at >= (
            item.heartbeat_at or item.claimed_at
        ) + _seconds(heartbeat_timeout):
            message = (
                f"activity {item.name!r} attempt {item.attempt} missed its heartbeat_timeout of {heartbeat_timeout}s"
            )
        else:
            message = f"activity {item.name!r} attempt {item.attempt} was lost: {item.owner} stopped renewing its lease"
        failure = {"type": "django_durable.exceptions.TimeoutError", "message": message, "mro": ["TimeoutError"]}
        _fail_attempt(item, _fence(item).filter(lease_expires_at__lte=now), instance, failure, retryable=True, now=now)


def seconds_until_due(*, queues: Sequence[str]) -> float | None:
    """Seconds until the next item on ``queues`` is due (0 if one is due now, or if a
    claimer's lease has expired and the item awaits reaping), or None if there is none."""
    now = db_now()
    on_queues = WorkItem.objects.filter(queue__in=list(queues), parked_at__isnull=True)
    if on_queues.filter(lease_owner__isnull=False, lease_expires_at__lte=now).exists():
        return 0.0
    next_due = (
        on_queues.filter(lease_owner__isnull=True).order_by("due_at").values_list("due_at", flat=True).first()
    )
    if next_due is None:
        return None
    return max(0.0, (next_due - now).total_seconds())

