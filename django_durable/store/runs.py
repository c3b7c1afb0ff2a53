"""A run's row and history: locking it, creating it, appending history, delivering events to
its inbox, the id reuse policy, terminating it, starting its children and telling its parent."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, TypedDict

from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Sum, TextField
from django.db.models.functions import Cast, Length

from .. import notify
from ..engine.events import Event, EventKind, ParentClosePolicy
from ..exceptions import WorkflowAlreadyExists, WorkflowNotFound, WorkflowNotOpen
from ..models import (
    OPEN_STATUSES,
    HistoryEvent,
    IdReusePolicy,
    InboxEvent,
    WorkflowInstance,
    WorkflowStatus,
    WorkItem,
    WorkItemKind,
)
from ..statelog import state_change
from .clock import db_now
from .dialects import dialect_for
from .dialects.base import RunUpdates
from .records import (
    EVENT_FIELDS,
    JSON,
    HistorySize,
    LockedRun,
    PendingWork,
    RunToReplay,
    activity_options,
)
from .transactions import write_transaction

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's own from Python 3.11


class RunRelations(TypedDict, total=False):
    """What a new run may carry beyond its start (``_create_run``): its place in a chain of
    runs (parent, continue-as-new, rerun) and, for a rerun, when it started."""

    parent_id: int | None
    parent_task_id: int | None
    parent_close_policy: str
    continued_from_id: int
    rerun_of: WorkflowInstance
    rerun_from_seq: int
    started_at: datetime.datetime | None


def _lock_instance(instance_id: int, *, skip_locked: bool = False) -> LockedRun | None:
    """Lock the run's row and read LOCKED_FIELDS; on PostgreSQL also ``now`` (the database's
    clock, as ``db_now()``)."""
    return dialect_for(connection).lock_run(instance_id, skip_locked=skip_locked)


def _lock_instances(instance_ids: Iterable[int]) -> dict[int, LockedRun]:
    """``_lock_instance`` for several runs, locked in id order (so that two such batches
    cannot deadlock), each with its ``now``; runs that no longer exist are left out."""
    ids = sorted(set(instance_ids))
    locked = dialect_for(connection).lock_runs(ids)
    if locked is not None:
        return locked
    runs = {}
    for instance_id in ids:
        instance = _lock_instance(instance_id)
        if instance is not None:
            instance.now = db_now()
            runs[instance_id] = instance
    return runs


def _parked_at(instance: LockedRun, now: datetime.datetime) -> datetime.datetime | None:
    """New work of a suspended run is created parked; ``resume()`` releases it."""
    return now if instance.status == WorkflowStatus.SUSPENDED else None


def _lock_open_run(workflow_id: str, run_id: str | None) -> tuple[int, LockedRun]:
    """Lock the run a verb addresses, following continue-as-new to the run the chain has
    reached (it may have continued since we looked); ``WorkflowNotOpen`` if it is closed."""
    instance_id = get_instance(workflow_id, run_id).pk
    while True:
        instance = _lock_instance(instance_id)
        successor = (
            continuation_of(instance_id)
            if instance is not None and instance.status == WorkflowStatus.CONTINUED_AS_NEW
            else None
        )
        if successor is None:
            return instance_id, _require_open(workflow_id, instance)
        instance_id = successor.pk


def _require_open(workflow_id: str, instance: LockedRun | None) -> LockedRun:
    if instance is None or instance.status not in OPEN_STATUSES:
        raise WorkflowNotOpen(
            f"Workflow {workflow_id!r} is not running (it is {instance.status if instance else 'gone'})."
        )
    return instance


def create_instance(
    *,
    workflow_name: str,
    workflow_id: str,
    queue: str,
    args: list[JSON],
    kwargs: dict[str, JSON],
    start_at: datetime.datetime | None,
    id_reuse_policy: IdReusePolicy = IdReusePolicy.ALLOW_DUPLICATE,
) -> WorkflowInstance:
    """A new run: the instance, its ``ExecutionStarted`` event and its first workflow task."""
    try:
        with write_transaction():
            now = db_now()
            _apply_id_reuse_policy(workflow_id, IdReusePolicy(id_reuse_policy), now)
            return _create_run(
                workflow_id=workflow_id,
                workflow_name=workflow_name,
                queue=queue,
                args=args,
                kwargs=kwargs,
                now=now,
                start_at=start_at,
            )
    except IntegrityError:
        # Another transaction started a run with this id between our check and insert.
        raise WorkflowAlreadyExists(f"Workflow {workflow_id!r} is already running.") from None


def _create_run(
    *,
    workflow_id: str,
    workflow_name: str,
    queue: str,
    args: list[JSON],
    kwargs: dict[str, JSON],
    now: datetime.datetime,
    start_at: datetime.datetime | None = None,
    history: Sequence[Event] = (),
    schedule: dict[str, JSON] | None = None,
    **relations: Unpack[RunRelations],
) -> WorkflowInstance:
    """Insert a run, its history (by default just ``ExecutionStarted``, which names the
    ``schedule`` tick it runs for, if any) and a due workflow task."""
    started: dict[str, JSON] = {"args": args, "kwargs": kwargs, "queue": queue}
    if schedule is not None:
        started["schedule"] = schedule
    history = list(history) or [
        Event(kind=EventKind.EXECUTION_STARTED, name=workflow_name, payload=started, timestamp=now)
    ]
    instance = WorkflowInstance.objects.create(
        workflow_id=workflow_id,
        workflow_name=workflow_name,
        queue=queue,
        input={"args": args, "kwargs": kwargs},
        history_length=len(history),
        scheduled_start_at=start_at,
        created_at=now,
        **relations,
    )
    _append_history(instance.pk, 1, history)
    WorkItem.objects.create(
        kind=WorkItemKind.WORKFLOW,
        instance=instance,
        queue=queue,
        name=workflow_name,
        due_at=max(start_at, now) if start_at else now,
        created_at=now,
    )
    notify.notify_work(queue)
    state_change(
        "run_created",
        workflow_id=workflow_id,
        run_id=str(instance.run_id),
        workflow_name=workflow_name,
        queue=queue,
        start_at=start_at,
        history_length=len(history),
    )
    return instance


def _append_history(instance_id: int, first_seq: int, events: Iterable[Event]) -> None:
    HistoryEvent.objects.bulk_create(_history_rows(instance_id, first_seq, events))


def _history_rows(instance_id: int, first_seq: int, events: Iterable[Event]) -> list[HistoryEvent]:
    return [
        HistoryEvent(
            instance_id=instance_id,
            seq=first_seq + offset,
            kind=event.kind,
            name=event.name,
            task_id=event.task_id,
            payload=event.payload,
            timestamp=event.timestamp,
        )
        for offset, event in enumerate(events)
    ]


def _write_task(
    instance_id: int, history: list[HistoryEvent], updates: RunUpdates, items: Sequence[WorkItem] = ()
) -> None:
    """Append a workflow task's history, update its run and insert its work items (their
    ``pk`` set where the database returns it): on PostgreSQL in one statement."""
    _write_tasks([(instance_id, updates)], history, items)


def _write_tasks(
    runs: Sequence[tuple[int, RunUpdates]], history: list[HistoryEvent], items: Sequence[WorkItem] = ()
) -> None:
    """``_write_task`` for the tasks of several runs (each run's updates with the same
    keys): on PostgreSQL still one statement."""
    ids = dialect_for(connection).write_tasks(runs, history, items)
    for item, pk in zip(items, ids, strict=True):
        item.pk = pk


def _apply_id_reuse_policy(workflow_id: str, policy: IdReusePolicy, now: datetime.datetime) -> None:
    latest = WorkflowInstance.objects.filter(workflow_id=workflow_id).order_by("-id").values("pk", "status").first()
    if latest is None:
        return
    if latest["status"] in OPEN_STATUSES:
        if policy != IdReusePolicy.TERMINATE_IF_RUNNING:
            raise WorkflowAlreadyExists(f"Workflow {workflow_id!r} is already running.")
        instance = _lock_instance(latest["pk"])
        if instance is not None and instance.status in OPEN_STATUSES:
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


def get_history(instance_id: int, *, after: int = 0) -> list[Event]:
    return dialect_for(connection).history(instance_id, after=after)


def history_size(instance_id: int) -> HistorySize:
    """How long and how large a run's history is, measured by the database without reading it."""
    totals = HistoryEvent.objects.filter(instance_id=instance_id).aggregate(
        events=Count("pk"), bytes=Sum(Length(Cast("payload", TextField())))
    )
    return HistorySize(events=totals["events"], bytes=totals["bytes"] or 0)


def history_window(instance_id: int, first: int, last: int) -> list[Event]:
    """Events ``first .. last`` (by ``seq``) of a run's history."""
    events = HistoryEvent.objects.filter(instance_id=instance_id, seq__gte=first, seq__lte=last)
    return [Event(**row) for row in events.order_by("seq").values(*EVENT_FIELDS)]


def runs_to_replay(
    *, names: Sequence[str], workflow_ids: Sequence[str], include_closed: bool, limit: int | None
) -> Iterator[RunToReplay]:
    """Runs for ``durable_replay`` to check, by workflow name, each name's newest first."""
    runs = WorkflowInstance.objects.all()
    if not include_closed:
        runs = runs.filter(status__in=OPEN_STATUSES)
    if workflow_ids:
        runs = runs.filter(workflow_id__in=workflow_ids)
    if names:
        runs = runs.filter(workflow_name__in=names)
    present = sorted(set(runs.order_by().values_list("workflow_name", flat=True).distinct()))
    for name in present:
        of_name = (
            runs.filter(workflow_name=name)
            .order_by("-id")
            .values("id", "workflow_id", "run_id", "workflow_name", "queue", "status")
        )
        yield from of_name[:limit] if limit is not None else of_name.iterator()


def pending_work(instance_id: int) -> list[PendingWork]:
    return list(
        WorkItem.objects.filter(instance_id=instance_id).values(
            "kind",
            "name",
            "task_id",
            "queue",
            "due_at",
            "attempt",
            "lease_owner",
            "lease_expires_at",
            "failures",
            "parked_at",
            "last_error",
        )
    )


def continuation_of(instance_id: int) -> WorkflowInstance | None:
    """The run that ``instance_id`` continued as, if it continued as new."""
    return WorkflowInstance.objects.filter(continued_from_id=instance_id).first()


def last_of_chain(instance: WorkflowInstance) -> WorkflowInstance:
    """The run a chain of continue-as-new runs starting at ``instance`` has reached."""
    while instance.status == WorkflowStatus.CONTINUED_AS_NEW:
        successor = continuation_of(instance.pk)
        if successor is None:  # purged
            break
        instance = successor
    return instance


def _deliver(instance_id: int, instance: LockedRun, event: Event) -> None:
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
    # At most one workflow task per run (a partial unique index): an existing one stays.
    WorkItem.objects.bulk_create(
        [
            WorkItem(
                kind=WorkItemKind.WORKFLOW,
                instance_id=instance_id,
                queue=instance.queue,
                name=instance.workflow_name,
                due_at=event.timestamp,
                created_at=event.timestamp,
                parked_at=_parked_at(instance, event.timestamp),
            )
        ],
        ignore_conflicts=True,
    )
    notify.notify_work(instance.queue)
    state_change(
        "inbox",
        workflow_id=instance.workflow_id,
        run_id=str(instance.run_id),
        kind=event.kind,
        name=event.name or None,
        task_id=event.task_id,
    )


def _append_event(instance_id: int, instance: LockedRun, event: Event) -> int:
    """Write one event straight into the history of a locked run; returns its seq."""
    seq = instance.history_length + 1
    _append_history(instance_id, seq, [event])
    _log_history(instance, seq, [event])
    instance.history_length = seq
    return seq


def _log_history(instance: LockedRun, first_seq: int, events: Sequence[Event]) -> None:
    for offset, event in enumerate(events):
        state_change(
            "history",
            workflow_id=instance.workflow_id,
            run_id=str(instance.run_id),
            seq=first_seq + offset,
            kind=event.kind,
            name=event.name or None,
            task_id=event.task_id,
        )


def _terminate_locked(instance_id: int, instance: LockedRun, reason: str, now: datetime.datetime) -> None:
    error: dict[str, JSON] = {"type": "django_durable.Terminated", "message": reason}
    seq = _append_event(
        instance_id, instance, Event(kind=EventKind.WORKFLOW_TERMINATED, payload={"reason": reason}, timestamp=now)
    )
    dialect_for(connection).delete_run_rows(WorkItem.objects.filter(instance_id=instance_id))
    dialect_for(connection).delete_run_rows(InboxEvent.objects.filter(instance_id=instance_id))
    WorkflowInstance.objects.filter(pk=instance_id).update(
        status=WorkflowStatus.TERMINATED,
        error=error,
        history_length=seq,
        closed_at=now,
        updated_at=now,
        waiting_on="",
    )
    _notify_parent(instance, WorkflowStatus.TERMINATED, None, error, now)
    notify.notify_closed(str(instance.run_id))


def _work_items_for(
    instance_id: int, instance: LockedRun, events: Iterable[Event], now: datetime.datetime
) -> list[WorkItem]:
    items = []
    for event in events:
        if event.kind == EventKind.ACTIVITY_SCHEDULED:
            options = activity_options(event.payload)
            items.append(
                WorkItem(
                    kind=WorkItemKind.ACTIVITY,
                    instance_id=instance_id,
                    queue=options.get("queue") or instance.queue,
                    name=event.name,
                    task_id=event.task_id,
                    payload={"args": event.payload["args"], "kwargs": event.payload["kwargs"], "options": options},
                    due_at=now,
                    created_at=now,
                    parked_at=_parked_at(instance, now),
                    concurrency_key=options.get("concurrency_key") or "",
                )
            )
        elif event.kind == EventKind.TIMER_STARTED:
            items.append(
                WorkItem(
                    kind=WorkItemKind.TIMER,
                    instance_id=instance_id,
                    queue=instance.queue,
                    task_id=event.task_id,
                    due_at=datetime.datetime.fromisoformat(event.payload["fire_at"]),
                    created_at=now,
                )
            )
    return items


def _start_children(
    parent_id: int, parent: LockedRun, events: Iterable[Event], now: datetime.datetime, *, parent_open: bool = True
) -> None:
    for event in events:
        if event.kind != EventKind.CHILD_WORKFLOW_SCHEDULED:
            continue
        spec = event.payload
        try:
            with transaction.atomic():  # a savepoint: a clash must not undo the parent's commit
                _apply_id_reuse_policy(spec["workflow_id"], IdReusePolicy.ALLOW_DUPLICATE, now)
                _create_run(
                    workflow_id=spec["workflow_id"],
                    workflow_name=event.name,
                    queue=spec.get("queue") or parent.queue,
                    args=spec["args"],
                    kwargs=spec["kwargs"],
                    now=now,
                    parent_id=parent_id,
                    parent_task_id=event.task_id,
                    parent_close_policy=spec.get("parent_close_policy") or ParentClosePolicy.TERMINATE.value,
                )
        except (WorkflowAlreadyExists, IntegrityError):
            if not parent_open:
                continue  # nobody is left to tell
            _deliver(
                parent_id,
                parent,
                Event(
                    kind=EventKind.CHILD_WORKFLOW_FAILED,
                    timestamp=now,
                    name=event.name,
                    task_id=event.task_id,
                    payload={
                        "status": "not_started",
                        "workflow_id": spec["workflow_id"],
                        "error": {
                            "type": "django_durable.exceptions.WorkflowAlreadyExists",
                            "message": f"Child workflow {spec['workflow_id']!r} could not start: a run with "
                            "that id is already open.",
                        },
                    },
                ),
            )


def _notify_parent(
    child: LockedRun, status: str, result: JSON, error: dict[str, JSON] | None, now: datetime.datetime
) -> None:
    """A child closed: tell its parent run, if that is still open. Locks child, then parent."""
    if child.parent_id is None:
        return
    parent = _lock_instance(child.parent_id)
    if parent is None or parent.status not in OPEN_STATUSES:
        return
    ids = {"workflow_id": child.workflow_id, "run_id": str(child.run_id)}
    if status == WorkflowStatus.COMPLETED:
        event = Event(
            kind=EventKind.CHILD_WORKFLOW_COMPLETED,
            timestamp=now,
            name=child.workflow_name,
            task_id=child.parent_task_id,
            payload={"result": result, **ids},
        )
    else:
        event = Event(
            kind=EventKind.CHILD_WORKFLOW_FAILED,
            timestamp=now,
            name=child.workflow_name,
            task_id=child.parent_task_id,
            payload={"error": error, "status": status, **ids},
        )
    _deliver(child.parent_id, parent, event)
