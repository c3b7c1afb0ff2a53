"""The workflow endpoints' default permission class (``DURABLE["API_PERMISSION_CLASSES"]``)."""

from __future__ import annotations

from rest_framework.exceptions import MethodNotAllowed
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from ..permissions import may

# WorkflowViewSet's actions, by the names of the table in django_durable.permissions.
ACTION_OPERATIONS: dict[str, str] = {
    "list": "list",
    "retrieve": "retrieve",
    "history": "history",
    "create": "start",
    "rerun": "rerun",
    "signal": "signal",
    "cancel": "cancel",
    "terminate": "terminate",
    "suspend": "suspend",
    "resume": "resume",
    "retry": "retry",
    "destroy": "purge",
}


class WorkflowPermissions(BasePermission):
    """Like REST framework's ``DjangoModelPermissions``, per action rather than per method:
    each action needs the model permission of ``WorkflowInstance`` that the admin needs for
    it (``django_durable.permissions``). Anonymous users are refused, staff status grants
    nothing, an action missing from the table is refused, and OPTIONS needs ``view``."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        return may(user, self.operation(request, view))

    def operation(self, request: Request, view: APIView) -> str:
        """The table's name for what ``request`` asks of ``view``; "" (refused) if it has none."""
        action_map = getattr(view, "action_map", None)
        if action_map is None:
            return ""  # not a viewset: no action to look up
        assert request.method is not None  # a request a view dispatched has one
        method = request.method.lower()
        if method == "options":
            return "list"  # describing the endpoint reveals no run: the same need as listing them
        # REST framework's metadata (OPTIONS) asks again for each method it describes, with a
        # cloned request: the route's own action for that method answers.
        action = action_map.get(method)
        if action is None:  # the route has no handler for the method: 405, as before
            raise MethodNotAllowed(request.method)
        return ACTION_OPERATIONS.get(action, "")
