"""For operators: workers' heartbeats, the dashboard, pruning closed runs and health checks."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

from django.db import IntegrityError, connection
from django.db.models import Count, Exists, F, Min, OuterRef, Q, QuerySet

from ..conf import durable_settings
from ..models import (
    OPEN_STATUSES,
    HistoryEvent,
    InboxEvent,
    Schedule,
    WorkerHeartbeat,
    WorkflowInstance,
    WorkflowStatus,
    WorkItem,
    WorkItemKind,
)
from ..statelog import state_change
from .clock import db_now
from .dialects import dialect_for
from .dialects.base import column
from .records import (
    DashboardStats,
    DashboardWorker,
    LateSchedule,
    OldestPending,
    OverdueWork,
    ScheduleHealth,
    StatusCounts,
    WorkerRow,
)
from .transactions import write_transaction

logger = logging.getLogger("django_durable.store")

# Heartbeat rows of workers not seen for this long are deleted when a worker starts.
WORKER_ROW_RETENTION = datetime.timedelta(days=7)

# Unclaimed work due longer ago than this is overdue: no worker keeps up with its queue.
OVERDUE_AFTER = datetime.timedelta(minutes=1)

# The dashboard's window for failures and for the workers it lists.
RECENT_WINDOW = datetime.timedelta(hours=1)


def worker_heartbeat_interval() -> float:
    """Seconds between a worker's heartbeats: every REAP_INTERVAL, checked at each lease
    renewal (every LEASE_SECONDS / 3), so at most their sum."""
    return float(durable_settings.REAP_INTERVAL) + float(durable_settings.LEASE_SECONDS) / 3


def worker_stale_after() -> datetime.timedelta:
    """A worker that has not reported for this long (and did not say it stopped) is presumed dead."""
    return datetime.timedelta(seconds=max(60.0, 3 * worker_heartbeat_interval()))


def record_worker_heartbeat(
    name: str, hostname: str, pid: int, queues: Sequence[str], concurrency: int, *, starting: bool = False
) -> None:
    """Upsert the worker's row: seen now (and started now if ``starting``)."""
    now = db_now()
    fields = {
        "hostname": hostname,
        "pid": pid,
        "queues": list(queues),
        "concurrency": concurrency,
        "last_seen_at": now,
        "stopped_at": None,
    }
    if starting:
        fields["started_at"] = now
        WorkerHeartbeat.objects.filter(last_seen_at__lt=now - WORKER_ROW_RETENTION).delete()
    if WorkerHeartbeat.objects.filter(name=name).update(**fields):
        return
    try:
        with write_transaction():
            WorkerHeartbeat.objects.create(name=name, **{"started_at": now, **fields})
    except IntegrityError:
        # Another process with the same --name inserted it first.
        WorkerHeartbeat.objects.filter(name=name).update(**fields)


def worker_stopped(name: str) -> None:
    now = db_now()
    WorkerHeartbeat.objects.filter(name=name).update(last_seen_at=now, stopped_at=now)


def dashboard_stats(
    now: datetime.datetime | None = None, *, failing_tasks_limit: int = 10, workers_limit: int = 50
) -> DashboardStats:
    """The operator's overview, in a fixed number of queries whatever the number of runs,
    work items and workers: runs by status (and closed within RECENT_WINDOW), work by kind
    (due, overdue, running, lease expired, awaiting completion, parked, scheduled), the
    oldest unclaimed due item, workflow tasks failing or parked after failing, and the
    workers seen within RECENT_WINDOW (alive, stale or stopped)."""
    now = now or db_now()
    since = now - RECENT_WINDOW
    stale_before = now - worker_stale_after()

    by_status: dict[str, StatusCounts] = {status: {"count": 0, "recent": 0} for status in WorkflowStatus.values}
    rows = (
        WorkflowInstance.objects.order_by()
        .values("status")
        .annotate(count=Count("id"), recent=Count("id", filter=Q(closed_at__gte=since)))
    )
    for row in rows:
        by_status[row["status"]] = {"count": row["count"], "recent": row["recent"]}

    claimable = Q(lease_owner__isnull=True, parked_at__isnull=True)
    leased = Q(lease_owner__isnull=False)
    work_counts = {
        "due": Count("id", filter=claimable & Q(due_at__lte=now)),
        "overdue": Count("id", filter=claimable & Q(due_at__lte=now - OVERDUE_AFTER)),
        "scheduled": Count("id", filter=claimable & Q(due_at__gt=now)),
        "running": Count("id", filter=leased & Q(awaiting_completion=False, lease_expires_at__gt=now)),
        "awaiting_completion": Count(
            "id",
            filter=leased
            & Q(awaiting_completion=True)
            & (Q(lease_expires_at__isnull=True) | Q(lease_expires_at__gt=now)),
        ),
        "lease_expired": Count("id", filter=leased & Q(lease_expires_at__lte=now)),
        "parked": Count("id", filter=Q(parked_at__isnull=False)),
        "failing": Count("id", filter=Q(last_error__isnull=False, parked_at__isnull=True)),
        "parked_failing": Count("id", filter=Q(last_error__isnull=False, parked_at__isnull=False)),
        "total": Count("id"),
    }
    by_kind = {kind: dict.fromkeys(work_counts, 0) for kind in WorkItemKind.values}
    for kind, *counts in (
        WorkItem.objects.order_by().values("kind").annotate(**work_counts).values_list("kind", *work_counts)
    ):
        by_kind[kind] = dict(zip(work_counts, counts, strict=True))
    work_totals = {key: sum(counts[key] for counts in by_kind.values()) for key in work_counts}

    due = (
        WorkItem.objects.filter(claimable, due_at__lte=now)
        .order_by("due_at", "id")
        .values(
            "id",
            "kind",
            "name",
            "queue",
            "due_at",
            "attempt",
            "instance_id",
            workflow_id=F("instance__workflow_id"),
            workflow_name=F("instance__workflow_name"),
            run_id=F("instance__run_id"),
        )
        .first()
    )
    oldest: OldestPending | None = None if due is None else {**due, "waited": now - due["due_at"]}

    # Workflow tasks that failed at engine level (crash, non-determinism): retrying or parked.
    failing_tasks = list(
        WorkItem.objects.filter(kind=WorkItemKind.WORKFLOW, last_error__isnull=False)
        .order_by(F("parked_at").desc(nulls_last=True), "-failures", "id")
        .values(
            "instance_id",
            "failures",
            "parked_at",
            "due_at",
            "last_error",
            workflow_id=F("instance__workflow_id"),
            workflow_name=F("instance__workflow_name"),
            run_id=F("instance__run_id"),
            status=F("instance__status"),
        )[:failing_tasks_limit]
    )

    alive = Q(stopped_at__isnull=True, last_seen_at__gte=stale_before)
    stale = Q(stopped_at__isnull=True, last_seen_at__lt=stale_before)
    seen = WorkerHeartbeat.objects.filter(Q(last_seen_at__gte=since) | alive)
    worker_counts = seen.aggregate(
        alive=Count("id", filter=alive),
        stale=Count("id", filter=stale),
        stopped=Count("id", filter=Q(stopped_at__isnull=False)),
    )
    workers: list[DashboardWorker] = [
        {
            **worker,
            "state": "stopped"
            if worker["stopped_at"]
            else "stale"
            if worker["last_seen_at"] < stale_before
            else "alive",
        }
        for worker in seen.order_by("-last_seen_at", "name").values(
            "name", "hostname", "pid", "queues", "concurrency", "started_at", "last_seen_at", "stopped_at"
        )[:workers_limit]
    ]

    return {
        "now": now,
        "since": since,
        "overdue_after": OVERDUE_AFTER,
        "stale_after": now - stale_before,
        "runs": {
            "by_status": by_status,
            "total": sum(counts["count"] for counts in by_status.values()),
            "open": sum(by_status[status]["count"] for status in OPEN_STATUSES),
        },
        "failures": {
            "failed": by_status[WorkflowStatus.FAILED]["recent"],
            "terminated": by_status[WorkflowStatus.TERMINATED]["recent"],
            "workflow_tasks_failing": by_kind[WorkItemKind.WORKFLOW]["failing"],
            "workflow_tasks_parked": by_kind[WorkItemKind.WORKFLOW]["parked_failing"],
        },
        "work": {"by_kind": by_kind, "total": work_totals},
        "oldest_pending": oldest,
        "failing_tasks": failing_tasks,
        "workers": {
            "alive": worker_counts["alive"],
            "stale": worker_counts["stale"],
            "stopped": worker_counts["stopped"],
            "list": workers,
        },
    }


PRUNE_COUNT_KEYS = ("runs", "history_events", "inbox_events", "work_items")


def _closed_before(closed_before: datetime.datetime, workflow_names: Sequence[str]) -> QuerySet[WorkflowInstance]:
    runs = WorkflowInstance.objects.exclude(status__in=OPEN_STATUSES).filter(closed_at__lt=closed_before)
    if workflow_names:
        runs = runs.filter(workflow_name__in=list(workflow_names))
    return runs


def _referenced_by_open_run() -> Q:
    """An open run points at this run: as its parent (the parent-close policy needs it), as
    the run it continued from (handles to the old run follow the chain), or as its rerun source."""
    open_runs = WorkflowInstance.objects.filter(status__in=OPEN_STATUSES)
    return (
        Q(Exists(open_runs.filter(parent=OuterRef("pk"))))
        | Q(Exists(open_runs.filter(continued_from=OuterRef("pk"))))
        | Q(Exists(open_runs.filter(rerun_of=OuterRef("pk"))))
    )


def prune_batch_size(requested: int) -> int:
    """At most what one statement can take as parameters (999 on SQLite)."""
    return min(requested, connection.features.max_query_params or requested)


def count_prunable(*, closed_before: datetime.datetime, workflow_names: Sequence[str] = ()) -> dict[str, int]:
    """What ``prune_batch`` would delete, in all, and how many closed runs past the retention
    it keeps because an open run refers to them. Reads only."""
    closed = _closed_before(closed_before, workflow_names)
    runs = closed.filter(~_referenced_by_open_run())
    return {
        "runs": runs.count(),
        "history_events": HistoryEvent.objects.filter(instance__in=runs).count(),
        "inbox_events": InboxEvent.objects.filter(instance__in=runs).count(),
        "work_items": WorkItem.objects.filter(instance__in=runs).count(),
        "kept": closed.filter(_referenced_by_open_run()).count(),
    }


def count_kept(*, closed_before: datetime.datetime, workflow_names: Sequence[str] = ()) -> int:
    return _closed_before(closed_before, workflow_names).filter(_referenced_by_open_run()).count()


def prune_batch(
    *, closed_before: datetime.datetime, batch_size: int, workflow_names: Sequence[str] = ()
) -> dict[str, int]:
    """Delete up to ``batch_size`` closed runs that closed before ``closed_before`` and that
    no open run refers to, with their history, inbox events and work items: one short
    transaction, one statement per table. Runs another transaction holds (a purge, a rerun
    being started from one) are skipped, not waited for."""
    with write_transaction():
        # A plain FOR UPDATE (not NO KEY): it conflicts with the key-share lock of a foreign
        # key being inserted to the run, so a rerun starting from it is never orphaned.
        ids = list(
            _closed_before(closed_before, workflow_names)
            .filter(~_referenced_by_open_run())
            .order_by("pk")
            .select_for_update(skip_locked=connection.features.has_select_for_update_skip_locked)
            .values_list("pk", flat=True)[: prune_batch_size(batch_size)]
        )
        counts = dict.fromkeys(PRUNE_COUNT_KEYS, 0)
        if not ids:
            return counts
        # Closed runs that point at the doomed ones forget them (what SET_NULL would do, but
        # one UPDATE per link instead of loading every run the ORM's cascade would).
        for link in ("parent", "continued_from", "rerun_of"):
            WorkflowInstance.objects.filter(**{f"{link}__in": ids}).update(**{link: None})
        Schedule.objects.filter(last_run__in=ids).update(last_run=None)
        counts["history_events"] = HistoryEvent.objects.filter(instance_id__in=ids).delete()[0]
        counts["inbox_events"] = InboxEvent.objects.filter(instance_id__in=ids).delete()[0]
        counts["work_items"] = WorkItem.objects.filter(instance_id__in=ids).delete()[0]
        meta = WorkflowInstance._meta
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {connection.ops.quote_name(meta.db_table)} "
                f"WHERE {connection.ops.quote_name(column(meta.pk))} IN ({', '.join(['%s'] * len(ids))})",
                ids,
            )
            counts["runs"] = cursor.rowcount
        state_change("pruned", closed_before=closed_before, **counts)
    logger.info(
        "Pruned %(runs)d closed runs with %(history_events)d history events, %(inbox_events)d inbox "
        "events and %(work_items)d work items",
        counts,
    )
    return counts


def check_database() -> str:
    """One round trip (connecting first if need be); raises if the database cannot answer."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return dialect_for(connection).vendor


def unapplied_migrations(app_label: str = "django_durable") -> tuple[list[str], list[str]]:
    """``(unapplied, leaves)``: the migrations the app's latest ones need (its own and their
    dependencies, as ``app.name``) that the database lacks, and the app's latest migrations.
    Reads only: a database without ``django_migrations`` has nothing applied."""
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(connection, ignore_no_migrations=True)
    leaves = loader.graph.leaf_nodes(app_label)
    needed = {node for leaf in leaves for node in loader.graph.forwards_plan(leaf)}
    unapplied = sorted(f"{app}.{name}" for app, name in needed if (app, name) not in loader.applied_migrations)
    return unapplied, [f"{app}.{name}" for app, name in leaves]


def worker_rows(*, hostname: str | None = None) -> tuple[datetime.datetime, list[WorkerRow]]:
    """The database's clock and every worker that has not said it stopped, latest seen first."""
    workers = WorkerHeartbeat.objects.filter(stopped_at__isnull=True)
    if hostname is not None:
        workers = workers.filter(hostname=hostname)
    rows = list(workers.order_by("-last_seen_at", "name").values("name", "hostname", "pid", "queues", "last_seen_at"))
    return db_now(), rows


def overdue_work(*, overdue_after: datetime.timedelta, queues: Sequence[str] = ()) -> OverdueWork:
    """Work no worker is keeping up with: unclaimed items due for longer than ``overdue_after``
    and leases expired that long ago without being reaped; with the oldest of each, the
    oldest due item whatever its wait, and the parked count (parked work waits for a person)."""
    now = db_now()
    items = WorkItem.objects.all()
    if queues:
        items = items.filter(queue__in=list(queues))
    claimable = Q(lease_owner__isnull=True, parked_at__isnull=True)
    unreaped = Q(lease_owner__isnull=False, lease_expires_at__lte=now - overdue_after)
    counts = items.aggregate(
        overdue=Count("id", filter=claimable & Q(due_at__lte=now - overdue_after)),
        lease_expired=Count("id", filter=unreaped),
        parked=Count("id", filter=Q(parked_at__isnull=False)),
    )
    fields = ("id", "kind", "name", "queue", "due_at", "attempt", "lease_owner", "lease_expires_at")
    run_ids = {"workflow_id": F("instance__workflow_id"), "run_id": F("instance__run_id")}
    oldest_due = items.filter(claimable, due_at__lte=now).order_by("due_at", "id").values(*fields, **run_ids).first()
    oldest_expired = None
    if counts["lease_expired"]:
        oldest_expired = items.filter(unreaped).order_by("lease_expires_at", "id").values(*fields, **run_ids).first()
    return {
        "now": now,
        "overdue": counts["overdue"],
        "lease_expired": counts["lease_expired"],
        "parked": counts["parked"],
        "oldest_due": oldest_due,
        "oldest_lease_expired": oldest_expired,
    }


def schedule_health(*, late_after: datetime.timedelta, limit: int) -> ScheduleHealth:
    """Whether workers fire the schedules in time: how many are active (unpaused, with a tick
    to come), how many are late (their next tick due for longer than ``late_after``, as
    ``schedules.late_schedules``) and the ``limit`` that have waited longest, and the next
    fire time."""
    now = db_now()
    late = Q(next_fire_at__lt=now - late_after)
    counts = Schedule.objects.filter(next_fire_at__isnull=False).aggregate(
        active=Count("id"), late=Count("id", filter=late), next_fire_at=Min("next_fire_at")
    )
    oldest_late: list[LateSchedule] = []
    if counts["late"]:
        rows = (
            Schedule.objects.filter(late)
            .order_by("next_fire_at", "id")
            .values_list("schedule_id", "workflow_name", "next_tick_at", "next_fire_at")[:limit]
        )
        oldest_late = [
            {"schedule_id": schedule_id, "workflow_name": name, "next_tick_at": tick, "next_fire_at": fire_at}
            for schedule_id, name, tick, fire_at in rows
            if tick is not None and fire_at is not None  # always: the filter reads late ones only
        ]
    return {
        "now": now,
        "active": counts["active"],
        "late": counts["late"],
        "next_fire_at": counts["next_fire_at"],
        "oldest_late": oldest_late,
    }
