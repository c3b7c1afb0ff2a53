"""Request and response shapes of the HTTP API; the request serializers do all validation."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail

from .. import registry, store
from ..conf import durable_settings
from ..jsontext import MAX_JSON_DEPTH
from ..models import HistoryEvent, IdReusePolicy, WorkflowInstance, WorkflowStatus
from ..permissions import check_startable

MAX_NAME_LENGTH = 255  # workflow names, ids, queues, error types: the model columns' length
MAX_MESSAGE_LENGTH = 10_000
TASK_TOKEN_HEADER = "X-Durable-Task-Token"

# start_workflow() takes these by keyword itself, so a workflow cannot receive them as kwargs.
# ``concurrency_key`` and ``priority``: reserved since flow control (see engine.call_options).
RESERVED_KWARGS = frozenset(
    {"workflow", "workflow_id", "queue", "start_at", "id_reuse_policy", "concurrency_key", "priority"}
)


# -- fields -------------------------------------------------------------------------


class JSONValueField(serializers.Field):
    """Any JSON value (optionally only an object or only an array) that the database can store:
    no NUL characters (PostgreSQL's jsonb refuses them), at most ``MAX_JSON_DEPTH`` levels deep."""

    default_error_messages = {
        "not_object": _("Expected a JSON object."),
        "not_array": _("Expected a JSON array."),
        "too_deep": _("Nested deeper than {max_depth} levels."),
        "null_character": _("Strings may not contain NUL characters (\\u0000)."),
        "not_json": _("Expected a JSON value."),
    }

    def __init__(self, *, kind: str | None = None, max_depth: int = MAX_JSON_DEPTH, **kwargs: Any) -> None:
        assert kind in (None, "object", "array")
        self.kind = kind
        self.max_depth = max_depth
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> store.JSON:
        if self.kind == "object" and not isinstance(data, dict):
            self.fail("not_object")
        if self.kind == "array" and not isinstance(data, list):
            self.fail("not_array")
        stack: list[tuple[object, int]] = [(data, 1)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, str):
                if "\x00" in item:
                    self.fail("null_character")
            elif isinstance(item, dict):
                if depth > self.max_depth:
                    self.fail("too_deep", max_depth=self.max_depth)
                for key, child in item.items():
                    if not isinstance(key, str):
                        self.fail("not_json")
                    if "\x00" in key:
                        self.fail("null_character")
                    stack.append((child, depth + 1))
            elif isinstance(item, list):
                if depth > self.max_depth:
                    self.fail("too_deep", max_depth=self.max_depth)
                stack.extend((child, depth + 1) for child in item)
            elif not (item is None or isinstance(item, (bool, int, float))):
                self.fail("not_json")
        return data

    def to_representation(self, value: store.JSON) -> store.JSON:
        return value


class TaskTokenField(serializers.Field):
    """The opaque task token, as handed to the activity. Checked by the engine, not here:
    an empty, garbled, forged or oversized token is 400 ``invalid_token``."""

    default_error_messages = {"invalid": _("The task token must be a string.")}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return data

    def to_representation(self, value: str) -> str:
        return value


def _name_field(**kwargs: Any) -> serializers.CharField:
    return serializers.CharField(max_length=MAX_NAME_LENGTH, trim_whitespace=False, **kwargs)


# -- activities ---------------------------------------------------------------------


class _TaskTokenRequest(serializers.Serializer):
    """The token comes in the body or in the ``X-Durable-Task-Token`` header (never the URL).

    Both may be given only if they agree. Pass the header's value as ``context["header_token"]``.
    """

    task_token = TaskTokenField(
        required=False,
        help_text=f"The activity attempt's task token (or send it in the {TASK_TOKEN_HEADER} header).",
    )

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        header = self.context.get("header_token")
        problem = None
        if isinstance(data, Mapping):
            if "task_token" not in data and header is None:
                problem = f"This field is required (in the body or the {TASK_TOKEN_HEADER} header)."
            elif "task_token" in data and header is not None and data["task_token"] != header:
                problem = f"The body and the {TASK_TOKEN_HEADER} header carry different tokens."
        try:
            attrs = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if problem and isinstance(exc.detail, dict) and "task_token" not in exc.detail:
                exc.detail["task_token"] = [ErrorDetail(problem, code="invalid")]
            raise
        if problem:
            raise serializers.ValidationError({"task_token": [problem]})
        attrs.setdefault("task_token", header)
        return attrs


class CompleteActivityRequestSerializer(_TaskTokenRequest):
    result = JSONValueField(
        required=False, allow_null=True, default=None, help_text="The activity's result (any JSON)."
    )


class ActivityErrorSerializer(serializers.Serializer):
    message = serializers.CharField(max_length=MAX_MESSAGE_LENGTH, allow_blank=True, trim_whitespace=False)
    type = _name_field(
        required=False,
        allow_blank=True,
        allow_null=True,
        help_text="The error's type name; the retry policy's non_retryable_errors match it.",
    )
    details = JSONValueField(required=False, allow_null=True, help_text="Anything else (JSON) about the failure.")


class FailActivityRequestSerializer(_TaskTokenRequest):
    error = ActivityErrorSerializer()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        error = {key: value for key, value in attrs["error"].items() if value is not None}
        if not error.get("type"):
            error.pop("type", None)
        attrs["error"] = error
        return attrs


class HeartbeatActivityRequestSerializer(_TaskTokenRequest):
    details = JSONValueField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Progress to keep; a retry of this activity sees it as heartbeat_details.",
    )


class ActivityStatusSerializer(serializers.Serializer):
    status = serializers.CharField(help_text='"completed" or "failed".')


class HeartbeatResponseSerializer(serializers.Serializer):
    cancel_requested = serializers.BooleanField()


# -- workflows ----------------------------------------------------------------------


def _addressable(value: str) -> None:
    if "/" in value:
        raise serializers.ValidationError("A workflow id used over HTTP cannot contain '/'.")


def refuse_internal(workflow_name: str) -> None:
    """An internal workflow (``django_durable.*``) is never started over HTTP, by anyone:
    the answer is the one for a name that is not registered."""
    if registry.is_internal(workflow_name):
        raise registry.not_registered("workflow", workflow_name)


def refuse_unstartable(workflow_name: str) -> None:
    """What ``POST workflows/`` may not start (``permissions.check_startable``)."""
    check_startable(workflow_name)


class StartWorkflowSerializer(serializers.Serializer):
    workflow = _name_field(help_text="The registered name of the workflow.")
    args = JSONValueField(kind="array", required=False, default=list)
    kwargs = JSONValueField(kind="object", required=False, default=dict)
    workflow_id = _name_field(
        required=False,
        allow_null=True,
        validators=[_addressable],
        help_text="Your id for the run; generated when absent. Refused (409) while a run with this id is open.",
    )
    queue = _name_field(required=False, allow_null=True)
    start_at = serializers.DateTimeField(required=False, allow_null=True, help_text="Start no earlier than this.")
    id_reuse_policy = serializers.ChoiceField(
        choices=IdReusePolicy.choices,
        required=False,
        default=IdReusePolicy.ALLOW_DUPLICATE,
        help_text="Whether workflow_id may name a new run when earlier runs exist.",
    )

    def validate_kwargs(self, value: dict[str, store.JSON]) -> dict[str, store.JSON]:
        reserved = sorted(RESERVED_KWARGS.intersection(value))
        if reserved:
            raise serializers.ValidationError(
                f"Keyword arguments named {', '.join(reserved)} cannot be passed to a workflow."
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # An unknown or unstartable name is NotRegistered (400 not_registered), raised here.
        refuse_unstartable(attrs["workflow"])
        definition = registry.get_workflow_definition(attrs["workflow"])
        try:
            signature = inspect.signature(definition.fn)
        except (TypeError, ValueError):
            return attrs
        try:
            signature.bind(None, *attrs["args"], **attrs["kwargs"])  # None stands for the context
        except TypeError as exc:
            raise serializers.ValidationError(
                {"args": [f"The arguments do not match workflow {definition.name!r}: {exc}."]}
            ) from None
        return attrs


class StartedWorkflowSerializer(serializers.Serializer):
    workflow_id = serializers.CharField()
    run_id = serializers.CharField()
    status = serializers.ChoiceField(choices=WorkflowStatus.choices)


def _reason_field(**kwargs: Any) -> serializers.CharField:
    return serializers.CharField(
        max_length=MAX_MESSAGE_LENGTH,
        required=False,
        allow_blank=True,
        allow_null=True,
        trim_whitespace=False,
        **kwargs,
    )


class TerminateWorkflowSerializer(serializers.Serializer):
    reason = _reason_field()


class NoBodySerializer(serializers.Serializer):
    """For verbs that take no arguments: any JSON object (its keys are ignored), or no body."""


class SignalWorkflowSerializer(serializers.Serializer):
    name = _name_field(help_text="The event's name; the workflow reads it with ctx.wait_for_event(name).")
    payload = JSONValueField(required=False, allow_null=True, default=None, help_text="The event's payload (any JSON).")


class SuspendWorkflowSerializer(serializers.Serializer):
    reason = _reason_field(help_text="Kept in the run's history.")


class RerunWorkflowSerializer(serializers.Serializer):
    from_event = serializers.IntegerField(
        min_value=2,
        help_text="The history event (seq) to rerun from: the events before it are kept.",
    )
    workflow_id = _name_field(
        required=False,
        allow_null=True,
        validators=[_addressable],
        help_text="The new run's workflow id (the same id when absent); 409 while that id has an open run.",
    )


class WorkflowFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=WorkflowStatus.choices, required=False)
    workflow_name = _name_field(required=False)
    workflow_id = _name_field(required=False)


class RunSelectorSerializer(serializers.Serializer):
    run_id = serializers.UUIDField(required=False, help_text="A particular run; the latest when absent.")


class LongPollSerializer(serializers.Serializer):
    """``?wait=<seconds>`` of describe: at most ``DURABLE["API_MAX_WAIT"]`` (read per request)."""

    wait = serializers.FloatField(
        required=False,
        min_value=0,
        help_text="Wait up to this many seconds for the run to close before answering.",
    )

    def validate_wait(self, value: float) -> float:
        maximum = float(durable_settings.API_MAX_WAIT)
        if value > maximum:
            raise serializers.ValidationError(
                f"Ensure this value is less than or equal to {maximum:g} (the API_MAX_WAIT setting)."
            )
        return value


class WorkflowSummarySerializer(serializers.ModelSerializer):
    run_id = serializers.CharField(read_only=True)

    class Meta:
        model = WorkflowInstance
        fields = [
            "workflow_id",
            "run_id",
            "workflow_name",
            "status",
            "queue",
            "waiting_on",
            "created_at",
            "scheduled_start_at",
            "started_at",
            "closed_at",
        ]
        read_only_fields = fields


class PendingWorkSerializer(serializers.Serializer):
    kind = serializers.CharField()
    name = serializers.CharField()
    task_id = serializers.IntegerField(allow_null=True)
    queue = serializers.CharField()
    due_at = serializers.DateTimeField()
    attempt = serializers.IntegerField()
    lease_owner = serializers.CharField(allow_null=True)
    lease_expires_at = serializers.DateTimeField(allow_null=True)
    failures = serializers.IntegerField()
    parked_at = serializers.DateTimeField(allow_null=True)
    last_error = JSONValueField(kind="object", allow_null=True)


class PendingWorkField(serializers.ListField):
    """The run's outstanding work items (workflow task, activity attempts, timers)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=PendingWorkSerializer(), read_only=True, **kwargs)

    def get_attribute(self, instance: WorkflowInstance) -> list[store.PendingWork]:
        return store.pending_work(instance.pk)


class WorkflowDetailSerializer(WorkflowSummarySerializer):
    """One run: the stored JSON of its input, result, error and variables, as it is in the database."""

    args = JSONValueField(kind="array", source="input.args", read_only=True)
    kwargs = JSONValueField(kind="object", source="input.kwargs", read_only=True)
    result = JSONValueField(read_only=True, allow_null=True, help_text="The return value (JSON), once completed.")
    error = JSONValueField(
        kind="object", read_only=True, allow_null=True, help_text="type, message, traceback, details; once failed."
    )
    vars = JSONValueField(kind="object", read_only=True, help_text="The latest ctx.set_var() values.")
    task_error = JSONValueField(
        kind="object",
        read_only=True,
        allow_null=True,
        help_text="The latest engine-level failure of a workflow task (e.g. non-determinism), if any.",
    )
    pending_work = PendingWorkField()
    # Declared fields leave the class (REST framework's metaclass takes them): this does not
    # replace Field.parent, as the stubs see it.
    parent = serializers.CharField(  # type: ignore[assignment]
        source="parent.workflow_id",
        read_only=True,
        allow_null=True,
        help_text="For a child workflow: its parent's workflow id.",
    )
    continued_from = serializers.UUIDField(
        source="continued_from.run_id",
        read_only=True,
        allow_null=True,
        help_text="The run that continued as this one (ctx.continue_as_new), if any.",
    )
    continued_as = serializers.UUIDField(
        source="continued_as.run_id",
        read_only=True,
        allow_null=True,
        help_text="The run this one continued as, if it did.",
    )

    class Meta(WorkflowSummarySerializer.Meta):
        fields = WorkflowSummarySerializer.Meta.fields + [
            "args",
            "kwargs",
            "result",
            "error",
            "vars",
            "task_error",
            "history_length",
            "updated_at",
            "cancel_requested_at",
            "parent",
            "continued_from",
            "continued_as",
            "pending_work",
        ]
        read_only_fields = fields


class HistoryEventSerializer(serializers.ModelSerializer):
    payload = JSONValueField(kind="object", read_only=True)

    class Meta:
        model = HistoryEvent
        fields = ["seq", "kind", "name", "task_id", "payload", "timestamp"]
        read_only_fields = fields
