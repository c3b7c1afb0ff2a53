"""Workflow tasks: reading their input, committing their decisions (one at a time or as a
group), eager activities, continue-as-new, and engine-level failures."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connection, transaction

from .. import notify
from ..engine.events import Event, EventKind
from ..faults import crash_point
from ..models import (
    HistoryEvent,
    InboxEvent,
    WorkflowInstance,
    WorkflowStatus,
    WorkItem,
    WorkItemKind,
)
from ..statelog import state_change
from . import queue_limits
from .claims import _cap_leases, _fence, _log_claims, lease_lost
from .clock import _seconds, db_now
from .dialects import dialect_for
from .dialects.base import RunUpdates
from .records import (
    CLOSING_STATUSES,
    JSON,
    ActivityOptions,
    CarriedEvent,
    Claim,
    Eager,
    FinishedTask,
    LeaseLost,
    LockedRun,
    StoredTask,
    TaskCompletion,
    TaskDecisions,
    WorkflowTaskInput,
    activity_options,
)
from .runs import (
    _create_run,
    _history_rows,
    _lock_instance,
    _lock_instances,
    _log_history,
    _notify_parent,
    _parked_at,
    _start_children,
    _work_items_for,
    _write_task,
    _write_tasks,
    get_history,
)
from .transactions import write_transaction


def load_workflow_tasks(
    items: Sequence[Claim], *, known_lengths: dict[int, int] | None = None
) -> dict[int, WorkflowTaskInput | None]:
    """``load_workflow_task`` for several claimed tasks (by item id; ``known_lengths``
    by item id too): on PostgreSQL one statement, whatever their number."""
    known_lengths = known_lengths or {}
    stored = None
    if len(items) >= 2:
        runs = sorted({item.instance_id: known_lengths.get(item.id) or 0 for item in items}.items())
        stored = dialect_for(connection).read_tasks(runs)
    if stored is None:
        return {item.id: load_workflow_task(item, known_length=known_lengths.get(item.id)) for item in items}
    return {
        item.id: _task_input_of(item, stored[item.instance_id], known_lengths.get(item.id))
        if item.instance_id in stored
        else None
        for item in items
    }


def load_workflow_task(item: Claim, *, known_length: int | None = None) -> WorkflowTaskInput | None:
    """What a workflow task needs: the run, its inbox and its history, or with
    ``known_length`` (the worker holds the run's code up to there) only the history
    events after it. ``history_length`` tells whether the held code is still current."""
    stored = dialect_for(connection).read_task(item.instance_id, known_length=known_length)
    return None if stored is None else _task_input_of(item, stored, known_length)


def _task_input_of(item: Claim, stored: StoredTask, known_length: int | None) -> WorkflowTaskInput:
    instance, inbox_ids, inbox, history = stored
    if known_length is not None and known_length > instance["history_length"]:
        known_length, history = None, None  # cannot be ours: read it all
    return WorkflowTaskInput(
        workflow_id=instance["workflow_id"],
        run_id=str(instance["run_id"]),
        workflow_name=instance["workflow_name"],
        queue=instance["queue"],
        status=instance["status"],
        history=history if history is not None else get_history(item.instance_id, after=known_length or 0),
        inbox=inbox,
        inbox_ids=inbox_ids,
        history_length=instance["history_length"],
        known_length=known_length,
    )


def complete_workflow_task(
    item: Claim,
    *,
    new_events: Sequence[Event],
    inbox_ids: Sequence[int],
    status: str,
    vars: dict[str, JSON],
    result: JSON = None,
    error: dict[str, JSON] | None = None,
    waiting_on: str | None = None,
    eager: Eager | None = None,
) -> bool:
    """Commit one workflow task's decisions atomically, or raise ``LeaseLost`` and write nothing.

    Returns False, having written nothing but the task's release, when the run would
    close while an event it has not seen arrived: the task runs again with it.
    """
    decisions = TaskDecisions(
        new_events=new_events, status=status, vars=vars, result=result, error=error, waiting_on=waiting_on
    )
    task = TaskCompletion(item, decisions, inbox_ids)
    complete_workflow_tasks([task], eager=eager)
    if task.lost:
        raise lease_lost(item)
    return task.committed


def complete_workflow_tasks(tasks: Sequence[TaskCompletion], *, eager: Eager | None = None) -> None:
    """``complete_workflow_task`` for tasks of different runs, in one transaction: on
    PostgreSQL the runs are locked and their ordinary steps written with one statement
    each, whatever their number. A task that is no longer ours is marked ``lost`` and
    the others still commit."""
    closing_runs = [task.item.instance_id for task in tasks if task.decisions.status in CLOSING_STATUSES]
    if eager is not None:
        eager.slots = None  # a failed try's locks went with its transaction
    with write_transaction():
        # A closing run tells its parent: the parents are locked with the runs, in id order,
        # not after them (a parent's id is lower: against another batch that would deadlock).
        runs = _lock_instances([*(task.item.instance_id for task in tasks), *_parent_ids(closing_runs)])
        writes: list[_TaskWrite] = []
        for task in tasks:
            instance = runs.get(task.item.instance_id)
            if instance is None:
                task.lost = True  # the run is gone (purged)
                continue
            item, decisions, now = task.item, task.decisions, instance.now
            assert now is not None  # _lock_instances reads it with the lock
            closing = decisions.status in CLOSING_STATUSES
            # A run that would close while a signal it has not seen waits gets its task again.
            check_signals = closing and decisions.status != WorkflowStatus.CONTINUED_AS_NEW
            more_inbox, unseen_signal, fenced = _finish_workflow_task(item, task.inbox_ids, closing, check_signals)
            if unseen_signal or (more_inbox and not closing):
                # Events arrived while this task ran: leave the task claimable at once.
                if not _release_workflow_task(item, instance, now):
                    raise lease_lost(item)  # cannot be, under the run's lock: write nothing at all
                if unseen_signal:
                    continue
            elif not fenced:
                task.lost = True
                continue
            _commit_task(
                item.instance_id, instance, decisions, now, inbox_ids=task.inbox_ids, eager=eager, batch=writes
            )
            task.committed = True
        _write_batch(writes, eager)


def _parent_ids(instance_ids: Sequence[int]) -> list[int]:
    """The runs' parents (a run's parent never changes: read without a lock)."""
    if not instance_ids:
        return []
    return list(
        WorkflowInstance.objects.filter(pk__in=instance_ids, parent_id__isnull=False).values_list(
            "parent_id", flat=True
        )
    )


def _finish_workflow_task(item: Claim, inbox_ids: Sequence[int], closing: bool, check_signals: bool) -> FinishedTask:
    """Under the run's lock: whether inbox events arrived that the task did not see, and
    (with ``check_signals``) whether a signal is among them. Unless one is, the task's
    inbox events are deleted, and its item too (and reported) when it is closing or saw
    everything: then ``(more, False, deleted)``. A task no longer ours writes nothing:
    ``(False, False, False)`` (a batch's other tasks still commit)."""
    finished = dialect_for(connection).finish_workflow_task(
        item, inbox_ids, closing=closing, check_signals=check_signals
    )
    if finished is not None:
        return finished
    if not _fence(item).exists():
        return FinishedTask(False, False, False)
    unseen = InboxEvent.objects.filter(instance_id=item.instance_id).exclude(id__in=inbox_ids)
    if check_signals and unseen.filter(kind=EventKind.EVENT_RAISED).exists():
        return FinishedTask(True, True, False)
    more = unseen.exists()
    if inbox_ids:
        InboxEvent.objects.filter(id__in=inbox_ids).delete()
    deleted = _fence(item).delete()[0] if closing or not more else 0
    return FinishedTask(more, False, bool(deleted))


def _commit_task(
    instance_id: int,
    instance: LockedRun,
    decisions: TaskDecisions,
    now: datetime.datetime,
    *,
    inbox_ids: Sequence[int] = (),
    eager: Eager | None = None,
    batch: list[_TaskWrite] | None = None,
) -> None:
    """Write a workflow task's decisions for the locked run (its task item is dealt with).

    With ``batch``, an ordinary step (the run stays open and starts no child) is added to
    it instead, for ``_write_batch`` to write with the other runs' in one statement."""
    new_events, status = decisions.new_events, decisions.status
    closing = status in CLOSING_STATUSES
    first_seq = instance.history_length + 1
    history = _history_rows(instance_id, first_seq, new_events)
    updates: RunUpdates = {
        "history_length": first_seq + len(new_events) - 1,
        "vars": decisions.vars,
        # A run suspended while this task ran stays suspended.
        "status": WorkflowStatus.SUSPENDED if instance.status == WorkflowStatus.SUSPENDED and not closing else status,
        "waiting_on": (decisions.waiting_on or "")[:500],
        "task_error": None,
        "updated_at": now,
    }
    if instance.started_at is None:
        updates["started_at"] = new_events[0].timestamp
    if closing:
        updates.update({"result": decisions.result, "error": decisions.error, "closed_at": now})
        late: list[CarriedEvent] = []
        if status == WorkflowStatus.CONTINUED_AS_NEW:
            # Signals and a cancel request that arrived while this task ran go to the next run.
            late = list(
                InboxEvent.objects.filter(
                    instance_id=instance_id, kind__in=(EventKind.EVENT_RAISED, EventKind.CANCEL_REQUESTED)
                )
                .exclude(id__in=inbox_ids)
                .values("kind", "name", "payload")
            )
        # Outstanding activities and timers die with the run; late results find no item.
        dialect_for(connection).delete_run_rows(WorkItem.objects.filter(instance_id=instance_id))
        dialect_for(connection).delete_run_rows(InboxEvent.objects.filter(instance_id=instance_id))
        _write_task(instance_id, history, updates)
        if status == WorkflowStatus.CONTINUED_AS_NEW:
            _continue_as_new(instance_id, instance, new_events[-1].payload, late, now)
        else:
            _notify_parent(instance, status, decisions.result, decisions.error, now)
        # Children called in the closing task still start; their parent-close policy
        # applies right after (an abandoned child is how to fire and forget).
        _start_children(instance_id, instance, new_events, now, parent_open=False)
        notify.notify_closed(str(instance.run_id))
    else:
        canceled_timers = {e.task_id for e in new_events if e.kind == EventKind.TIMER_CANCELED}
        if canceled_timers:
            dialect_for(connection).delete_run_rows(
                WorkItem.objects.filter(instance_id=instance_id, kind=WorkItemKind.TIMER, task_id__in=canceled_timers)
            )
        # A timer started and canceled in this very task gets no work item.
        scheduled = [e for e in new_events if not (e.kind == EventKind.TIMER_STARTED and e.task_id in canceled_timers)]
        items = _work_items_for(instance_id, instance, scheduled, now)
        leased = _lease_eagerly(items, eager, now)
        write = _TaskWrite(instance_id, instance, now, updates, history, items, leased, first_seq, new_events)
        if batch is not None and not any(e.kind == EventKind.CHILD_WORKFLOW_SCHEDULED for e in new_events):
            batch.append(write)
            return
        _write_task(instance_id, history, updates, items)
        _announce_work_items(items, leased, instance, now, eager)
        _start_children(instance_id, instance, new_events, now)
    _log_history(instance, first_seq, new_events)
    crash_point("before_task_commit")


@dataclasses.dataclass
class _TaskWrite:
    """A workflow task's writes that ``_commit_task`` left to ``_write_batch``."""

    instance_id: int
    instance: LockedRun
    now: datetime.datetime
    updates: RunUpdates
    history: list[HistoryEvent]
    items: list[WorkItem]
    leased: list[WorkItem]
    first_seq: int
    new_events: Sequence[Event]


def _write_batch(writes: Sequence[_TaskWrite], eager: Eager | None) -> None:
    """Write batched workflow tasks: one statement for all runs whose updates match."""
    groups: dict[tuple[str, ...], list[_TaskWrite]] = {}
    for write in writes:
        groups.setdefault(tuple(write.updates), []).append(write)
    for group in groups.values():
        _write_tasks(
            [(write.instance_id, write.updates) for write in group],
            [row for write in group for row in write.history],
            [item for write in group for item in write.items],
        )
    for queue in sorted(set().union(*(_queues_to_wake(write.items) for write in writes))):
        notify.notify_work(queue)  # once a queue, not once a run
    for write in writes:
        _hand_over(write.leased, write.instance, write.now, eager)
        _log_history(write.instance, write.first_seq, write.new_events)
        crash_point("before_task_commit")


def _lease_eagerly(items: list[WorkItem], eager: Eager | None, now: datetime.datetime) -> list[WorkItem]:
    """Lease new activities, up to ``eager.limit``, to ``eager.owner`` as they are inserted."""
    leased: list[WorkItem] = []
    if eager is None or not connection.features.can_return_rows_from_bulk_insert:
        return leased
    limited = queue_limits.known_limited_queues()
    for item in items:
        if item.kind != WorkItemKind.ACTIVITY or item.parked_at is not None or item.queue not in eager.queues:
            continue
        # The room is shared by every task of a batch.
        spare = eager.limit <= 0
        if spare and (eager.spare <= 0 or _attempt_clock_runs(activity_options(item.payload))):
            continue
        if item.queue in limited:
            # Within the free slots of its queue only, under the queue's lock.
            if eager.slots is None:
                eager.slots = queue_limits.EagerSlots(eager.owner, now)
            if not eager.slots.take(item.queue, item.concurrency_key):
                continue
        if spare:
            eager.spare -= 1
        else:
            eager.limit -= 1
        item.lease_owner, item.attempt, item.claimed_at = eager.owner, 1, now
        item.lease_expires_at = now + _seconds(eager.lease_seconds)
        leased.append(item)
    return leased


def _attempt_clock_runs(options: ActivityOptions) -> bool:
    """Whether an attempt has a timeout that starts with its claim."""
    return options.get("start_to_close_timeout") is not None or options.get("heartbeat_timeout") is not None


def _announce_work_items(
    items: list[WorkItem],
    leased: list[WorkItem],
    instance: LockedRun,
    now: datetime.datetime,
    eager: Eager | None,
) -> None:
    """Wake workers for the inserted unleased work, and hand the leased activities to ``eager``."""
    for queue in sorted(_queues_to_wake(items)):
        notify.notify_work(queue)
    _hand_over(leased, instance, now, eager)


def _queues_to_wake(items: Iterable[WorkItem]) -> set[str]:
    return {item.queue for item in items if item.lease_owner is None and item.kind != WorkItemKind.TIMER}


def _hand_over(leased: list[WorkItem], instance: LockedRun, now: datetime.datetime, eager: Eager | None) -> None:
    """Give the activities leased as they were inserted to ``eager``, once committed."""
    if not leased or eager is None:
        return
    claims = []
    for item in leased:
        assert item.lease_expires_at is not None  # _lease_eagerly leased it
        claims.append(
            Claim(
                id=item.pk,
                kind=item.kind,
                instance_id=item.instance_id,
                queue=item.queue,
                name=item.name,
                task_id=item.task_id,
                payload=item.payload,
                attempt=1,
                owner=eager.owner,
                claimed_at=now,
                lease_expires_at=item.lease_expires_at,
                created_at=now,
                workflow_id=instance.workflow_id,
                run_id=str(instance.run_id),
            )
        )
    _cap_leases(claims)
    _log_claims(claims, eager=True)
    # Only once committed: a rolled-back schedule must not run anything.
    transaction.on_commit(lambda: eager.claims.extend(claims))


def _release_workflow_task(item: Claim, instance: LockedRun, now: datetime.datetime) -> int:
    """Hand a claimed workflow task back, claimable at once (or parked if the run is suspended)."""
    notify.notify_work(item.queue)
    return _fence(item).update(
        lease_owner=None,
        lease_expires_at=None,
        due_at=now,
        failures=0,
        last_error=None,
        parked_at=_parked_at(instance, now),
        dispatched_at=None,
    )


def _continue_as_new(
    instance_id: int,
    instance: LockedRun,
    request: dict[str, Any],
    late: Sequence[CarriedEvent],
    now: datetime.datetime,
) -> None:
    """Start the next run of a run that continued as new (same transaction, same workflow id)."""
    successor = _create_run(
        workflow_id=instance.workflow_id,
        workflow_name=instance.workflow_name,
        queue=instance.queue,
        args=request["args"],
        kwargs=request["kwargs"],
        now=now,
        continued_from_id=instance_id,
        parent_id=instance.parent_id,
        parent_task_id=instance.parent_task_id,
        parent_close_policy=instance.parent_close_policy,
    )
    carried: list[CarriedEvent] = [
        {"kind": EventKind.EVENT_RAISED, "name": event["name"], "payload": event["payload"]}
        for event in request.get("events", ())
    ]
    InboxEvent.objects.bulk_create(
        InboxEvent(
            instance_id=successor.pk, kind=event["kind"], name=event["name"], payload=event["payload"], timestamp=now
        )
        for event in [*carried, *late]
    )
    if any(event["kind"] == EventKind.CANCEL_REQUESTED for event in late):
        WorkflowInstance.objects.filter(pk=successor.pk).update(cancel_requested_at=now)


def fail_workflow_task(
    item: Claim,
    error: dict[str, Any],
    *,
    max_failures: int,
    backoff: float,
    backoff_max: float,
    expired_only: bool = False,
) -> bool:
    """Record an engine-level failure; back off, or park after ``max_failures``. Returns parked.
    With ``expired_only`` (the reaper), a run locked by someone else is skipped (``LeaseLost``)."""
    with write_transaction():
        instance = _lock_instance(item.instance_id, skip_locked=expired_only)
        if instance is None:
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
            parked_at=now if parked else _parked_at(instance, now),
            dispatched_at=None,
        )
        if not fenced:
            raise lease_lost(item)
        WorkflowInstance.objects.filter(pk=item.instance_id).update(task_error=error, updated_at=now)
        state_change(
            "task_failed",
            workflow_id=instance.workflow_id,
            run_id=str(instance.run_id),
            item=item.id,
            failures=failures,
            parked=parked,
            retry_at=None if parked else now + _seconds(delay),
            error_type=error.get("type"),
            error=error.get("message"),
        )
    return parked


def unpark_workflow_task(instance_id: int) -> bool:
    """Make a parked (or backing-off) workflow task claimable now, e.g. after a code fix."""
    with write_transaction():
        instance = _lock_instance(instance_id)
        if instance is None or instance.status == WorkflowStatus.SUSPENDED:
            return False  # resume() releases a suspended run's work
        notify.notify_work(instance.queue)
        unparked = bool(
            WorkItem.objects.filter(
                instance_id=instance_id, kind=WorkItemKind.WORKFLOW, lease_owner__isnull=True
            ).update(parked_at=None, failures=0, due_at=db_now(), dispatched_at=None)
        )
        if unparked:
            state_change("task_unparked", workflow_id=instance.workflow_id, run_id=str(instance.run_id))
        return unparked
