"""Running one claimed activity attempt and recording its outcome: shared by durable_worker
and remote executors (Celery), so both record outcomes through the same store calls."""

from __future__ import annotations

import datetime
import logging
from typing import Any

from .. import registry, store
from ..activity import ActivityInfo, ResultPending, _current, _Scope
from ..conf import durable_settings
from ..converter import from_json, to_json
from ..engine.failures import failure_from_exception
from ..exceptions import (
    ActivityNotPending,
    NotRegistered,
    SerializationError,
)
from ..faults import crash_point
from ..store.records import activity_options
from ..tokens import make_task_token
from .cache import RunCache
from .outcomes import Lease, record_outcome
from .workflow_tasks import InlineTask

logger = logging.getLogger("django_durable.worker")


class RunningActivity:
    """An activity attempt running in this process, its latest heartbeat and its lease."""

    def __init__(self, item: store.Claim) -> None:
        self.item = item
        self.heartbeat_at: datetime.datetime | None = None
        self.lease = Lease(durable_settings.LEASE_SECONDS)

    def heartbeat(self, details: Any) -> bool:
        crash_point("before_heartbeat")
        try:
            self.heartbeat_at = store.record_heartbeat(self.item, details, lease_seconds=durable_settings.LEASE_SECONDS)
        except store.LeaseLost:
            raise ActivityNotPending(
                f"Attempt {self.item.attempt} of activity {self.item.name!r} is no longer pending "
                "(it timed out or was superseded); its result will be discarded."
            ) from None
        return store.cancel_requested(self.item.instance_id)


def execute_activity(
    running: RunningActivity, *, cache: RunCache | None = None, eager: store.Eager | None = None
) -> None:
    """Run the attempt's function and record its outcome (raises LeaseLost if it is no longer ours).

    With a ``cache`` holding the run's code, the run's next workflow task runs within the
    result's commit (see ``InlineTask``); activities it schedules may go to ``eager``.
    """
    finished = run_activity_function(running)
    if finished is None:
        return
    item = finished.item

    def commit() -> store.Completion:
        completion = store.Completion(item, finished.result)  # a failed try's flags do not carry over
        commit_activities([completion], cache=cache, eager=eager)
        return completion

    completion = record_outcome(commit, lease=running.lease, what=f"activity {item.name!r} attempt {item.attempt}")
    if completion.lost:
        raise store.lease_lost(item)


def run_activity_function(running: RunningActivity) -> store.Completion | None:
    """Run the attempt's function: its result, for ``commit_activities`` to record, or None
    when the attempt was settled here (it failed, was late, or awaits its task token)."""
    item = running.item
    if store.fail_late_attempt(item):
        logger.warning(
            "Activity %s of %s failed for good: attempt %d was claimed after its schedule_to_close_timeout",
            item.name,
            item.workflow_id,
            item.attempt,
        )
        return None
    try:
        definition = registry.get_activity_definition(item.name)
        args = from_json(item.payload.get("args", []))
        kwargs = from_json(item.payload.get("kwargs", {}))
    except NotRegistered as exc:
        # A deploy may yet register a project's activity; an internal one missing here (the
        # Tasks backend's, without that backend in TASKS) stays missing: fail it for good.
        record_failure(running, exc, retryable=not registry.is_internal(item.name))
        return None
    info = ActivityInfo(
        workflow_id=item.workflow_id,
        run_id=item.run_id,
        activity_id=str(item.task_id),
        activity_name=item.name,
        attempt=item.attempt,
        task_token=make_task_token(
            item_id=item.id, run_id=item.run_id, task_id=item.task_id or 0, attempt=item.attempt
        ),
        heartbeat_details=from_json(item.heartbeat_details),
        started_at=item.claimed_at,
        concurrency_key=activity_options(item.payload).get("concurrency_key"),
    )
    scope = _current.set(_Scope(info=info, heartbeat=running.heartbeat))
    logger.debug("Running activity %s of %s (attempt %d)", item.name, item.workflow_id, item.attempt)
    try:
        value = definition.fn(*args, **kwargs)
    except ResultPending:
        record_outcome(
            lambda: store.await_completion(item, running.heartbeat_at),
            lease=running.lease,
            what=f"that activity {item.name!r} attempt {item.attempt} awaits its task token",
        )
        logger.info(
            "Activity %s of %s (attempt %d) awaits completion by task token", item.name, item.workflow_id, item.attempt
        )
        return None
    except Exception as exc:  # noqa: BLE001 - whatever an activity raises is its failure
        record_failure(running, exc, retryable=True)
        return None
    finally:
        _current.reset(scope)
    try:
        result = to_json(value, f"the result of activity {item.name!r}", kind="activity_result")
    except SerializationError as exc:
        record_failure(running, exc, retryable=False)
        return None
    crash_point("before_activity_completion")
    return store.Completion(item, result)


def commit_activities(
    completions: list[store.Completion], *, cache: RunCache | None = None, eager: store.Eager | None = None
) -> None:
    """Record activities' results in one transaction. With a ``cache``, each run whose
    code it holds takes its next workflow task in that transaction too, one step for all
    of the run's results. Each completion comes back ``lost`` or not; a database error
    is raised."""
    inlines: dict[int, InlineTask] = {}
    if cache is not None:
        for completion in completions:
            completion.continue_run = inlines.setdefault(completion.item.instance_id, InlineTask(cache))
    committed = False
    try:
        store.complete_activities(completions, eager=eager)
        committed = True
    finally:
        for completion in completions:
            inline = inlines.get(completion.item.instance_id)
            if inline is not None:
                inline.add_result(ran=committed and completion.ran)
        for inline in inlines.values():
            inline.settle()
    for completion in completions:
        item = completion.item
        if completion.lost:
            continue
        crash_point("after_activity_commit")
        logger.debug("Activity %s of %s completed (attempt %d)", item.name, item.workflow_id, item.attempt)


def record_failure(running: RunningActivity, exc: Exception, *, retryable: bool) -> None:
    item, failure = running.item, failure_from_exception(exc)
    retry_at = record_outcome(
        lambda: store.fail_activity(item, failure, retryable=retryable),
        lease=running.lease,
        what=f"the failure of activity {item.name!r} attempt {item.attempt}",
    )
    if retry_at is not None:
        logger.info(
            "Activity %s attempt %d failed (%s: %s); retry at %s",
            item.name,
            item.attempt,
            type(exc).__name__,
            exc,
            retry_at.isoformat(),
        )
    else:
        logger.warning(
            "Activity %s failed for good on attempt %d: %s: %s", item.name, item.attempt, type(exc).__name__, exc
        )
