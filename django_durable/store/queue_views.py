"""Reads and the one write of the admin's Queues page: each queue's activity attempts
(running, awaiting completion, waiting, the oldest waiting) and its limits, in a fixed number
of queries whatever the number of queues; an operator's override of a queue's limits.

A queue is known when the settings configure it, a ``QueueState`` row names it, or an
activity attempt is in it. Its limits are its override's, else the settings' (as
``queue_limits.lock`` reads them where work is leased).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count, Min, Q
from django.utils import timezone

from ..conf import durable_settings
from ..models import QueueState, WorkItem, WorkItemKind
from ..queues import QueueLimits, configured_limits, parse_queue_limits
from . import queue_limits
from .clock import db_now


@dataclasses.dataclass(frozen=True)
class QueueOverview:
    """A queue's activity attempts now and the limits that apply to them."""

    queue: str
    running: int  # leased and running: each holds a slot of the queue's concurrency
    awaiting_completion: int  # leased, finished by task token: they hold no slot
    waiting: int  # claimable now: unleased, unparked and due
    oldest_waiting: datetime.datetime | None  # the due time of the longest-waiting of them
    waited: datetime.timedelta | None  # how long that one has waited
    limits: QueueLimits  # in effect: the override's, else the settings'
    settings_limits: QueueLimits
    override: Any  # the stored override (the setting's shape), or None
    override_error: str  # why the stored override is no limits (workers refuse it); else ""
    state_id: int | None  # its QueueState row, if it has one
    updated_at: datetime.datetime | None  # when that row last changed

    @property
    def overridden(self) -> bool:
        return self.override is not None


def queue_overview(queues: Iterable[str] | None = None, *, now: datetime.datetime | None = None) -> list[QueueOverview]:
    """Every known queue (or only ``queues``), by name: three queries (the clock, the
    attempts counted by queue, the queues' rows), however many queues there are."""
    now = now or db_now()
    wanted = None if queues is None else set(queues)
    configured = configured_limits(durable_settings.QUEUES)

    attempts = WorkItem.objects.filter(kind=WorkItemKind.ACTIVITY)
    states = QueueState.objects.all()
    if wanted is not None:
        attempts = attempts.filter(queue__in=wanted)
        states = states.filter(queue__in=wanted)
    claimable_now = Q(lease_owner__isnull=True, parked_at__isnull=True, due_at__lte=now)
    counts: dict[str, Mapping[str, Any]] = {
        row["queue"]: row
        for row in attempts.order_by()
        .values("queue")
        .annotate(
            running=Count("id", filter=Q(lease_owner__isnull=False, awaiting_completion=False)),
            awaiting_completion=Count("id", filter=Q(lease_owner__isnull=False, awaiting_completion=True)),
            waiting=Count("id", filter=claimable_now),
            oldest_waiting=Min("due_at", filter=claimable_now),
        )
    }
    rows: dict[str, Mapping[str, Any]] = {
        row["queue"]: row for row in states.values("id", "queue", "limits", "updated_at")
    }

    names = set(counts) | set(rows) | set(configured)
    if wanted is not None:
        names &= wanted
    overviews = []
    for queue in sorted(names):
        count = counts.get(queue, {})
        row = rows.get(queue, {})
        settings_limits = configured.get(queue, QueueLimits())
        override = row.get("limits")
        limits, error = settings_limits, ""
        if override is not None:
            try:
                limits = parse_queue_limits(queue, override)
            except ImproperlyConfigured as invalid:
                error = str(invalid)
        oldest = count.get("oldest_waiting")
        overviews.append(
            QueueOverview(
                queue=queue,
                running=count.get("running", 0),
                awaiting_completion=count.get("awaiting_completion", 0),
                waiting=count.get("waiting", 0),
                oldest_waiting=oldest,
                waited=None if oldest is None else max(now - oldest, datetime.timedelta(0)),
                limits=limits,
                settings_limits=settings_limits,
                override=override,
                override_error=error,
                state_id=row.get("id"),
                updated_at=row.get("updated_at"),
            )
        )
    return overviews


def ensure_states() -> int:
    """Give every known queue its ``QueueState`` row (the admin lists the rows), and return
    how many were created. Two queries when none is missing. A row without an override
    changes nothing: unlimited queues are still never locked."""
    known = set(configured_limits(durable_settings.QUEUES))
    known |= set(
        WorkItem.objects.filter(kind=WorkItemKind.ACTIVITY).order_by().values_list("queue", flat=True).distinct()
    )
    missing = known - set(QueueState.objects.filter(queue__in=known).values_list("queue", flat=True))
    if missing:
        # Autocommit inserts (no transaction to hold a gap lock on MySQL); a worker's
        # ensure_state may insert the same queue meanwhile.
        QueueState.objects.bulk_create([QueueState(queue=queue) for queue in sorted(missing)], ignore_conflicts=True)
    return len(missing)


def set_override(queue: str, limits: Mapping[str, Any] | None) -> QueueState:
    """Override ``queue``'s limits with ``limits`` (the setting's shape; ``{}`` is no limits),
    or with None go back to the settings' limits. ``ImproperlyConfigured`` when ``limits`` are
    not limits, and nothing changes. Creates the queue's row if missing.

    The next lease of a queue already limited reads it under the row's lock; workers learn
    of a queue newly limited within ``QUEUE_LIMITS_REFRESH`` seconds."""
    stored = None if limits is None else parse_queue_limits(queue, limits).to_json()
    # Created first, outside any transaction (as queue_limits.ensure_state does), then
    # updated: waits for a worker holding the row's lock, never deadlocks with one.
    QueueState.objects.get_or_create(queue=queue)
    QueueState.objects.filter(queue=queue).update(limits=stored, updated_at=timezone.now())
    queue_limits.forget()
    return QueueState.objects.get(queue=queue)


def refresh_seconds() -> float:
    """How long workers may take to learn of an override (``QUEUE_LIMITS_REFRESH``)."""
    return float(durable_settings.QUEUE_LIMITS_REFRESH)
