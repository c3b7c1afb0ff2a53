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
from collections.abc import Iterable, Sequence
from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import NoReverseMatch, URLPattern, URLResolver
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authentication import BaseAuthentication
from rest_framework.decorators import action
from rest_framework.exceptions import NotAcceptable
from rest_framework.generics import GenericAPIView
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.renderers import BaseRenderer, BrowsableAPIRenderer, JSONOpenAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.schemas.openapi import SchemaGenerator
from rest_framework.views import APIView

from .. import client, store
from ..conf import durable_settings
from ..exceptions import WorkflowNotFound
from ..models import PAYLOAD_COLUMNS, HistoryEvent, WorkflowInstance
from . import serializers as s
from .exceptions import ExceptionHandler, exception_handler
from .filters import WorkflowFilter
from .pagination import WorkflowPagination
from .parsers import JSONParser, LimitedBodyRequest
from .schema import DurableSchema

# -- shared plumbing ----------------------------------------------------------------


class DurableAPIMixin:
    """JSON errors, the size-limited JSON parser, and a request that offers
    bodies without Content-Length to that parser."""

    parser_classes: Sequence[type[BaseParser]] = [JSONParser]
    # Which DURABLE settings hold this view's authentication and permission classes.
    authentication_setting = "API_AUTHENTICATION_CLASSES"
    permission_setting = "API_PERMISSION_CLASSES"

    def get_exception_handler(self) -> ExceptionHandler:
        return exception_handler

    def get_authenticators(self) -> list[BaseAuthentication]:
        return [auth() for auth in getattr(durable_settings, self.authentication_setting)]

    def get_permissions(self) -> list[BasePermission]:
        return [permission() for permission in getattr(durable_settings, self.permission_setting)]

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> LimitedBodyRequest:
        drf_request = super().initialize_request(request, *args, **kwargs)  # type: ignore[misc]
        drf_request.__class__ = LimitedBodyRequest  # adds no state: only how the body stream is found
        return drf_request


class JSONAnywayNegotiation(DefaultContentNegotiation):
    """Answer in JSON whatever the client accepts (machine-to-machine endpoints)."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderers = list(renderers)  # a list already, from the view
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type


# -- activities: authorised by the task token -----------------------------------------


class ActivityView(DurableAPIMixin, GenericAPIView):
    authentication_setting = "ACTIVITY_API_AUTHENTICATION_CLASSES"
    permission_setting = "ACTIVITY_API_PERMISSION_CLASSES"
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JSONAnywayNegotiation
    pagination_class = None

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())  # a new dict each time already
        request = context.get("request")  # None while the schema is generated
        context["header_token"] = request.headers.get(s.TASK_TOKEN_HEADER) if request is not None else None
        return context

    def validated(self, request: Request) -> dict[str, Any]:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


class CompleteActivityView(ActivityView):
    """Complete an activity attempt that is awaiting completion, with its result."""

    serializer_class = s.CompleteActivityRequestSerializer
    schema = DurableSchema(
        tags=["activities"],
        operation_ids={"post": "completeActivity"},
        token_header=True,
        responses={"post": (200, s.ActivityStatusSerializer)},
    )

    def post(self, request: Request) -> Response:
        data = self.validated(request)
        client.complete_activity(data["task_token"], data["result"])
        return Response({"status": "completed"})


class FailActivityView(ActivityView):
    """Fail an activity attempt; its retry policy decides whether another attempt follows."""

    serializer_class = s.FailActivityRequestSerializer
    schema = DurableSchema(
        tags=["activities"],
        operation_ids={"post": "failActivity"},
        token_header=True,
        responses={"post": (200, s.ActivityStatusSerializer)},
    )

    def post(self, request: Request) -> Response:
        data = self.validated(request)
        client.fail_activity(data["task_token"], data["error"])
        return Response({"status": "failed"})


class HeartbeatActivityView(ActivityView):
    """Report progress for an activity attempt; answers whether cancellation was requested."""

    serializer_class = s.HeartbeatActivityRequestSerializer
    schema = DurableSchema(
        tags=["activities"],
        operation_ids={"post": "heartbeatActivity"},
        token_header=True,
        responses={"post": (200, s.HeartbeatResponseSerializer)},
    )

    def post(self, request: Request) -> Response:
        data = self.validated(request)
        cancel_requested = client.heartbeat_activity(data["task_token"], data["details"])
        return Response({"cancel_requested": bool(cancel_requested)})


# -- workflows: Django's model permissions by default -------------------------------------


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
            "list": "listWorkflows",
            "create": "startWorkflow",
            "retrieve": "describeWorkflow",
            "history": "workflowHistory",
            "terminate": "terminateWorkflow",
            "signal": "signalWorkflow",
            "cancel": "cancelWorkflow",
            "suspend": "suspendWorkflow",
            "resume": "resumeWorkflow",
            "rerun": "rerunWorkflow",
            "destroy": "purgeWorkflow",
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

    def get_serializer_class(self) -> type[serializers.Serializer]:
        action = self.action
        # OPTIONS describes the route's own action.
        if action == "metadata" and self.request is not None and self.request.method is not None:
            action = self.action_map.get(self.request.method.lower(), action)
        serializer_classes: dict[str | None, type[serializers.Serializer]] = {
            "create": s.StartWorkflowSerializer,
            "retrieve": s.WorkflowDetailSerializer,
            "history": s.HistoryEventSerializer,
            "terminate": s.TerminateWorkflowSerializer,
            "signal": s.SignalWorkflowSerializer,
            "cancel": s.NoBodySerializer,
            "suspend": s.SuspendWorkflowSerializer,
            "resume": s.NoBodySerializer,
            "rerun": s.RerunWorkflowSerializer,
        }
        return serializer_classes.get(action, s.WorkflowSummarySerializer)

    def get_queryset(self) -> QuerySet[WorkflowInstance]:
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

    def validated(self, request: Request) -> dict[str, Any]:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def retrieve(self, request: Request, workflow_id: str) -> Response:
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

    def create(self, request: Request) -> Response:
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

    def destroy(self, request: Request, workflow_id: str) -> Response:
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
    def history(self, request: Request, workflow_id: str) -> Response:
        """The run's history events in order, paginated (``?limit=&offset=``)."""
        instance = self.get_object()
        events = HistoryEvent.objects.filter(instance_id=instance.pk).order_by("seq")
        page = self.paginate_queryset(events)
        serializer = self.get_serializer(page, many=True)
        return self.get_paginated_response(serializer.data)

    @action(detail=True, methods=["post"])
    def terminate(self, request: Request, workflow_id: str) -> Response:
        """Close the run now (202); no workflow code runs. 409 if it is already closed."""
        data = self.validated(request)
        handle = self.handle_of(self.get_object())
        handle.terminate(data.get("reason") or None)
        return self.accepted(handle)

    @action(detail=True, methods=["post"])
    def signal(self, request: Request, workflow_id: str) -> Response:
        """Send the run an external event (202): ``ctx.wait_for_event(name)`` returns its payload.
        409 if the run is closed."""
        data = self.validated(request)
        handle = self.handle_of(self.get_object())
        handle.signal(data["name"], data["payload"])
        return self.accepted(handle)

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, workflow_id: str) -> Response:
        """Ask the run to cancel (202): its code sees CancelledError at its next durable call, and
        its activities see cancel_requested on their next heartbeat. 409 if the run is closed."""
        self.validated(request)
        handle = self.handle_of(self.get_object())
        handle.cancel()
        return self.accepted(handle)

    @action(detail=True, methods=["post"])
    def suspend(self, request: Request, workflow_id: str) -> Response:
        """Pause the run (202): no workflow code runs and no new activity starts until resumed.
        409 if it is closed or already suspended."""
        data = self.validated(request)
        handle = self.handle_of(self.get_object())
        handle.suspend(data.get("reason") or "")
        return self.accepted(handle)

    @action(detail=True, methods=["post"])
    def resume(self, request: Request, workflow_id: str) -> Response:
        """Let a suspended run go on (202). 409 if it is closed or not suspended."""
        self.validated(request)
        handle = self.handle_of(self.get_object())
        handle.resume()
        return self.accepted(handle)

    @action(detail=True, methods=["post"])
    def rerun(self, request: Request, workflow_id: str) -> Response:
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
    authentication_classes: Sequence[type[BaseAuthentication]] = []
    permission_classes = [AllowAny]
    schema = None  # not itself part of the document
    patterns: list[URLPattern | URLResolver] = []  # set by urls.py

    def get_exception_handler(self) -> ExceptionHandler:
        return exception_handler

    def get(self, request: Request) -> Response:
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
