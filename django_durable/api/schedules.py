"""The HTTP API's schedule endpoints: thin shells over ``django_durable.schedules`` and its store.

They share the workflow endpoints' settings (``API_AUTHENTICATION_CLASSES``,
``API_PERMISSION_CLASSES``). Where the latter holds the default ``WorkflowPermissions``,
each action needs the permissions ``django_durable.permissions.SCHEDULE_PERMISSIONS``
names for it instead (``SchedulePermissions``). Whatever starts runs (create, an update of
the workflow or its arguments, trigger, backfill) obeys the start rules of ``POST workflows/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db.models import QuerySet
from django.urls import NoReverseMatch
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, MethodNotAllowed
from rest_framework.filters import BaseFilterBackend
from rest_framework.permissions import BasePermission
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from .. import registry
from ..converter import check_size
from ..exceptions import ScheduleNotFound
from ..models import PAYLOAD_COLUMNS, Schedule
from ..permissions import check_startable, may_schedule
from ..schedules.client import SCHEDULE_ID_MAX_LENGTH, ScheduleHandle, current_options, describe, schedule_values
from ..schedules.spec import InvalidSchedule
from ..store import schedules as schedule_store
from . import schedule_serializers as ss
from . import serializers as s
from .pagination import WorkflowPagination
from .permissions import WorkflowPermissions
from .schema import ADDRESSABLE_PATTERN, DurableSchema
from .views import DurableAPIMixin


class InvalidScheduleRequest(APIException):
    """What ``schedule_values`` refuses (``InvalidSchedule``): its message says what is accepted."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "The schedule is not valid."
    default_code = "invalid_schedule"


# ScheduleViewSet's actions, by the names of django_durable.permissions.SCHEDULE_PERMISSIONS.
ACTION_OPERATIONS: dict[str, str] = {
    "list": "list",
    "retrieve": "retrieve",
    "create": "create",
    "partial_update": "update",
    "destroy": "delete",
    "pause": "pause",
    "unpause": "unpause",
    "trigger": "trigger",
    "backfill": "backfill",
}


class SchedulePermissions(BasePermission):
    """What ``WorkflowPermissions`` is on the schedule endpoints: each action needs every
    permission ``SCHEDULE_PERMISSIONS`` names for it (anonymous users are refused, staff
    status grants nothing, OPTIONS needs ``view_schedule``); an update that changes what the
    schedule starts asks again for "update_workflow" once the view knows it does."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        return may_schedule(user, self.operation(request, view))

    def operation(self, request: Request, view: APIView) -> str:
        operation = getattr(view, "schedule_operation", None)
        if operation is not None:
            return str(operation)
        action_map = getattr(view, "action_map", None)
        if action_map is None:
            return ""
        assert request.method is not None
        method = request.method.lower()
        if method == "options":
            return "list"
        action = action_map.get(method)
        if action is None:
            raise MethodNotAllowed(request.method)
        return ACTION_OPERATIONS.get(action, "")


class ScheduleSchema(DurableSchema):
    """``DurableSchema``, with the schedule id's pattern and trigger's two answers."""

    def map_field(self, field: serializers.Field) -> dict[str, Any]:
        if isinstance(field, serializers.BooleanField):  # REST framework knows its own class only
            return {"type": "boolean"}
        return super().map_field(field)

    def map_field_validators(self, field: serializers.Field, schema: dict[str, Any]) -> None:
        super().map_field_validators(field, schema)
        if ss.addressable_schedule_id in field.validators:
            schema["pattern"] = ADDRESSABLE_PATTERN

    def get_filter_parameters(self, path: str, method: str) -> list[dict[str, Any]]:
        # Describing a schedule does not long-poll as describing a run does.
        return [param for param in super().get_filter_parameters(path, method) if param["name"] != "wait"]

    def get_responses(self, path: str, method: str) -> dict[str, Any]:
        responses = super().get_responses(path, method)
        if self._key(method) == "trigger":
            responses["201"]["description"] = "The run started."
            responses["200"] = {**responses["201"], "description": "The overlap policy skipped or buffered the run."}
        return responses


class ScheduleViewSet(DurableAPIMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """Schedules: list, create, describe, update (PATCH), delete; pause, unpause, trigger, backfill."""

    queryset = Schedule.objects.order_by("schedule_id")
    lookup_field = "schedule_id"
    lookup_value_regex = "[^/]+"
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer]
    pagination_class = WorkflowPagination
    filter_backends: list[type[BaseFilterBackend]] = []  # none, whatever the project's REST_FRAMEWORK says
    # Set by an update that changes what the schedule starts: the operation to check again.
    schedule_operation: str | None = None
    schema = ScheduleSchema(
        tags=["schedules"],
        operation_ids={
            "list": "listSchedules",
            "create": "createSchedule",
            "retrieve": "describeSchedule",
            "partial_update": "updateSchedule",
            "destroy": "deleteSchedule",
            "pause": "pauseSchedule",
            "unpause": "unpauseSchedule",
            "trigger": "triggerSchedule",
            "backfill": "backfillSchedule",
        },
        responses={
            "list": (200, ss.ScheduleSummarySerializer),
            "create": (201, ss.ScheduleSerializer),
            "retrieve": (200, ss.ScheduleSerializer),
            "partial_update": (200, ss.ScheduleSerializer),
            "pause": (200, ss.ScheduleSerializer),
            "unpause": (200, ss.ScheduleSerializer),
            "trigger": (201, ss.TriggeredSerializer),
            "backfill": (200, ss.BackfilledSerializer),
        },
    )

    def get_permissions(self) -> list[BasePermission]:
        # The default permission class of the API knows runs' operations; these are schedules'.
        return [
            SchedulePermissions() if type(permission) is WorkflowPermissions else permission
            for permission in super().get_permissions()
        ]

    def get_serializer_class(self) -> type[serializers.Serializer]:
        action = self.action
        if action == "metadata" and self.request is not None and self.request.method is not None:
            action = self.action_map.get(self.request.method.lower(), action)
        serializer_classes: dict[str | None, type[serializers.Serializer]] = {
            "create": ss.CreateScheduleSerializer,
            "retrieve": ss.ScheduleSerializer,
            "partial_update": ss.ScheduleOptionsSerializer,
            "pause": ss.ScheduleNoteSerializer,
            "unpause": ss.ScheduleNoteSerializer,
            "trigger": s.NoBodySerializer,
            "backfill": ss.BackfillScheduleSerializer,
        }
        return serializer_classes.get(action, ss.ScheduleSummarySerializer)

    def get_queryset(self) -> QuerySet[Schedule]:
        # The list reads no payload: neither the schedules' nor their last runs'.
        return (
            super()
            .get_queryset()
            .select_related("last_run")
            .defer("input", "buffered", "recent_runs", *(f"last_run__{column}" for column in PAYLOAD_COLUMNS))
        )

    def get_object(self) -> Schedule:
        schedule_id = self.kwargs[self.lookup_field]
        if "\x00" in schedule_id or len(schedule_id) > SCHEDULE_ID_MAX_LENGTH:
            raise ScheduleNotFound(f"No schedule with id {schedule_id!r}.")
        schedule = schedule_store.get_schedule(schedule_id)
        self.check_object_permissions(self.request, schedule)
        return schedule

    def validated(self, request: Request) -> dict[str, Any]:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)

    def described(self, schedule: Schedule, status_code: int = status.HTTP_200_OK) -> Response:
        data = ss.ScheduleSerializer(schedule, context={"request": self.request, "description": describe(schedule)})
        return Response(data.data, status=status_code)

    # -- the collection and one schedule ----------------------------------------------

    def create(self, request: Request) -> Response:
        """Create a schedule (201, described): 400 ``invalid_schedule`` for a specification that
        cannot be, ``not_registered`` for a workflow ``POST workflows/`` may not start, ``invalid``
        for bad fields or arguments that do not fit the workflow; 409 if the id is taken."""
        options = self.validated(request)
        schedule_id = options.pop("schedule_id")
        check_startable(options["workflow"])
        values = checked_values(schedule_id, options)
        ss.check_arguments(values["workflow_name"], options.get("args", []), options.get("kwargs", {}))
        schedule = schedule_store.create_schedule({"schedule_id": schedule_id, **values})
        response = self.described(schedule, status.HTTP_201_CREATED)
        try:
            response["Location"] = reverse(self._route_name("detail"), args=[schedule_id], request=request)
        except NoReverseMatch:
            pass
        return response

    def retrieve(self, request: Request, schedule_id: str) -> Response:
        """The schedule, its next fire times and its recent runs with their status."""
        return self.described(self.get_object())

    def partial_update(self, request: Request, schedule_id: str) -> Response:
        """Change any option but the id; a field left out keeps its value. Naming only one of
        ``cron`` and ``every`` replaces the other. A new specification counts from now.
        Changing the workflow or its arguments also needs ``add_workflowinstance``, and the
        workflow must be one ``POST workflows/`` may start."""
        schedule = self.get_object()
        changes = self.validated(request)
        for one, other in (("cron", "every"), ("every", "cron")):
            if changes.get(one) is not None and other not in changes:
                changes[other] = None
        new_workflow = changes.get("workflow", schedule.workflow_name) != schedule.workflow_name
        if new_workflow:
            self._may_start(request, changes["workflow"])
        # The stored input is encoded already: the request's args or kwargs are encoded, the rest kept.
        options = {**current_options(schedule), "args": [], "kwargs": {}, **changes}
        values = checked_values(schedule.schedule_id, options)
        stored = {"args": schedule.input.get("args", []), "kwargs": schedule.input.get("kwargs", {})}
        values["input"] = {part: values["input"][part] if part in changes else stored[part] for part in stored}
        if "args" in changes or "kwargs" in changes:
            check_size(values["input"], f"the input of schedule {schedule.schedule_id!r}", "workflow_input")
        changed = {name: value for name, value in values.items() if getattr(schedule, name) != value}
        if "input" in changed and not new_workflow:
            self._may_start(request, schedule.workflow_name)
        if new_workflow or "input" in changed:
            args, kwargs = changes.get("args", stored["args"]), changes.get("kwargs", stored["kwargs"])
            ss.check_arguments(values["workflow_name"], args, kwargs)
        if changed:
            schedule = schedule_store.update_schedule(schedule.schedule_id, changed)
        return self.described(schedule)

    def _may_start(self, request: Request, workflow_name: str) -> None:
        """What an update that changes what the schedule starts needs on top: the permission
        to start runs (403), and a workflow ``POST workflows/`` may start (400)."""
        self.schedule_operation = "update_workflow"
        self.check_permissions(request)
        check_startable(workflow_name)

    def destroy(self, request: Request, schedule_id: str) -> Response:
        """Delete the schedule (204); the runs it started go on."""
        schedule_store.delete_schedule(self.get_object().schedule_id)
        return Response(status=status.HTTP_204_NO_CONTENT)

    # -- verbs --------------------------------------------------------------------------

    @action(detail=True, methods=["post"])
    def pause(self, request: Request, schedule_id: str) -> Response:
        """Stop firing ticks (200, described); ticks that fall while paused are dropped.
        ``note`` replaces the schedule's note."""
        return self._set_paused(request, True)

    @action(detail=True, methods=["post"])
    def unpause(self, request: Request, schedule_id: str) -> Response:
        """Fire again from the next tick after now (200, described). ``note`` replaces the note."""
        return self._set_paused(request, False)

    def _set_paused(self, request: Request, paused: bool) -> Response:
        note = self.validated(request).get("note")
        schedule = self.get_object()
        return self.described(schedule_store.set_paused(schedule.schedule_id, paused, note))

    @action(detail=True, methods=["post"])
    def trigger(self, request: Request, schedule_id: str) -> Response:
        """Start a run now, even while paused, under the overlap policy: 201 with the run, or
        200 with ``"started": false`` when the policy skipped it or buffered it."""
        self.validated(request)
        schedule = self.get_object()
        check_runnable(schedule.workflow_name)
        handle = ScheduleHandle(schedule.schedule_id).trigger()
        schedule = schedule_store.get_schedule(schedule.schedule_id)
        body: dict[str, Any] = {"started": handle is not None, "workflow_id": None, "run_id": None, "status": None}
        body.update(overlap=schedule.overlap, buffered=schedule.buffered_count)
        if handle is None:
            return Response(body)
        body.update(workflow_id=handle.workflow_id, run_id=handle.run_id, status=handle.status())
        response = Response(body, status=status.HTTP_201_CREATED)
        try:
            response["Location"] = reverse(
                self._route_name("detail", "workflow"), args=[handle.workflow_id], request=request
            )
        except NoReverseMatch:
            pass
        return response

    @action(detail=True, methods=["post"])
    def backfill(self, request: Request, schedule_id: str) -> Response:
        """Fire the ticks from ``start`` to ``end`` (inclusive, not past now) that have no run
        yet, oldest first, under the overlap policy. 400 beyond 1,000 ticks."""
        data = self.validated(request)
        schedule = self.get_object()
        check_runnable(schedule.workflow_name)
        try:
            result = ScheduleHandle(schedule.schedule_id).backfill(data["start"], data["end"])
        except ValueError as error:  # more ticks than a backfill takes
            raise serializers.ValidationError({api_settings.NON_FIELD_ERRORS_KEY: [str(error)]}) from None
        body = {
            "started": result.started,
            "started_count": len(result.started),
            "buffered": result.buffered,
            "skipped": result.skipped,
            "already_run": result.already_run,
        }
        return Response(body)

    def _route_name(self, suffix: str, basename: str | None = None) -> str:
        namespace = self.request.resolver_match.namespace if self.request.resolver_match else ""
        name = f"{basename or self.basename}-{suffix}"
        return f"{namespace}:{name}" if namespace else name


def checked_values(schedule_id: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``Schedule`` row's values for these options; 400 ``invalid_schedule`` if they make no schedule."""
    try:
        return schedule_values(schedule_id, **options)
    except InvalidSchedule as error:
        raise InvalidScheduleRequest(str(error)) from None


def check_runnable(workflow_name: str) -> None:
    """What starting a run of the schedule needs: a workflow ``POST workflows/`` may start, and
    still registered (400 ``not_registered`` otherwise)."""
    check_startable(workflow_name)
    registry.get_workflow_definition(workflow_name)
