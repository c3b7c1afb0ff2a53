"""Entry points for remote executors (Celery): run a work item claimed outside
durable_worker, renewing its lease from a thread of its own meanwhile."""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.db import DatabaseError, close_old_connections

from .. import store
from .activities import RunningActivity, execute_activity
from .outcomes import Lease
from .workflow_tasks import execute_workflow_task

logger = logging.getLogger("django_durable.worker")


@contextmanager
def renewing_lease(
    item: store.Claim,
    *,
    lease_seconds: float,
    deadline: Callable[[], datetime.datetime | None],
    lease: Lease | None = None,
) -> Iterator[None]:
    """Renew ``item``'s lease from a thread of its own while the block runs outside
    durable_worker (whose renewer does not know about it), keeping ``lease`` up to date."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(lease_seconds / 3):
            try:
                close_old_connections()
                asked_at = time.monotonic()
                lost = store.renew_leases(
                    owner=item.owner,
                    leases=[store.LeaseRenewal(item.id, item.attempt, deadline())],
                    lease_seconds=lease_seconds,
                )
                if lease is not None:
                    lease.renewed(asked_at=asked_at, lost=bool(lost))
                if lost and not done.is_set():
                    logger.warning("Lost the lease of work item %s; its outcome will be discarded.", item.id)
            except DatabaseError as exc:
                logger.warning("Could not renew the lease of work item %s (%s); retrying.", item.id, exc)
        close_old_connections()

    renewer = threading.Thread(target=renew, name=f"durable-lease-{item.id}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()


def run_activity_item(item: store.Claim, *, lease_seconds: float) -> None:
    """Run a claimed attempt outside durable_worker, renewing its lease meanwhile."""
    running = RunningActivity(item)
    with renewing_lease(
        item,
        lease_seconds=lease_seconds,
        lease=running.lease,
        deadline=lambda: store.attempt_deadline(item, running.heartbeat_at),
    ):
        try:
            execute_activity(running)
        except store.LeaseLost as exc:
            logger.warning("Activity outcome discarded: %s", exc)


def run_workflow_task_item(item: store.Claim, *, lease_seconds: float) -> None:
    """Run a claimed workflow task outside durable_worker, renewing its lease meanwhile."""
    with renewing_lease(item, lease_seconds=lease_seconds, deadline=lambda: None):
        execute_workflow_task(item)
