"""The Celery executor: durable_worker sends each due activity item (and, with
CELERY_WORKFLOW_TASKS, each due workflow task) as a Celery task; a Celery worker
claims that item by id and runs it.

The app config imports this module when ``ACTIVITY_EXECUTOR`` is "celery", so the
shared tasks are registered on the project's own Celery app without any wiring.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from celery import current_app, shared_task
from django.db import close_old_connections
from django.utils.module_loading import import_string

from .. import store
from ..conf import durable_settings
from ..models import WorkItemKind
from . import ActivityExecutor
from .remote import run_activity_item, run_workflow_task_item

logger = logging.getLogger("django_durable.worker")

TASK_NAME = "django_durable.run_activity"
WORKFLOW_TASK_NAME = "django_durable.run_workflow_task"


def _claim_and_run(task: Any, item_id: int, kind: str, run: Callable[..., None]) -> None:
    close_old_connections()
    try:
        process = f"celery:{socket.gethostname()}:{os.getpid()}:"
        lease_seconds = float(durable_settings.LEASE_SECONDS)
        owner = f"{process}{task.request.id}"
        item = store.claim_item(item_id, owner=owner, lease_seconds=lease_seconds, kind=kind, worker=process)
        if item is None:
            logger.info(
                "Work item %s is not claimable (running elsewhere, finished, not due or its queue full): skipped.",
                item_id,
            )
            return
        run(item, lease_seconds=lease_seconds)
    finally:
        close_old_connections()


@shared_task(bind=True, name=TASK_NAME, ignore_result=True)
def run_activity(task: Any, item_id: int) -> None:
    """Claim activity item ``item_id`` and run it; a duplicate delivery finds it leased or gone."""
    _claim_and_run(task, item_id, WorkItemKind.ACTIVITY, run_activity_item)


@shared_task(bind=True, name=WORKFLOW_TASK_NAME, ignore_result=True)
def run_workflow_task(task: Any, item_id: int) -> None:
    """Claim workflow task item ``item_id`` and run it; a duplicate delivery finds it leased or gone."""
    _claim_and_run(task, item_id, WorkItemKind.WORKFLOW, run_workflow_task_item)


class CeleryExecutor(ActivityExecutor):
    def __init__(self) -> None:
        app_path = durable_settings.CELERY_APP
        self.app = import_string(app_path) if app_path else current_app
        self.queues: dict[str, str] = dict(durable_settings.CELERY_QUEUES or {})

    def send(self, item_id: int, queue: str) -> None:
        # send_task by name: the sender need not have the task registered with its app.
        self.app.send_task(TASK_NAME, args=[item_id], queue=self.queues.get(queue, queue))

    def send_workflow_task(self, item_id: int, queue: str) -> None:
        self.app.send_task(WORKFLOW_TASK_NAME, args=[item_id], queue=self.queues.get(queue, queue))
