"""Which Django model permission of ``WorkflowInstance`` each operation on runs needs.

One table for the HTTP API (``django_durable.api.permissions``) and the admin's
actions, so that a user may do the same things in both. Being staff grants
nothing by itself; active superusers have every permission (Django's ``has_perm``).
"""

from __future__ import annotations

from typing import Any

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
