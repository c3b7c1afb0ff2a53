"""Running one claimed activity attempt: shared by durable_worker's thread pool and
remote executors (Celery), so both record outcomes through the same store calls."""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Any

from django.db import DatabaseError, close_old_connections

from .. import registry, store
from ..activity import ActivityInfo, ResultPending, _current, _Scope
from ..conf import durable_settings
from ..converter import from_json, to_json
from ..engine.failures import failure_from_exception
from ..exceptions import ActivityNotPending, NotRegistered, SerializationError
from ..tokens import make_task_token

logger = logging.getLogger("django_durable.worker")


class RunningActivity:
    """An activity attempt running in this process, and its latest heartbeat."""

    def __init__(self, item: store.Claim) -> None:
        self.item = item
        self.heartbeat_at: datetime.datetime | None = None

    def heartbeat(self, details: Any) -> bool:
        try:
            self.heartbeat_at = store.record_heartbeat(
                self.item, details, lease_seconds=durable_settings.LEASE_SECONDS
            )
        except store.LeaseLost:
            raise ActivityNotPending(
                f"Attempt {self.item.attempt} of activity {self.item.name!r} is no longer pending "
                "(it timed out or was superseded); its result will be discarded."
            ) from None
        return store.cancel_requested(self.item.instance_id)


def execute_activity(running: RunningActivity) -> None:
    """Run the attempt's function and record its outcome (raises LeaseLost if it is no longer ours)."""
    item = running.item
    try:
        definition = registry.get_activity_definition(item.name)
        args = from_json(item.payload.get("args", []))
        kwargs = from_json(item.payload.get("kwargs", {}))
    except NotRegistered as exc:
        record_failure(item, exc, retryable=True)
        return
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
    )
    scope = _current.set(_Scope(info=info, heartbeat=running.heartbeat))
    logger.info("Running activity %s of %s (attempt %d)", item.name, item.workflow_id, item.attempt)
    try:
        value = definition.fn(*args, **kwargs)
    except ResultPending:
        store.await_completion(item, running.heartbeat_at)
        logger.info("Activity %s of %s (attempt %d) awaits completion by task token",
                    item.name, item.workflow_id, item.attempt)
        return
    except Exception as exc:
        record_failure(item, exc, retryable=True)
        return
    finally:
        _current.reset(scope)
    try:
        result = to_json(value, f"the result of activity {item.name!r}")
    except SerializationError as exc:
        record_failure(item, exc, retryable=False)
        return
    store.complete_activity(item, result)
    logger.info("Activity %s of %s completed (attempt %d)", item.name, item.workflow_id, item.attempt)


def record_failure(item: store.Claim, exc: Exception, *, retryable: bool) -> None:
    retry_at = store.fail_activity(item, failure_from_exception(exc), retryable=retryable)
    if retry_at is not None:
        logger.info("Activity %s attempt %d failed (%s: %s); retry at %s", item.name, item.attempt,
                    type(exc).__name__, exc, retry_at.isoformat())
    else:
        logger.warning("Activity %s failed for good on attempt %d: %s: %s", item.name, item.attempt,
                       type(exc).__name__, exc)


def run_activity_item(item: store.Claim, *, lease_seconds: float) -> None:
    """Run a claimed attempt outside durable_worker, renewing its lease from a thread
    of its own meanwhile (durable_worker's renewer does not know about it)."""
    running = RunningActivity(item)
    done = threading.Event()

    def renew() -> None:
        while not done.wait(lease_seconds / 3):
            try:
                close_old_connections()
                cap = store.attempt_deadline(item, running.heartbeat_at)
                lost = store.renew_leases(owner=item.owner, leases=[(item.id, item.attempt, cap)],
                                          lease_seconds=lease_seconds)
                if lost and not done.is_set():
                    logger.warning("Lost the lease of work item %s; its outcome will be discarded.", item.id)
            except DatabaseError as exc:
                logger.warning("Could not renew the lease of work item %s (%s); retrying.", item.id, exc)
        close_old_connections()

    renewer = threading.Thread(target=renew, name=f"durable-lease-{item.id}", daemon=True)
    renewer.start()
    try:
        execute_activity(running)
    except store.LeaseLost as exc:
        logger.warning("Activity outcome discarded: %s", exc)
    finally:
        done.set()
        renewer.join()
