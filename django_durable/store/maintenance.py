"""What happens on its own as time passes: timers fire, expired leases are reaped, and
when that next is due."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

from django.db import connection
from django.db.models import Min, Q

from ..engine.events import Event, EventKind
from ..faults import crash_point
from ..models import WorkItem, WorkItemKind
from ..statelog import state_change
from .activities import _fail_attempt
from .claims import _claim_rows, _claimable, _fence
from .clock import _seconds, db_now
from .dialects import dialect_for
from .records import Claim, LeaseLost, activity_options
from .runs import _deliver, _lock_instance
from .schedule_ticks import next_fire_at
from .transactions import write_transaction
from .workflow_tasks import fail_workflow_task

logger = logging.getLogger("django_durable.store")


def fire_due_timers(*, queues: Sequence[str], limit: int) -> int:
    """Deliver ``TimerFired`` for due timers; each in its own transaction under its run's lock."""
    due = dialect_for(connection).due_timers(kind=WorkItemKind.TIMER.value, queues=queues, limit=limit)
    if due is None:
        due = list(
            _claimable(db_now(), kind=WorkItemKind.TIMER, queue__in=list(queues)).values_list(
                "id", "instance_id", "task_id", "due_at"
            )[:limit]
        )
    fired = 0
    for item_id, instance_id, task_id, due_at in due:
        with write_transaction():
            # A run locked by someone else is skipped: they may be firing this very timer.
            instance = _lock_instance(instance_id, skip_locked=True)
            now = (instance.now if instance else None) or db_now()
            deleted, _ = WorkItem.objects.filter(id=item_id).delete() if instance else (0, None)
            if instance is None or not deleted:
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
            crash_point("before_timer_commit")
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
            item.kind,
            item.name or "",
            item.instance_id,
            item.attempt,
            item.owner,
        )
        state_change(
            "lease_expired",
            workflow_id=item.workflow_id,
            run_id=item.run_id,
            kind=item.kind,
            name=item.name or None,
            item=item.id,
            attempt=item.attempt,
            owner=item.owner,
        )
        reaped += 1
    return reaped


def _reap_activity(item: Claim) -> None:
    with write_transaction():
        # A run locked by someone else (a worker frozen mid-commit) is skipped, not waited
        # for: the reaper runs in every worker's loop and must not stall it.
        instance = _lock_instance(item.instance_id, skip_locked=True)
        now = db_now()
        if instance is None:
            raise LeaseLost(f"run of work item {item.id} no longer exists")
        options = activity_options(item.payload)
        timeout = options.get("start_to_close_timeout")
        heartbeat_timeout = options.get("heartbeat_timeout")
        total_timeout = options.get("schedule_to_close_timeout")
        if total_timeout is not None and item.lease_expires_at >= item.created_at + _seconds(total_timeout):
            message = (
                f"activity {item.name!r} attempt {item.attempt} exceeded its schedule_to_close_timeout "
                f"of {total_timeout}s"
            )
        elif timeout is not None and item.lease_expires_at >= item.claimed_at + _seconds(timeout):
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


def next_wakeup(*, queues: Sequence[str] | None = None) -> datetime.datetime | None:
    """When something next happens on its own on ``queues`` (all if None): an item
    falls due, a lease expires or a schedule's tick is due (any worker fires any
    schedule). Parked work waits for a person, not for time."""
    items = WorkItem.objects.filter(parked_at__isnull=True)
    if queues is not None:
        items = items.filter(queue__in=list(queues))
    times = items.aggregate(
        due=Min("due_at", filter=Q(lease_owner__isnull=True)),
        expiry=Min("lease_expires_at", filter=Q(lease_owner__isnull=False)),
    )
    times["schedule"] = next_fire_at()
    return min((value for value in times.values() if value is not None), default=None)


def seconds_until_due(*, queues: Sequence[str]) -> float | None:
    """Seconds until the next item on ``queues`` is due or a lease expires (0 if one
    is due now or awaits reaping), or None if there is nothing."""
    wakeup = next_wakeup(queues=queues)
    if wakeup is None:
        return None
    return max(0.0, (wakeup - db_now()).total_seconds())


def queues_with_work() -> list[str]:
    return list(WorkItem.objects.order_by().values_list("queue", flat=True).distinct())
