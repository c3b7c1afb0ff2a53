"""Where activities run. ``durable_worker`` runs them in its own thread pool
("threads", the default) or hands each due activity to an ``ActivityExecutor``
(``DURABLE["ACTIVITY_EXECUTOR"]``: "celery" or a dotted path) that runs it elsewhere.
An executor with ``send_workflow_task`` can take workflow tasks too, when
``DURABLE["CELERY_WORKFLOW_TASKS"]`` asks for it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from django.utils.module_loading import import_string

BUILTIN_EXECUTORS = {"celery": "django_durable.executors.celery.CeleryExecutor"}


class ActivityExecutor:
    """Sends an activity work item to be run elsewhere.

    ``send`` only transports the item id: the receiving side claims the item with
    ``store.claim_item()`` and runs it with ``remote.run_activity_item()``, so a
    duplicated or stale message runs nothing.
    """

    def send(self, item_id: int, queue: str) -> None:
        raise NotImplementedError

    # Optional: ``send_workflow_task(item_id, queue)`` (see ``WorkflowTaskExecutor``).


@runtime_checkable
class WorkflowTaskExecutor(Protocol):
    """An executor that takes workflow tasks too: the receiving side claims the item and runs
    it with ``remote.run_workflow_task_item()``."""

    def send_workflow_task(self, item_id: int, queue: str) -> None: ...


def load_executor(name: str) -> ActivityExecutor | None:
    """The executor named by the ACTIVITY_EXECUTOR setting; None for "threads"."""
    if name == "threads":
        return None
    return import_string(BUILTIN_EXECUTORS.get(name, name))()
