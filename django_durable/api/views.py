"""The HTTP API's views: thin shells over ``django_durable.client``.

Two groups, each with its own authentication and permission classes from
``DURABLE`` settings (read per request, so ``override_settings`` applies):

- the activity endpoints (``ACTIVITY_API_*``; default: no authentication, so no
  CSRF, and ``AllowAny``: the task token is the capability);
- the workflow endpoints (``API_*``; default: session or basic auth, and the model permission
  of ``WorkflowInstance`` each action needs: ``permissions.WorkflowPermissions``).
"""

from __future__ import annotations

import posixpath
from typing import Any

from django.core.validators import ProhibitNullCharactersValidator
from django.urls import NoReverseMatch
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotAcceptable, ValidationError
from rest_framework.filters import BaseFilterBackend
from rest_framework.generics import GenericAPIView
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BrowsableAPIRenderer, JSONOpenAPIRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.schemas.openapi import AutoSchema, SchemaGenerator
from rest_framework.views import APIView

from .. import client, store
from ..conf import durable_settings
from ..exceptions import WorkflowNotFound
from ..models import PAYLOAD_COLUMNS, HistoryEvent, WorkflowInstance, WorkflowStatus
from ..tokens import MAX_TOKEN_LENGTH
from . import serializers as s
from .exceptions import exception_handler
from .parsers import JSONParser, LimitedBodyRequest

# -- shared plumbing ----------------------------------------------------------------


class DurableAPIMixin:
    """JSON errors, the size-limited JSON parser, and a request that offers
    bodies without Content-Length to that parser."""

    parser_classes = [JSONParser]
    # Which DURABLE settings hold this view's authentication and permission classes.
    authentication_setting = "API_AUTHENTICATION_CLASSES"
    permission_setting = "API_PERMISSION_CLASSES"

    def get_exception_handler(self) -> Any:
        return exception_handler

    def get_authenticators(self) -> list[Any]:
        return [auth() for auth in getattr(durable_settings, self.authentication_setting)]

    def get_permissions(self) -> list[Any]:
        return [permission() for permission in getattr(durable_settings, self.permission_setting)]

    def initialize_request(self, request: Any, *args: Any, **kwargs: Any) -> LimitedBodyRequest:
        drf_request = super().initialize_request(request, *args, **kwargs)  # type: ignore[misc]
        drf_request.__class__ = LimitedBodyRequest  # adds no state: only how the body stream is found
        return drf_request


class JSONAnywayNegotiation(DefaultContentNegotiation):
    """Answer in JSON whatever the client accepts (machine-to-machine endpoints)."""

    def select_renderer(self, request: Any, renderers: list[Any], format_suffix: str | None = None) -> Any:
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type


# What the fields refuse beyond their type, as JSON Schema patterns (ECMA 262 and Python alike).
NO_NUL_PATTERN = "^[^\\x00]*$"
ADDRESSABLE_PATTERN = "^[^/\\x00]*$"  # a workflow id that can appear in a URL path


def text_parameter(name: str, description: str) -> dict[str, Any]:
    """A non-empty text query parameter (the filters' shape)."""
    return {"name": name, "required": False, "in": "query", "description": description,
            "schema": {"type": "string", "minLength": 1, "maxLength": s.MAX_NAME_LENGTH, "pattern": NO_NUL_PATTERN}}


class DurableSchema(AutoSchema):
    """OpenAPI for these views: separate request and response serializers, the real
    success status codes, and history paginated like a list.

    The document says what the views refuse wherever JSON Schema can say it (blank and NUL
    text, a required body, the bounds of numbers), so that a request it calls valid is
    refused only for what no schema can know: a token or workflow name that does not exist,
    arguments that do not fit a workflow's signature, a run in the wrong state.
    """

    def __init__(
        self,
        *,
        operation_ids: dict[str, str],
        responses: dict[str, tuple[int, Any]] | None = None,
        token_header: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.operation_ids = operation_ids  # action (or method) -> operationId
        self.responses = responses or {}  # action (or method) -> (status code, serializer class)
        self.token_header = token_header  # the task token may come in the X-Durable-Task-Token header

    def _key(self, method: str) -> str:
        return getattr(self.view, "action", None) or method.lower()

    def get_operation_id(self, path: str, method: str) -> str:
        return self.operation_ids[self._key(method)]

    def map_field(self, field: Any) -> dict[str, Any]:
        if isinstance(field, s.TaskTokenField):
            return {"type": "string", "maxLength": MAX_TOKEN_LENGTH}
        if isinstance(field, s.JSONValueField):
            if field.kind == "object":
                return {"type": "object", "additionalProperties": {}}
            if field.kind == "array":
                return {"type": "array", "items": {}}
            return {"description": "Any JSON value."}
        return super().map_field(field)

    def map_field_validators(self, field: Any, schema: dict[str, Any]) -> None:
        super().map_field_validators(field, schema)
        if not isinstance(field, serializers.CharField) or field.read_only:
            return
        if not field.allow_blank:
            schema.setdefault("minLength", 1)
        if s._addressable in field.validators:
            schema.setdefault("pattern", ADDRESSABLE_PATTERN)
        elif any(isinstance(v, ProhibitNullCharactersValidator) for v in field.validators):
            schema.setdefault("pattern", NO_NUL_PATTERN)

    def get_response_serializer(self, path: str, method: str) -> Any:
        entry = self.responses.get(self._key(method))
        if entry is not None:
            return entry[1]() if entry[1] is not None else None
        return super().get_response_serializer(path, method)

    def get_request_serializer(self, path: str, method: str) -> Any:
        serializer = super().get_request_serializer(path, method)
        if isinstance(serializer, s.NoBodySerializer):
            return None  # documented as taking no body
        return serializer

    def get_request_body(self, path: str, method: str) -> dict[str, Any]:
        if method not in ("PUT", "PATCH", "POST"):
            return {}
        serializer = self.get_request_serializer(path, method)
        if serializer is None:
            return {}
        body = super().get_request_body(path, method)
        if any(field.required for field in serializer.fields.values()):
            body["required"] = True  # no body is not an empty object: its required fields are missing
        return body

    def get_pagination_parameters(self, path: str, method: str) -> list[dict[str, Any]]:
        if self._key(method) == "history":
            paginator = self.get_paginator()
            return paginator.get_schema_operation_parameters(self.view) if paginator else []
        return super().get_pagination_parameters(path, method)

    def allows_filters(self, path: str, method: str) -> bool:
        # Only the list filters; every other action addresses one run (see below).
        return self._key(method) == "list" and super().allows_filters(path, method)

    def get_filter_parameters(self, path: str, method: str) -> list[dict[str, Any]]:
        params = super().get_filter_parameters(path, method)
        if "{workflow_id}" in path:
            params.append({
                "name": "run_id", "required": False, "in": "query",
                "description": "A particular run of the workflow; "
                + ("every run of the id" if self._key(method) == "destroy" else "the latest run")
                + " when absent.",
                "schema": {"type": "string", "format": "uuid"},
            })
        if self._key(method) == "retrieve":
            params.append({
                "name": "wait", "required": False, "in": "query",
                "description": "Long poll: answer as soon as the run is closed, or after this many seconds "
                "(at most the API_MAX_WAIT setting, 60 by default).",
                "schema": {"type": "number", "minimum": 0, "maximum": float(durable_settings.API_MAX_WAIT)},
            })
        if self.token_header:
            params.append({
                "name": s.TASK_TOKEN_HEADER, "required": False, "in": "header",
                "description": "The task token, instead of task_token in the body (both only if they agree).",
                "schema": {"type": "string", "maxLength": MAX_TOKEN_LENGTH},
            })
        return params

    def get_responses(self, path: str, method: str) -> dict[str, Any]:
        responses = super().get_responses(path, method)
        key = self._key(method)
        if key == "history":
            serializer = self.get_response_serializer(path, method)
            item = self.get_reference(serializer) if serializer is not None else {}
            schema: dict[str, Any] = {"type": "array", "items": item}
            paginator = self.get_paginator()
            if paginator:
                schema = paginator.get_paginated_response_schema(schema)
            for response in responses.values():
                for media in response.get("content", {}).values():
                    media["schema"] = schema
        entry = self.responses.get(key)
        if entry is not None:
            wanted = str(entry[0])
            (current,) = [code for code in responses if code.startswith("2")]
            if current != wanted:
                responses[wanted] = responses.pop(current)
        responses.setdefault("4XX", {
            "description": 'Error: {"code": "...", "detail": ...}',
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "detail": {}},
                "required": ["code", "detail"],
            }}},
        })
        return responses

    def get_components(self, path: str, method: str) -> dict[str, Any]:
        components = super().get_components(path, method)
        entry = self.responses.get(self._key(method))
        if entry is not None and entry[1] is not None:
            serializer = entry[1]()
            components.setdefault(self.get_component_name(serializer), self.map_serializer(serializer))
        return components


# -- activities: authorised by the task token -----------------------------------------


class ActivityView(DurableAPIMixin, GenericAPIView):
    authentication_setting = "ACTIVITY_API_AUTHENTICATION_CLASSES"
    permission_setting = "ACTIVITY_API_PERMISSION_CLASSES"
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JSONAnywayNegotiation
    pagination_class = None

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        request = context.get("request")  # None while the schema is generated
        context["header_token"] = request.headers.get(s.TASK_TOKEN_HEADER) if request is not None else None
        return context

    def validated(self, request: Any) -> dict[str, Any]:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


class CompleteActivityView(ActivityView):
    """Complete an activity attempt that is awaiting completion, with its result."""

    serializer_class = s.CompleteActivityRequestSerializer
    schema = DurableSchema(
        tags=["activities"], operation_ids={"post": "completeActivity"}, token_header=True,
        responses={"post": (200, s.ActivityStatusSerializer)},
    )

    def post(self, request: Any) -> Response:
        data = self.validated(request)
        client.complete_activity(data["task_token"], data["result"])
        return Response({"status": "completed"})


class FailActivityView(ActivityView):
    """Fail an activity attempt; its retry policy decides whether another attempt follows."""

    serializer_class = s.FailActivityRequestSerializer
    schema = DurableSchema(
        tags=["activities"], operation_ids={"post": "failActivity"}, token_header=True,
        responses={"post": (200, s.ActivityStatusSerializer)},
    )

    def post(self, request: Any) -> Response:
        data = self.validated(request)
        client.fail_activity(data["task_token"], data["error"])
        return Response({"status": "failed"})


class HeartbeatActivityView(ActivityView):
    """Report progress for an activity attempt; answers whether cancellation was requested."""

    serializer_class = s.HeartbeatActivityRequestSerializer
    schema = DurableSchema(
        tags=["activities"], operation_ids={"post": "heartbeatActivity"}, token_header=True,
        responses={"post": (200, s.HeartbeatResponseSerializer)},
    )

    def post(self, request: Any) -> Response:
        data = self.validated(request)
        cancel_requested = client.heartbeat_activity(data["task_token"], data["details"])
        return Response({"cancel_requested": bool(cancel_requested)})


# -- workflows: Django's model permissions by default -------------------------------------


class WorkflowPagination(LimitOffsetPagination):
    """``?limit=&offset=``; the default limit is ``DURABLE["API_PAGE_SIZE"]``, a larger limit
    is cut to ``max_limit``. Anything but a whole number (at least 1 for the limit) is 400."""

    MAX_OFFSET = 2**53  # far past any real table, well inside every database's integer range

    @property
    def default_limit(self) -> int:  # type: ignore[override]
        return int(durable_settings.API_PAGE_SIZE)

    @property
    def max_limit(self) -> int:  # type: ignore[override]
        return max(int(durable_settings.API_PAGE_SIZE), 1000)

    def get_limit(self, request: Any) -> int:
        return min(self._number(request, self.limit_query_param, minimum=1, default=self.default_limit),
                   self.max_limit)

    def get_offset(self, request: Any) -> int:
        return min(self._number(request, self.offset_query_param, minimum=0, default=0), self.MAX_OFFSET)

    def _number(self, request: Any, name: str, *, minimum: int, default: int) -> int:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        value = -1
        if raw.isascii() and raw.isdigit():
            value = int(raw) if len(raw) <= 30 else 10**30  # past every bound: no need to parse it all
        if value < minimum:
            raise ValidationError({name: [f"A whole number of at least {minimum} is required."]})
        return value

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1 if parameter["name"] == self.limit_query_param else 0
        return parameters


class WorkflowFilter(BaseFilterBackend):
    """``?status=`` and ``?workflow_name=`` (and ``?workflow_id=``), validated: 400 for bad values."""

    def filter_queryset(self, request: Any, queryset: Any, view: Any) -> Any:
        params = {key: request.query_params[key] for key in ("status", "workflow_name", "workflow_id")
                  if key in request.query_params}
        serializer = s.WorkflowFilterSerializer(data=params)
        serializer.is_valid(raise_exception=True)
        return queryset.filter(**serializer.validated_data)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {"name": "status", "required": False, "in": "query", "description": "Only runs in this status.",
             "schema": {"type": "string", "enum": list(WorkflowStatus.values)}},
            text_parameter("workflow_name", "Only runs of this workflow."),
            text_parameter("workflow_id", "Only runs with this workflow id."),
        ]


class WorkflowViewSet(DurableAPIMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Workflow runs: list (filter by status and workflow name), start, describe, history, purge;
    the control verbs signal, cancel, suspend, resume and terminate; rerun from a history event.

    A detail route addresses the latest run of the workflow id, or the one ``?run_id=`` names.
    """

    queryset = WorkflowInstance.objects.order_by("-created_at", "-id")
    lookup_field = "workflow_id"
    lookup_value_regex = "[^/]+"
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer]
    pagination_class = WorkflowPagination
    filter_backends = [WorkflowFilter]
    schema = DurableSchema(
        tags=["workflows"],
        operation_ids={
            "list": "listWorkflows", "create": "startWorkflow", "retrieve": "describeWorkflow",
            "history": "workflowHistory", "terminate": "terminateWorkflow", "signal": "signalWorkflow",
            "cancel": "cancelWorkflow", "suspend": "suspendWorkflow", "resume": "resumeWorkflow",
            "rerun": "rerunWorkflow", "destroy": "purgeWorkflow",
        },
        responses={
            "create": (201, s.StartedWorkflowSerializer),
            "rerun": (201, s.StartedWorkflowSerializer),
            "terminate": (202, s.StartedWorkflowSerializer),
            "signal": (202, s.StartedWorkflowSerializer),
            "cancel": (202, s.StartedWorkflowSerializer),
            "suspend": (202, s.StartedWorkflowSerializer),
            "resume": (202, s.StartedWorkflowSerializer),
            "history": (200, s.HistoryEventSerializer),
            "retrieve": (200, s.WorkflowDetailSerializer),
        },
    )

    def get_serializer_class(self) -> Any:
        action = self.action
        if action == "metadata" and self.request is not None:  # OPTIONS describes the route's own action
            action = self.action_map.get(self.request.method.lower(), action)
        return {
            "create": s.StartWorkflowSerializer,
            "retrieve": s.WorkflowDetailSerializer,
            "history": s.HistoryEventSerializer,
            "terminate": s.TerminateWorkflowSerializer,
            "signal": s.SignalWorkflowSerializer,
            "cancel": s.NoBodySerializer,
            "suspend": s.SuspendWorkflowSerializer,
            "resume": s.NoBodySerializer,
            "rerun": s.RerunWorkflowSerializer,
        }.get(action, s.WorkflowSummarySerializer)

    def get_queryset(self) -> Any:
        queryset = super().get_queryset()
        return queryset.defer(*PAYLOAD_COLUMNS) if self.action == "list" else queryset

    def requested_run_id(self) -> str | None:
        """The run ``?run_id=`` names (400 if it is not a UUID), or None for the latest."""
        selector = s.RunSelectorSerializer(data={k: v for k, v in self.request.query_params.items() if k == "run_id"})
        selector.is_valid(raise_exception=True)
        run_id = selector.validated_data.get("run_id")
        return str(run_id) if run_id else None

    def get_object(self) -> WorkflowInstance:
        workflow_id = self.kwargs[self.lookup_field]
        run_id = self.requested_run_id()
        if "\x00" in workflow_id or len(workflow_id) > s.MAX_NAME_LENGTH:
            raise WorkflowNotFound(f"No workflow with id {workflow_id!r}.")
        instance = store.get_instance(workflow_id, run_id)
        self.check_object_permissions(self.request, instance)
        return instance

    def validated(self, request: Any) -> dict[str, Any]:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def retrieve(self, request: Any, workflow_id: str) -> Response:
        """Describe the run. With ``?wait=<seconds>``, a long poll: answer as soon as the run is
        closed, or once that many seconds have passed (at most ``API_MAX_WAIT``; 400 beyond)."""
        poll = s.LongPollSerializer(data={k: v for k, v in request.query_params.items() if k == "wait"})
        poll.is_valid(raise_exception=True)
        instance = self.get_object()
        wait = poll.validated_data.get("wait")
        if wait and instance.is_open:
            instance = client.wait_for_close(instance, wait, follow_chain=False)
        return Response(self.get_serializer(instance).data)

    def handle_of(self, instance: WorkflowInstance) -> client.WorkflowHandle:
        return client.WorkflowHandle(instance.workflow_id, str(instance.run_id))

    def accepted(self, handle: client.WorkflowHandle) -> Response:
        return Response(
            {"workflow_id": handle.workflow_id, "run_id": handle.run_id, "status": handle.status()},
            status=status.HTTP_202_ACCEPTED,
        )

    def created(self, handle: client.WorkflowHandle) -> Response:
        body = {"workflow_id": handle.workflow_id, "run_id": handle.run_id, "status": handle.status()}
        headers = {}
        try:
            headers["Location"] = reverse(self._detail_route_name(), args=[handle.workflow_id], request=self.request)
        except NoReverseMatch:
            pass
        return Response(body, status=status.HTTP_201_CREATED, headers=headers)

    def create(self, request: Any) -> Response:
        """Start a workflow run: 201, 400 for an unknown workflow or bad arguments, 409 if the id is in use."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        handle = client.start_workflow(
            data["workflow"],
            *data["args"],
            workflow_id=data.get("workflow_id") or None,
            queue=data.get("queue") or None,
            start_at=data.get("start_at"),
            id_reuse_policy=data["id_reuse_policy"],
            **data["kwargs"],
        )
        return self.created(handle)

    def destroy(self, request: Any, workflow_id: str) -> Response:
        """Purge: delete every run of the workflow id (or the ``?run_id=`` run) with its history (204).

        409 ``workflow_open`` while one of them is open.
        """
        instance = self.get_object()
        client.WorkflowHandle(instance.workflow_id, self.requested_run_id()).purge()
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _detail_route_name(self) -> str:
        namespace = self.request.resolver_match.namespace if self.request.resolver_match else ""
        name = f"{self.basename}-detail"
        return f"{namespace}:{name}" if namespace else name

    @action(detail=True, methods=["get"])
    def history(self, request: Any, workflow_id: str) -> Response:
        """The run's history events in order, paginated (``?limit=&offset=``)."""
        instance = self.get_object()
        events = HistoryEvent.objects.filter(instance_id=instance.pk).order_by("seq")
        page = self.paginate_queryset(events)
        serializer = self.get_serializer(page, many=True)
        return self.get_paginated_response(serializer.data)

    @action(detail=True, methods=["post"])
    def terminate(self, request: Any, workflow_id: str) -> Response:
        """Close the run now (202); no workflow code runs. 409 if it is already closed."""
        data = self.validated(request)
        handle = self.handle_of(self.get_object())
        handle.terminate(data.get("reason") or None)
        return self.accepted(handle)

    @action(detail=True, methods=["post"])
    def signal(self, request: Any, workflow_id: str) -> Response:
        """Send the run an external event (202): ``ctx.wait_for_event(name)`` returns its payload.
        409 if the run is closed."""
        data = self.validated(request)
        handle = self.handle_of(self.get_object())
        handle.signal(data["name"], data["payload"])
        return self.accepted(handle)

    @action(detail=True, methods=["post"])
    def cancel(self, request: Any, workflow_id: str) -> Response:
        """Ask the run to cancel (202): its code sees CancelledError at its next durable call, and
        its activities see cancel_requested on their next heartbeat. 409 if the run is closed."""
        self.validated(request)
        handle = self.handle_of(self.get_object())
        handle.cancel()
        return self.accepted(handle)

    @action(detail=True, methods=["post"])
    def suspend(self, request: Any, workflow_id: str) -> Response:
        """Pause the run (202): no workflow code runs and no new activity starts until resumed.
        409 if it is closed or already suspended."""
        data = self.validated(request)
        handle = self.handle_of(self.get_object())
        handle.suspend(data.get("reason") or "")
        return self.accepted(handle)

    @action(detail=True, methods=["post"])
    def resume(self, request: Any, workflow_id: str) -> Response:
        """Let a suspended run go on (202). 409 if it is closed or not suspended."""
        self.validated(request)
        handle = self.handle_of(self.get_object())
        handle.resume()
        return self.accepted(handle)

    @action(detail=True, methods=["post"])
    def rerun(self, request: Any, workflow_id: str) -> Response:
        """Start a new run (201) whose history is events 1 .. from_event-1 of this closed run; the
        current code goes on from there. 409 if the run is open, if from_event is past its history,
        or if the new run's workflow id has an open run."""
        data = self.validated(request)
        instance = self.get_object()
        s.refuse_internal(instance.workflow_name)
        source = self.handle_of(instance)
        return self.created(source.rerun(data["from_event"], workflow_id=data.get("workflow_id") or None))


# -- the OpenAPI document -------------------------------------------------------------


class SchemaView(APIView):
    """The OpenAPI document of this API (public: it describes, it reveals no data)."""

    renderer_classes = [JSONOpenAPIRenderer]
    parser_classes = [JSONParser]
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    schema = None  # not itself part of the document
    patterns: list[Any] = []  # set by urls.py

    def get_exception_handler(self) -> Any:
        return exception_handler

    def get(self, request: Any) -> Response:
        from django_durable import __version__

        root = posixpath.dirname(request.path.rstrip("/")) + "/"
        generator = SchemaGenerator(
            title="django-durable API",
            version=__version__,
            description=(
                "Durable workflows for Django: finish activities by task token, "
                'and manage workflow runs. Errors are JSON {"code": ..., "detail": ...}.'
            ),
            patterns=self.patterns,
            url=root,
        )
        return Response(generator.get_schema(request=request, public=True))
