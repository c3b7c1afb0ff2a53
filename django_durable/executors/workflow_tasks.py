"""Running claimed workflow tasks and committing their decisions (several runs' at once:
group commit), and a run's next task inline within an activity result's commit: shared
by durable_worker and remote executors (Celery)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from django.db import DatabaseError, close_old_connections

from .. import store
from ..conf import durable_settings
from ..engine import TaskOutcome
from ..engine.events import EventKind
from ..engine.failures import failure_from_exception
from ..engine.resident import ResidentRun
from ..faults import crash_point
from ..models import OPEN_STATUSES
from .cache import RunCache
from .replayer import run_task

logger = logging.getLogger("django_durable.worker")


def execute_workflow_task(item: store.Claim, cache: RunCache | None = None, eager: store.Eager | None = None) -> None:
    """Run the workflow's code up to where it waits, and commit the decisions.

    With a ``cache`` that holds the run's code parked where its last task left it, the
    code resumes with the new events; otherwise it replays the run's history.
    """
    execute_workflow_tasks([item], cache, eager)


def execute_workflow_tasks(
    items: list[store.Claim],
    cache: RunCache | None = None,
    eager: store.Eager | None = None,
    *,
    settled: Callable[[store.Claim], None] | None = None,
) -> None:
    """``execute_workflow_task`` for claimed tasks of different runs: their inputs are read
    together and their decisions committed in one transaction (group commit). A task
    whose code fails is recorded on its own. ``settled(item)`` is called for each task
    once its lease needs no renewal. The first database error is raised, after the others'
    work is done."""
    residents = {item.id: cache.take(item.instance_id) for item in items} if cache is not None else {}
    known_lengths = {item_id: held.length for item_id, held in residents.items() if held is not None}
    ran: list[_RanTask] = []
    error: DatabaseError | None = None
    try:
        try:
            loaded: dict[int, store.WorkflowTaskInput | None] | None = store.load_workflow_tasks(
                items, known_lengths=known_lengths
            )
        except DatabaseError:
            raise
        except Exception:  # a row one task cannot read: each loads its own, and that one fails
            logger.exception("Could not read %d workflow tasks together; reading them one by one.", len(items))
            loaded = None
        for item in items:
            try:
                task = _run_one(item, loaded, known_lengths.get(item.id), residents.pop(item.id, None), cache)
            except DatabaseError as exc:
                error = error or exc
                continue
            if task is not None:
                ran.append(task)
            elif settled is not None:
                settled(item)
        if ran:
            commit_error = _commit_tasks(ran, eager)
            error = error or commit_error
        for task in ran:
            if task.settled:
                _after_commit(task, cache)
                if settled is not None:
                    settled(task.completion.item)
    finally:
        # Whatever did not make it into the cache is dropped: the next task replays.
        for leftover in [*residents.values(), *(task.outcome.resident for task in ran)]:
            if leftover is not None:
                leftover.close()
    if error is not None:
        raise error


@dataclasses.dataclass
class _RanTask:
    """A workflow task whose code ran, and its decisions to commit."""

    input: store.WorkflowTaskInput
    outcome: TaskOutcome
    completion: store.TaskCompletion
    settled: bool = False  # its outcome is recorded: its lease needs no renewal
    failed: bool = False  # its commit raised, and that was recorded as the task's failure


def _run_one(
    item: store.Claim,
    loaded: dict[int, store.WorkflowTaskInput | None] | None,
    known_length: int | None,
    resident: ResidentRun | None,
    cache: RunCache | None,
) -> _RanTask | None:
    """Run one task's code (its input read with the others', or here): what to commit, or
    None when there is nothing to (the run is gone or closed, or the code failed, which is
    recorded)."""
    try:
        task = loaded[item.id] if loaded is not None else store.load_workflow_task(item, known_length=known_length)
        if task is not None and resident is not None and not _still_current(task):
            resident.close()  # another worker ran the run's task since: replay
            resident = None
            if task.known_length is not None:
                task = store.load_workflow_task(item)
        if task is None or task.status not in OPEN_STATUSES:
            store.discard(item)
            return None
        if cache is not None:
            cache.count("resumed" if resident is not None else "replayed")
        outcome = run_task(
            workflow_id=task.workflow_id,
            run_id=task.run_id,
            workflow_name=task.workflow_name,
            queue=task.queue,
            history=task.history,
            inbox=task.inbox,
            now=item.claimed_at,
            resident=resident,
        )
        resident = None  # run_workflow_task owns it now: it is outcome.resident or closed
    except DatabaseError:
        raise
    except BaseException as exc:  # noqa: BLE001 - NotRegistered, sys.exit() in workflow code, a bug: back off
        record_workflow_task_failure(item, str(item.instance_id), exc)
        return None
    finally:
        if resident is not None:
            resident.close()
    if outcome.task_error is not None:
        if outcome.resident is not None:
            outcome.resident.close()
        record_workflow_task_failure(item, task.workflow_id, outcome.task_error)
        return None
    decisions = store.TaskDecisions.from_outcome(outcome)
    return _RanTask(task, outcome, store.TaskCompletion(item, decisions, task.inbox_ids))


def _commit_tasks(ran: list[_RanTask], eager: store.Eager | None) -> DatabaseError | None:
    """Commit the tasks' decisions together; should that fail, each on its own (a deadlock
    with another run's commit, or a failure one task's writes caused, holds up no other).
    Returns the first database error; the tasks it kept from committing stay unsettled."""
    room = (eager.limit, eager.spare) if eager is not None else None
    try:
        store.complete_workflow_tasks([task.completion for task in ran], eager=eager)
    except DatabaseError as exc:
        _give_back(eager, room)  # nothing of the transaction was leased
        if len(ran) == 1:
            return exc
        logger.warning(
            "Database error committing %d workflow tasks; committing them again, one by one.", len(ran), exc_info=True
        )
        close_old_connections()
    except store.LeaseLost:
        _give_back(eager, room)
        if len(ran) == 1:
            ran[0].completion.lost = ran[0].settled = True
            return None
        logger.warning("A workflow task of %d was lost as they committed; committing them again, one by one.", len(ran))
    except Exception as exc:  # a bug in a task's writes: that task backs off
        _give_back(eager, room)
        if len(ran) == 1:
            try:
                record_workflow_task_failure(ran[0].completion.item, ran[0].input.workflow_id, exc)
            except DatabaseError as recording:
                return recording
            ran[0].failed = ran[0].settled = True
            return None
        logger.exception("Error committing %d workflow tasks; committing them again, one by one.", len(ran))
    else:
        for task in ran:
            task.settled = True
        return None
    first = None
    for task in ran:
        task.completion.committed = task.completion.lost = False
        error = _commit_tasks([task], eager)
        first = first or error
    return first


def _give_back(eager: store.Eager | None, room: tuple[int, int] | None) -> None:
    if eager is not None and room is not None:
        eager.limit, eager.spare = room


def _after_commit(task: _RanTask, cache: RunCache | None) -> None:
    item, outcome, name = task.completion.item, task.outcome, task.input.workflow_name
    if task.failed:
        return
    if task.completion.lost:
        logger.warning("Workflow task discarded: %s", store.lease_lost(item))
    elif not task.completion.committed:
        logger.info("Workflow %s: an event arrived as it closed; running its task again.", task.input.workflow_id)
    else:
        if outcome.resident is not None and cache is not None:
            outcome.resident.committed()
            cache.put(item.instance_id, outcome.resident)
            outcome.resident = None
        try:
            after_workflow_task(outcome, item.instance_id, task.input.workflow_id, name)
        except Exception:  # committed: the sweep applies parent-close policies later
            logger.exception("Workflow %s (%s): error after its task committed", task.input.workflow_id, name)


def _still_current(task: store.WorkflowTaskInput) -> bool:
    """Whether parked code is current: nothing but events appended from outside (suspend,
    resume) was stored after it, in particular no other worker's workflow task."""
    return task.known_length is not None and not any(
        event.kind == EventKind.WORKFLOW_TASK_STARTED for event in task.history
    )


def record_workflow_task_failure(item: store.Claim, workflow_id: str, error: BaseException) -> None:
    try:
        parked = store.fail_workflow_task(
            item,
            failure_from_exception(error),
            max_failures=durable_settings.WORKFLOW_TASK_MAX_FAILURES,
            backoff=durable_settings.WORKFLOW_TASK_RETRY_INITIAL,
            backoff_max=durable_settings.WORKFLOW_TASK_RETRY_MAXIMUM,
        )
    except store.LeaseLost as exc:
        logger.warning("Workflow task failure discarded: %s", exc)
        return
    logger.error(
        "Workflow task of %s failed (%s)%s: %s",
        workflow_id,
        type(error).__name__,
        "; parked after too many failures" if parked else "; will retry",
        error,
    )


class InlineTask:
    """A run's next workflow task, run inside the transaction that records an activity's
    result: one commit per step instead of three (result, workflow task claim, decisions).
    Code this worker holds resumes with the result alone; otherwise (another worker ran
    the run's last task, or the code was dropped) the history is read under the run's lock
    and replayed, and this worker holds the code from then on. An engine error declines,
    and an ordinary task follows."""

    def __init__(self, cache: RunCache) -> None:
        self.cache = cache
        self.ran = False
        self._continuation: store.Continuation | None = None
        self._outcome: TaskOutcome | None = None

    def __call__(self, continuation: store.Continuation) -> store.TaskDecisions | None:
        resident = self.cache.take(continuation.instance_id)
        if resident is not None and resident.length != continuation.history_length:
            resident.close()  # not current: another worker ran a task of the run since
            resident = None
        try:
            outcome = run_task(
                workflow_id=continuation.workflow_id,
                run_id=continuation.run_id,
                workflow_name=continuation.workflow_name,
                queue=continuation.queue,
                history=[] if resident is not None else store.get_history(continuation.instance_id),
                inbox=continuation.inbox,
                now=continuation.now,
                resident=resident,
            )
        except BaseException:  # noqa: BLE001 - e.g. sys.exit() in workflow code: an ordinary task will fail
            if resident is not None:
                resident.close()
            return None
        if resident is None:
            self.cache.count("replayed")
        if outcome.task_error is not None:
            return None
        self._continuation, self._outcome = continuation, outcome
        return store.TaskDecisions.from_outcome(outcome)

    def add_result(self, *, ran: bool) -> None:
        """After the transaction: one of the run's results, and whether this task took it."""
        self.ran = self.ran or ran
        self.cache.count("inline" if ran else "declined")

    def settle(self) -> None:
        """After the transaction: keep the code if its task committed, else drop it."""
        outcome, continuation = self._outcome, self._continuation
        if outcome is None or continuation is None:
            return
        if outcome.resident is not None:
            if self.ran:
                outcome.resident.committed()
                self.cache.put(continuation.instance_id, outcome.resident)
            else:
                outcome.resident.close()
            outcome.resident = None
        if self.ran:
            after_workflow_task(outcome, continuation.instance_id, continuation.workflow_id, continuation.workflow_name)


def after_workflow_task(outcome: TaskOutcome, instance_id: int, workflow_id: str, workflow_name: str) -> None:
    """Once a workflow task committed: log it and, if the run closed, settle its children."""
    crash_point("after_task_commit")
    # Every step of an open run at DEBUG (at INFO, a line per step costs throughput); closes at INFO.
    logger.log(
        logging.INFO if outcome.status not in OPEN_STATUSES else logging.DEBUG,
        "Workflow %s (%s): %s%s",
        workflow_id,
        workflow_name,
        outcome.status,
        f", waiting on {outcome.waiting_on}" if outcome.waiting_on else "",
    )
    if outcome.history_warning:
        logger.warning(outcome.history_warning)
    if outcome.status not in OPEN_STATUSES:
        store.apply_parent_close_policies(parent_id=instance_id)
