"""Which Django model permissions each operation on runs and on schedules needs, and which
workflows may be started from outside the code.

One table for the HTTP API (``django_durable.api.permissions``) and the admin's
actions, so that a user may do the same things in both. Being staff grants
nothing by itself; active superusers have every permission (Django's ``has_perm``).
"""

from __future__ import annotations

from typing import Any

from . import registry
from .conf import durable_settings

VIEW = "django_durable.view_workflowinstance"
ADD = "django_durable.add_workflowinstance"
OPERATE = "django_durable.operate_workflowinstance"
DELETE = "django_durable.delete_workflowinstance"

PERMISSIONS: dict[str, str] = {
    "list": VIEW,
    "retrieve": VIEW,
    "history": VIEW,
    "start": ADD,
    "rerun": ADD,
    "signal": OPERATE,
    "cancel": OPERATE,
    "terminate": OPERATE,
    "suspend": OPERATE,
    "resume": OPERATE,
    "retry": OPERATE,
    "complete": OPERATE,  # an activity awaiting completion, as its task token's holder would
    "fail": OPERATE,
    "purge": DELETE,
}


def may(user: Any, operation: str) -> bool:
    """Whether ``user`` holds the permission ``operation`` needs; an operation not in the
    table is refused, whoever asks."""
    permission = PERMISSIONS.get(operation)
    return permission is not None and user is not None and bool(user.has_perm(permission))


SCHEDULE_VIEW = "django_durable.view_schedule"
SCHEDULE_ADD = "django_durable.add_schedule"
SCHEDULE_CHANGE = "django_durable.change_schedule"
SCHEDULE_DELETE = "django_durable.delete_schedule"

# Operations that start runs also need ADD, as starting a run does.
SCHEDULE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "list": (SCHEDULE_VIEW,),
    "retrieve": (SCHEDULE_VIEW,),
    "create": (SCHEDULE_ADD, ADD),
    "update": (SCHEDULE_CHANGE,),
    "update_workflow": (SCHEDULE_CHANGE, ADD),  # an update that changes the workflow or its arguments
    "pause": (SCHEDULE_CHANGE,),
    "unpause": (SCHEDULE_CHANGE,),
    "trigger": (SCHEDULE_CHANGE, ADD),
    "backfill": (SCHEDULE_CHANGE, ADD),
    "delete": (SCHEDULE_DELETE,),
}


# Flow control (the admin's Queues page): looking, and overriding a queue's limits, which
# Django's own change_queuestate does not allow.
QUEUE_VIEW = "django_durable.view_queuestate"
QUEUE_OVERRIDE = "django_durable.override_queue_limits"


def may_schedule(user: Any, operation: str) -> bool:
    """Whether ``user`` holds every permission the schedule ``operation`` needs; an
    operation not in the table is refused."""
    permissions = SCHEDULE_PERMISSIONS.get(operation)
    return permissions is not None and user is not None and bool(user.has_perms(permissions))


def check_startable(workflow_name: str) -> None:
    """What the HTTP API and the admin may not start, directly or through a schedule:
    internal workflows (``django_durable.*``), and those left out of ``API_STARTABLE_WORKFLOWS``
    when it is set. ``NotRegistered``, the answer for an unknown name, if so."""
    if registry.is_internal(workflow_name):
        raise registry.not_registered("workflow", workflow_name)
    allowed = durable_settings.API_STARTABLE_WORKFLOWS
    if allowed is not None and workflow_name not in allowed:
        raise registry.not_registered("workflow", workflow_name)
