"""The verbs on a run: signal, cancel, suspend, resume, terminate, purge, rerun, and the
parent-close policy of children whose parent closed."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from django.db import IntegrityError, connection
from django.db.models import Q

from .. import notify
from ..engine.events import COMMAND_KINDS, COMPLETION_KINDS, Event, EventKind, ParentClosePolicy
from ..exceptions import (
    WorkflowAlreadyExists,
    WorkflowNotFound,
    WorkflowStateError,
    WorkflowStillOpen,
)
from ..models import (
    OPEN_STATUSES,
    IdReusePolicy,
    WorkflowInstance,
    WorkflowStatus,
    WorkItem,
    WorkItemKind,
)
from ..statelog import state_change
from .clock import db_now
from .records import EVENT_FIELDS, JSON, LockedRun
from .runs import (
    _append_event,
    _apply_id_reuse_policy,
    _create_run,
    _deliver,
    _lock_instance,
    _lock_open_run,
    _start_children,
    _terminate_locked,
    _work_items_for,
    get_instance,
)
from .transactions import write_transaction


def signal(workflow_id: str, run_id: str | None, name: str, payload: JSON) -> None:
    """Put an external event in the run's inbox; waits consume them in arrival order."""
    with write_transaction():
        instance_id, instance = _lock_open_run(workflow_id, run_id)
        _deliver(
            instance_id,
            instance,
            Event(kind=EventKind.EVENT_RAISED, timestamp=db_now(), name=name, payload={"payload": payload}),
        )


def request_cancel(workflow_id: str, run_id: str | None) -> None:
    """Ask the run to cancel: its code sees ``CancelledError`` at its next durable call."""
    with write_transaction():
        instance_id, instance = _lock_open_run(workflow_id, run_id)
        _request_cancel_locked(instance_id, instance, db_now())


def _request_cancel_locked(instance_id: int, instance: LockedRun, now: datetime.datetime) -> None:
    if instance.cancel_requested_at is not None:
        return  # asked already
    WorkflowInstance.objects.filter(pk=instance_id).update(cancel_requested_at=now, updated_at=now)
    _deliver(instance_id, instance, Event(kind=EventKind.CANCEL_REQUESTED, timestamp=now))


def cancel_requested(instance_id: int) -> bool:
    return WorkflowInstance.objects.filter(pk=instance_id, cancel_requested_at__isnull=False).exists()


def suspend(workflow_id: str, run_id: str | None, reason: str = "") -> None:
    """Stop the run's progress: its workflow tasks and activities not yet started wait
    (parked) until ``resume``; events that arrive meanwhile are kept."""
    with write_transaction():
        instance_id, instance = _lock_open_run(workflow_id, run_id)
        if instance.status == WorkflowStatus.SUSPENDED:
            raise WorkflowStateError(f"Workflow {workflow_id!r} is already suspended.")
        now = db_now()
        seq = _append_event(
            instance_id,
            instance,
            Event(kind=EventKind.EXECUTION_SUSPENDED, payload={"reason": reason}, timestamp=now),
        )
        WorkItem.objects.filter(
            instance_id=instance_id,
            kind__in=(WorkItemKind.WORKFLOW, WorkItemKind.ACTIVITY),
            lease_owner__isnull=True,
            parked_at__isnull=True,
        ).update(parked_at=now)
        WorkflowInstance.objects.filter(pk=instance_id).update(
            status=WorkflowStatus.SUSPENDED, history_length=seq, updated_at=now
        )


def resume(workflow_id: str, run_id: str | None) -> None:
    """Let a suspended run go on from where it stood."""
    with write_transaction():
        instance_id, instance = _lock_open_run(workflow_id, run_id)
        if instance.status != WorkflowStatus.SUSPENDED:
            raise WorkflowStateError(f"Workflow {workflow_id!r} is not suspended (it is {instance.status}).")
        now = db_now()
        seq = _append_event(instance_id, instance, Event(kind=EventKind.EXECUTION_RESUMED, timestamp=now))
        # A workflow task parked for failing before the suspension gets one more try.
        WorkItem.objects.filter(instance_id=instance_id, parked_at__isnull=False).update(
            parked_at=None, dispatched_at=None
        )
        notify.notify_work(instance.queue)
        WorkflowInstance.objects.filter(pk=instance_id).update(
            status=WorkflowStatus.RUNNING if instance.started_at else WorkflowStatus.PENDING,
            history_length=seq,
            updated_at=now,
        )


def terminate(workflow_id: str, run_id: str | None, reason: str) -> None:
    """Close an open run at once: no workflow code runs; outstanding work is dropped."""
    with write_transaction():
        instance_id, instance = _lock_open_run(workflow_id, run_id)
        _terminate_locked(instance_id, instance, reason, db_now())


def purge(workflow_id: str, run_id: str | None) -> int:
    """Delete closed runs with their history: the given run, or every run of the id.
    Refuses (``WorkflowStillOpen``) while one of them is open. Returns the runs deleted."""
    runs = WorkflowInstance.objects.filter(workflow_id=workflow_id)
    if run_id is not None:
        runs = runs.filter(run_id=run_id)
    for parent_id in runs.exclude(status__in=OPEN_STATUSES).values_list("pk", flat=True):
        # Settle the children's parent-close policy, then unlink each under its own lock:
        # the delete's SET_NULL would lock them after their parent, against the lock order.
        apply_parent_close_policies(parent_id=parent_id)
        for child_id in WorkflowInstance.objects.filter(parent_id=parent_id).values_list("pk", flat=True):
            with write_transaction():
                _lock_instance(child_id)
                WorkflowInstance.objects.filter(pk=child_id).update(parent=None)
    with write_transaction():
        ids = list(runs.select_for_update().values_list("pk", "status"))
        if not ids:
            raise WorkflowNotFound(f"No workflow with id {workflow_id!r}" + (f" and run {run_id}." if run_id else "."))
        if any(status in OPEN_STATUSES for _, status in ids):
            raise WorkflowStillOpen(f"Workflow {workflow_id!r} is still open; terminate or cancel it first.")
        WorkflowInstance.objects.filter(pk__in=[pk for pk, _ in ids]).delete()
        state_change("purged", workflow_id=workflow_id, run_id=run_id, runs=len(ids))
    return len(ids)


def rerun(workflow_id: str, run_id: str | None, from_seq: int, new_workflow_id: str | None = None) -> WorkflowInstance:
    """A new run whose history is events ``1 .. from_seq - 1`` of a closed run: the
    workflow goes on from just before event ``from_seq`` under the current code."""
    source = get_instance(workflow_id, run_id)
    if source.is_open:
        raise WorkflowStillOpen(f"Workflow {workflow_id!r} is still open; only a closed run can be rerun.")
    if not 2 <= from_seq <= source.history_length:
        raise WorkflowStateError(
            f"Cannot rerun from event {from_seq}: pick an event between 2 and {source.history_length}."
        )
    prefix = [Event(**row) for row in source.history.filter(seq__lt=from_seq).values(*EVENT_FIELDS)]
    target_id = new_workflow_id or workflow_id
    try:
        with write_transaction():
            now = db_now()
            _apply_id_reuse_policy(target_id, IdReusePolicy.ALLOW_DUPLICATE, now)
            instance = _create_run(
                workflow_id=target_id,
                workflow_name=source.workflow_name,
                queue=source.queue,
                args=source.input.get("args", []),
                kwargs=source.input.get("kwargs", {}),
                now=now,
                history=prefix,
                rerun_of=source,
                rerun_from_seq=from_seq,
                started_at=source.started_at if len(prefix) > 1 else None,
            )
            locked = _lock_instance(instance.pk)
            assert locked is not None
            outstanding = _outstanding_commands(prefix)
            WorkItem.objects.bulk_create(_work_items_for(instance.pk, locked, outstanding, now))
            _start_children(instance.pk, locked, outstanding, now)
    except IntegrityError:
        # The new run refers to its source: a purge or prune that deleted the source
        # meanwhile fails the commit too, and an open run under the id is not the cause.
        if not WorkflowInstance.objects.filter(pk=source.pk).exists():
            raise WorkflowNotFound(
                f"Run {source.run_id} of workflow {workflow_id!r} was purged while it was being rerun."
            ) from None
        raise WorkflowAlreadyExists(f"Workflow {target_id!r} is already running.") from None
    return instance


def _outstanding_commands(history: Sequence[Event]) -> list[Event]:
    """Commands in ``history`` that nothing in it answers (to be issued again)."""
    answered = {
        event.task_id for event in history if event.kind in COMPLETION_KINDS or event.kind == EventKind.TIMER_CANCELED
    }
    return [event for event in history if event.kind in COMMAND_KINDS and event.task_id not in answered]


def _has_open_children(parent_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(_OPEN_CHILDREN_SQL, [parent_id, *map(str, OPEN_STATUSES)])
        return cursor.fetchone() is not None


_OPEN_CHILDREN_SQL = (
    f"SELECT 1 FROM {WorkflowInstance._meta.db_table} WHERE parent_id = %s "
    f"AND status IN ({', '.join(['%s'] * len(OPEN_STATUSES))}) LIMIT 1"
)


def apply_parent_close_policies(*, parent_id: int | None = None, limit: int = 100) -> int:
    """Terminate, or ask to cancel, open children whose parent has closed (by their policy).

    Runs after a parent closes and periodically, each child in its own transaction,
    so that a parent never locks its children (children lock their parent).
    """
    orphans = (
        WorkflowInstance.objects.filter(status__in=OPEN_STATUSES, parent__isnull=False)
        .exclude(parent__status__in=OPEN_STATUSES)
        .filter(
            Q(parent_close_policy=ParentClosePolicy.TERMINATE.value)
            | Q(parent_close_policy=ParentClosePolicy.CANCEL.value, cancel_requested_at__isnull=True)
        )
    )
    if parent_id is not None:
        if not _has_open_children(parent_id):
            return 0  # most runs: one indexed lookup instead of compiling the query above on every close
        orphans = orphans.filter(parent_id=parent_id)
    handled = 0
    for child_id in list(orphans.values_list("pk", flat=True)[:limit]):
        with write_transaction():
            # The periodic sweep (every worker's loop) skips a busy child; the next sweep settles it.
            child = _lock_instance(child_id, skip_locked=parent_id is None)
            if child is None or child.status not in OPEN_STATUSES:
                continue
            now = db_now()
            if child.parent_close_policy == ParentClosePolicy.TERMINATE.value:
                _terminate_locked(child_id, child, "its parent workflow closed (parent_close_policy=terminate)", now)
            else:
                _request_cancel_locked(child_id, child, now)
            handled += 1
    return handled
