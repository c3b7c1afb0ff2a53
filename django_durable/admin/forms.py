"""The forms of the admin's actions (``actions``): each action's inputs, checked
before anything is sent."""

from __future__ import annotations

import datetime
import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.timezone import localtime

from .. import jsontext
from ..engine.events import EventKind
from ..models import WorkflowInstance, WorkflowStatus


class JSONTextField(forms.CharField):
    """JSON typed into a textarea; empty means ``null``. Malformed JSON, and JSON the HTTP
    API would refuse (``django_durable.jsontext``: too deeply nested, say), is a form error
    that says why, so nothing is sent."""

    widget = forms.Textarea(attrs={"rows": 6, "cols": 60, "class": "vLargeTextField", "spellcheck": "false"})

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> Any:
        text = super().to_python(value)
        if not text:
            return None
        try:
            return jsontext.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                "Not valid JSON: %(error)s (line %(line)s, column %(column)s).",
                code="invalid_json",
                params={"error": exc.msg, "line": exc.lineno, "column": exc.colno},
            ) from None
        except ValueError as exc:
            raise ValidationError("Not valid JSON: %(error)s.", code="invalid_json", params={"error": exc}) from None


class ActionForm(forms.Form):
    """A bare confirmation; subclasses add the action's inputs."""

    required_css_class = "required"  # bold labels, as on the admin's own forms

    def __init__(self, *args: Any, instance: WorkflowInstance, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance = instance
        self.user = user


class SignalForm(ActionForm):
    name = forms.CharField(max_length=255, help_text="The event name the workflow waits for (ctx.wait_for_event).")
    payload = JSONTextField(label="Payload (JSON)", help_text="Any JSON value; empty sends null.")


class TerminateForm(ActionForm):
    reason = forms.CharField(max_length=1000, help_text="Recorded in the run's history and as its error.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].initial = f"Terminated from the admin by {self.user.get_username()}"


class SuspendForm(ActionForm):
    reason = forms.CharField(max_length=1000, required=False, help_text="Optional; recorded in the run's history.")


_FAILED_CALLS = [EventKind.ACTIVITY_FAILED.value, EventKind.CHILD_WORKFLOW_FAILED.value]
RERUN_CHOICES_MAX = 1000  # longer histories get a number input instead of a list of every event


class RerunForm(ActionForm):
    from_event = forms.IntegerField(
        label="Rerun from event",
        help_text="The new run keeps the events before this one; the current code goes on from there.",
    )
    workflow_id = forms.CharField(
        max_length=255,
        required=False,
        label="New workflow id",
        help_text="Optional; by default the rerun takes this run's workflow id.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        history = self.instance.history
        length = self.instance.history_length
        field = self.fields["from_event"]
        if length <= RERUN_CHOICES_MAX:
            events = history.filter(seq__gte=2).values_list("seq", "kind", "name", "task_id", "timestamp")
            self.fields["from_event"] = field = forms.TypedChoiceField(
                coerce=int,
                label=field.label,
                help_text=field.help_text,
                choices=[(event[0], _event_label(*event)) for event in events],
            )
        else:
            self.fields["from_event"] = field = forms.IntegerField(
                min_value=2,
                max_value=length,
                label=field.label,
                help_text=f"{field.help_text} A history event number from 2 to {length}.",
            )
        # A failed run is rerun from its last failed activity or child (that call is made
        # again); any other run from its closing event (its code goes on from its last step).
        failure = None
        if self.instance.status == WorkflowStatus.FAILED:
            failure = history.filter(kind__in=_FAILED_CALLS).order_by("-seq").values_list("seq", flat=True).first()
        field.initial = failure or length


def _event_label(seq: int, kind: str, name: str, task_id: int | None, timestamp: datetime.datetime) -> str:
    call = f" {name}" if name else ""
    task = f" (task {task_id})" if task_id else ""
    return f"#{seq} {kind}{call}{task} at {localtime(timestamp):%Y-%m-%d %H:%M:%S}"


class CompleteActivityForm(ActionForm):
    result = JSONTextField(label="Result (JSON)", help_text="What the activity returns to the workflow; empty is null.")


class FailActivityForm(ActionForm):
    message = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}))
    type = forms.CharField(
        max_length=255,
        required=False,
        initial="ActivityFailure",
        help_text="The error's type name; the retry policy's non_retryable_errors match it.",
    )
    details = JSONTextField(
        label="Details (JSON)", help_text="Optional; the workflow sees them on ActivityError.details."
    )


class BulkTerminateForm(forms.Form):
    reason = forms.CharField(max_length=1000, help_text="Recorded in each run's history and as its error.")
