"""Claiming work items (skip-locked, or compare-and-set on SQLite), dispatching them to a
remote executor, renewing their leases, and the fence every finishing write goes through."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connection
from django.db.models import F, Q, QuerySet, Value
from django.db.models.functions import Greatest

from ..models import WorkItem, WorkItemKind
from ..statelog import state_change
from . import queue_limits
from .clock import TransactionNow, _seconds, db_now
from .dialects import dialect_for
from .records import CLAIM_FIELDS, Claim, LeaseLost, LeaseRenewal, activity_options
from .transactions import write_transaction

# Seconds an attempt a remote worker could not lease for lack of a slot waits before it is sent again.
REFUSED_BACKOFF = 1.0


def _claim_rows(items: QuerySet[WorkItem], *extra: str) -> QuerySet[WorkItem, dict[str, Any]]:
    """``values()`` for building ``Claim``s, with the run's ids joined in (no query per item)."""
    return items.values(*CLAIM_FIELDS, *extra, workflow_id=F("instance__workflow_id"), run_id=F("instance__run_id"))


def _claimable(now: datetime.datetime | TransactionNow, **filters: Any) -> QuerySet[WorkItem]:
    """Work items anyone may claim now: unleased, unparked and due."""
    return WorkItem.objects.filter(lease_owner__isnull=True, parked_at__isnull=True, due_at__lte=now, **filters)


def claim(*, owner: str, kind: str, queues: Sequence[str], limit: int, lease_seconds: float) -> list[Claim]:
    """Claim up to ``limit`` due items of ``kind`` in one short transaction."""
    if limit <= 0:
        return []
    if kind == WorkItemKind.ACTIVITY:
        queues, limited = queue_limits.split(queues)
        if limited:
            return _claim_limited(owner=owner, queues=queues, limited=limited, limit=limit, lease_seconds=lease_seconds)
    if not queues:
        return []
    claims = dialect_for(connection).claim(
        owner=owner, kind=kind, queues=queues, limit=limit, lease_seconds=lease_seconds
    )
    if claims is not None:
        _cap_leases(claims)
    else:
        with write_transaction():
            now = db_now()
            due = dialect_for(connection).lock_first_due(_claimable(now, kind=kind), queues, limit)
            ids = [item_id for item_id, _ in due]
            claims = _lease_items(ids, owner=owner, now=now, lease_seconds=lease_seconds) if ids else []
    _log_claims(claims)
    return claims


def _claim_limited(
    *, owner: str, queues: Sequence[str], limited: Sequence[str], limit: int, lease_seconds: float
) -> list[Claim]:
    """``claim()`` of activities when some of ``queues`` are limited: each limited one first,
    in a transaction that holds its queue's lock (their limits bound what they take, and a
    busy unlimited queue would otherwise leave them no room), then the unlimited ones."""
    claims: list[Claim] = []
    for queue in limited:
        if len(claims) >= limit:
            break
        queue_limits.ensure_state(queue)
        with write_transaction():
            gate = queue_limits.lock(queue)
            if gate is None:
                continue
            now = queue_limits.lease_clock(gate)
            candidates = _claimable(now, kind=WorkItemKind.ACTIVITY, queue=queue)
            ids = gate.pick(candidates, limit - len(claims), now=now, worker=owner)
            leased = _lease_items(ids, owner=owner, now=now, lease_seconds=lease_seconds) if ids else []
            gate.started(len(leased), now)
        _log_claims(leased)
        claims += leased
    return claims + claim(
        owner=owner, kind=WorkItemKind.ACTIVITY, queues=queues, limit=limit - len(claims), lease_seconds=lease_seconds
    )


def _log_claims(claims: Iterable[Claim], **fields: Any) -> None:
    for item in claims:
        state_change(
            "claimed",
            workflow_id=item.workflow_id,
            run_id=item.run_id,
            kind=item.kind,
            name=item.name or None,
            task_id=item.task_id,
            item=item.id,
            attempt=item.attempt,
            owner=item.owner,
            lease_expires_at=item.lease_expires_at,
            **fields,
        )


def _cap_leases(claims: list[Claim]) -> None:
    """An attempt's lease never outlives its timeout (start-to-close, heartbeat, schedule-to-close)."""
    for item in claims:
        deadline = attempt_deadline(item, None)
        if deadline is not None and deadline < item.lease_expires_at:
            WorkItem.objects.filter(id=item.id).update(lease_expires_at=deadline)
            item.lease_expires_at = deadline


def _lease_items(ids: list[int], *, owner: str, now: datetime.datetime, lease_seconds: float) -> list[Claim]:
    """Lease the (claimable) items ``ids`` to ``owner``, inside the caller's transaction."""
    # On SQLite there are no row locks: the lease condition makes this a
    # compare-and-set, and IMMEDIATE transactions serialise claimers.
    WorkItem.objects.filter(id__in=ids, lease_owner__isnull=True, parked_at__isnull=True, due_at__lte=now).update(
        lease_owner=owner,
        lease_expires_at=now + _seconds(lease_seconds),
        claimed_at=now,
        attempt=F("attempt") + 1,
        heartbeat_at=None,
        awaiting_completion=False,
    )
    rows = _claim_rows(WorkItem.objects.filter(id__in=ids, lease_owner=owner, claimed_at=now))
    claims = [Claim(owner=owner, **{**row, "run_id": str(row["run_id"])}) for row in rows]
    _cap_leases(claims)
    return claims


def dispatch(*, kind: str, queues: Sequence[str], limit: int, dispatch_timeout: float) -> list[tuple[int, str]]:
    """Mark up to ``limit`` claimable items of ``kind`` as sent to a remote executor, and
    return their ``(id, queue)``: those never sent since they last became claimable, or
    sent more than ``dispatch_timeout`` seconds ago and still unclaimed (the message was lost)."""
    if limit <= 0:
        return []
    limited: list[str] = []
    if kind == WorkItemKind.ACTIVITY:
        queues, limited = queue_limits.split(queues)
    rows: list[tuple[int, str]] = []
    for queue in limited:  # first, as in claim(): their limits bound what they take
        if len(rows) >= limit:
            break
        rows += _dispatch_limited(queue, limit - len(rows), dispatch_timeout)
    if queues and len(rows) < limit:
        with write_transaction():
            now = db_now()
            sent = dialect_for(connection).lock_first_due(
                _dispatchable(now, kind, dispatch_timeout), queues, limit - len(rows)
            )
            if sent:
                WorkItem.objects.filter(id__in=[item_id for item_id, _ in sent]).update(dispatched_at=now)
        rows += sent
    return rows


def _dispatchable(now: datetime.datetime, kind: str, dispatch_timeout: float) -> QuerySet[WorkItem]:
    """Claimable items never sent since they last became claimable, or sent and unclaimed too long."""
    return _claimable(now, kind=kind).filter(
        Q(dispatched_at__isnull=True) | Q(dispatched_at__lte=now - _seconds(dispatch_timeout))
    )


def _dispatch_limited(queue: str, limit: int, dispatch_timeout: float) -> list[tuple[int, str]]:
    """Send no more of a limited queue than its free slots, counting those sent and not yet claimed."""
    queue_limits.ensure_state(queue)
    with write_transaction():
        gate = queue_limits.lock(queue)
        if gate is None:
            return []
        now = queue_limits.lease_clock(gate)
        candidates = _dispatchable(now, WorkItemKind.ACTIVITY, dispatch_timeout).filter(queue=queue)
        ids = gate.pick(candidates, limit, now=now, in_flight=queue_limits.in_flight(queue, now, dispatch_timeout))
        if ids:
            WorkItem.objects.filter(id__in=ids).update(dispatched_at=now)
    return [(item_id, queue) for item_id in ids]


def dispatch_activities(*, queues: Sequence[str], limit: int, dispatch_timeout: float) -> list[tuple[int, str]]:
    return dispatch(kind=WorkItemKind.ACTIVITY, queues=queues, limit=limit, dispatch_timeout=dispatch_timeout)


def claim_item(
    item_id: int, *, owner: str, lease_seconds: float, kind: str = WorkItemKind.ACTIVITY, worker: str | None = None
) -> Claim | None:
    """Claim the item ``item_id`` of ``kind`` by the rules of ``claim()`` (unleased, unparked,
    due, and a slot free in a limited queue); None when it is not claimable (a duplicate
    message, already finished, or its queue full). ``worker``: the prefix of the owners of
    the claiming process's leases, which its queue's ``worker_concurrency`` counts."""
    if kind == WorkItemKind.ACTIVITY and queue_limits.limited_queues():
        queue = WorkItem.objects.filter(id=item_id).values_list("queue", flat=True).first()
        if queue is not None and queue in queue_limits.limited_queues():
            return _claim_limited_item(item_id, queue, owner=owner, worker=worker, lease_seconds=lease_seconds)
    with write_transaction():
        now = db_now()
        claimable = _claimable(now, id=item_id, kind=kind)
        if connection.features.has_select_for_update_skip_locked:
            claimable = claimable.select_for_update(skip_locked=dialect_for(connection).claim_by_id_skips_locked)
        if not claimable.exists():
            # Parked or not yet due: forget the sending, so it is sent again once claimable.
            WorkItem.objects.filter(id=item_id, lease_owner__isnull=True).filter(
                Q(parked_at__isnull=False) | Q(due_at__gt=now)
            ).update(dispatched_at=None)
            return None
        claims = _lease_items([item_id], owner=owner, now=now, lease_seconds=lease_seconds)
        _log_claims(claims)
        return claims[0] if claims else None


def _claim_limited_item(
    item_id: int, queue: str, *, owner: str, worker: str | None, lease_seconds: float
) -> Claim | None:
    """``claim_item`` of an attempt of a limited queue: leased only if the limits leave it a
    slot; else its sending is forgotten and it is due again ``REFUSED_BACKOFF`` later (sent
    again then, when a slot is free), which is no lost message."""
    queue_limits.ensure_state(queue)
    with write_transaction():
        gate = queue_limits.lock(queue)
        now = queue_limits.lease_clock(gate)
        candidate = _claimable(now, id=item_id, kind=WorkItemKind.ACTIVITY)
        ids = gate.pick(candidate, 1, now=now, worker=worker) if gate is not None else []
        claims = _lease_items(ids, owner=owner, now=now, lease_seconds=lease_seconds) if ids else []
        if gate is not None:
            gate.started(len(claims), now)
    if not claims:
        # Due again a moment later: a limit the sender cannot count (worker_concurrency, per
        # remote process) would otherwise have it sent and refused again at once, in a loop.
        # After the queue's lock is let go: this may wait on the item's row.
        WorkItem.objects.filter(id=item_id, lease_owner__isnull=True).update(
            dispatched_at=None, due_at=Greatest("due_at", Value(now + _seconds(REFUSED_BACKOFF)))
        )
        return None
    _log_claims(claims)
    return claims[0]


def renew_leases(*, owner: str, leases: Sequence[LeaseRenewal], lease_seconds: float) -> set[int]:
    """Extend the leases still ours; a cap (the attempt's timeout) bounds the extension.
    Returns the ids whose lease was lost."""
    if not leases:
        return set()
    wanted = {(lease.item_id, lease.attempt): lease.cap for lease in leases}
    with write_transaction():
        now = db_now()
        candidates = WorkItem.objects.filter(
            id__in=[lease.item_id for lease in leases],
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


def _fence(item: Claim) -> QuerySet[WorkItem]:
    return WorkItem.objects.filter(id=item.id, lease_owner=item.owner, attempt=item.attempt)


def lease_lost(item: Claim) -> LeaseLost:
    """The error for an outcome of ``item`` that came too late: nothing of it was written."""
    return LeaseLost(f"{item.kind} {item.name!r} attempt {item.attempt} is no longer leased by {item.owner}")


def discard(item: Claim) -> None:
    """Drop a claimed item that has nothing left to do (its run is gone or closed)."""
    _fence(item).delete()


def attempt_deadline(item: Claim, heartbeat_at: datetime.datetime | None) -> datetime.datetime | None:
    """When this attempt times out: its start-to-close or heartbeat timeout, or None."""
    options = activity_options(item.payload)
    start_to_close = options.get("start_to_close_timeout")
    heartbeat = options.get("heartbeat_timeout")
    schedule_to_close = options.get("schedule_to_close_timeout")
    deadlines = []
    if start_to_close is not None:
        deadlines.append(item.claimed_at + _seconds(start_to_close))
    if heartbeat is not None:
        deadlines.append((heartbeat_at or item.claimed_at) + _seconds(heartbeat))
    if schedule_to_close is not None:
        deadlines.append(item.created_at + _seconds(schedule_to_close))
    return min(deadlines, default=None)
