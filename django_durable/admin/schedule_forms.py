"""The schedule admin's forms: the schedule itself, validated by ``schedule_values`` (the
rules of ``create_schedule``) and saved through ``store.schedules``, with a preview of its
next fire times; and the inputs of its actions."""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from .. import registry, store
from ..exceptions import NotRegistered, SerializationError
from ..models import Schedule
from ..permissions import check_startable, may_schedule
from ..schedules.client import schedule_values
from ..schedules.spec import InvalidSchedule, ScheduleSpec
from ..store import schedules as schedule_store
from .forms import JSONTextField

PREVIEW = "_preview"  # the name of the submit button that previews instead of saving
PREVIEW_COUNT = 5
# The form's fields for the options of schedule_values(), by the name its messages use.
MESSAGE_FIELDS = {
    "schedule id": "schedule_id",
    "cron": "cron",
    "every": "every",
    "timezone": "timezone",
    "start_at": "start_at",
    "end_at": "end_at",
    "jitter": "jitter",
    "args": "input_args",
    "kwargs": "input_kwargs",
    "overlap": "overlap",
    "catchup_window": "catchup_window",
}
SPEC_FIELDS = ("cron", "every", "timezone", "start_at", "end_at", "jitter")
TIMING_FIELDS = ("cron", "every", "timezone", "start_at", "end_at")  # jitter only delays a tick
WORKFLOW_FIELDS = ("workflow_name", "input_args", "input_kwargs")
# The model fields schedule_values() gives, and those the preview plans from.
SAVED_FIELDS = (
    "workflow_name",
    "input",
    "queue",
    *SPEC_FIELDS,
    "overlap",
    "catchup_window",
    "paused",
    "note",
    "next_tick_at",
    "last_tick_at",
)


def startable_workflows() -> list[str]:
    """The registered workflows the admin may start: not internal, and in API_STARTABLE_WORKFLOWS if set."""
    names = []
    for name in sorted(registry.registered_workflows()):
        try:
            check_startable(name)
        except NotRegistered:
            continue
        names.append(name)
    return names


def field_named_in(message: str) -> str | None:
    """The form field an error of ``schedule_values`` is about: the option its message names first."""
    found = [
        (match.start(), field)
        for name, field in MESSAGE_FIELDS.items()
        if (match := re.search(rf"\b{re.escape(name)}\b", message))
    ]
    return min(found)[1] if found else None


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class ScheduleForm(forms.ModelForm):
    """Add or change a schedule. ``ScheduleAdmin.get_form`` sets ``user``. A POST with the
    ``_preview`` button validates and shows the next fire times without saving."""

    workflow_name = forms.ChoiceField(
        label="Workflow",
        help_text="A registered workflow that may be started from outside the code "
        "(not django_durable.*, and in API_STARTABLE_WORKFLOWS when that is set).",
    )
    input_args = JSONTextField(label="args (JSON)", help_text="A JSON array of positional arguments; empty is [].")
    input_kwargs = JSONTextField(label="kwargs (JSON)", help_text="A JSON object of keyword arguments; empty is {}.")

    user: Any = None

    class Meta:
        model = Schedule
        fields = (
            "schedule_id",
            "workflow_name",
            "queue",
            "cron",
            "every",
            "timezone",
            "start_at",
            "end_at",
            "jitter",
            "overlap",
            "catchup_window",
            "paused",
            "note",
        )
        help_texts = {
            "schedule_id": "Unique; it cannot be changed later. Its runs are named after it and their "
            "tick's UTC time, e.g. nightly-20261207T030000Z.",
            "cron": "Five fields 'minute hour day-of-month month day-of-week' (e.g. 30 2 * * *) or an alias "
            "such as @daily, read in the time zone below. Give cron or every, not both.",
            "every": "Seconds between ticks, aligned to the Unix epoch (300 fires at :00, :05, ...).",
            "timezone": "An IANA zone, e.g. Europe/Paris; cron is read in it, with its daylight saving time.",
            "start_at": "No tick before this time.",
            "end_at": "No tick after this time.",
            "catchup_window": "Ticks missed while no worker ran are fired if this recent, else skipped "
            "(e.g. 00:10:00 for ten minutes).",
            "queue": "Empty: the workflow's own queue, else DEFAULT_QUEUE.",
            "note": "Shown in the list, e.g. why the schedule is paused.",
        }
        labels = {"schedule_id": "Schedule id", "catchup_window": "Catch-up window", "timezone": "Time zone"}
        widgets = {"note": forms.Textarea(attrs={"rows": 2, "cols": 60})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adding = self.instance.pk is None
        self.values: dict[str, Any] | None = None
        self.preview: list[datetime.datetime] | None = None
        # The saved values, before construct_instance() writes the form's into the instance.
        self.saved = {name: getattr(self.instance, name) for name in SAVED_FIELDS}
        if "queue" in self.fields:
            self.fields["queue"].required = False
        if "timezone" in self.fields and self.adding:
            self.fields["timezone"].initial = settings.TIME_ZONE or "UTC"
        choices = startable_workflows()
        current = self.instance.workflow_name
        labels = {name: name for name in choices}
        if current and current not in labels:
            labels[current] = f"{current} (current; not startable from the admin)"
        workflow_field = self.fields["workflow_name"]
        assert isinstance(workflow_field, forms.ChoiceField)
        workflow_field.choices = [("", "---------"), *labels.items()]
        if not self.adding:
            given = self.instance.input if isinstance(self.instance.input, dict) else {}
            self.initial["input_args"] = _json_text(given.get("args", []))
            self.initial["input_kwargs"] = _json_text(given.get("kwargs", {}))
            if not may_schedule(self.user, "update_workflow"):
                locked = "Changing the workflow or its arguments needs the permission to start runs."
                for name in WORKFLOW_FIELDS:
                    self.fields[name].disabled = True
                    self.fields[name].help_text = locked

    @property
    def previewing(self) -> bool:
        return PREVIEW in self.data

    def is_valid(self) -> bool:
        # A preview never saves: the admin then shows the form again, with the fire times.
        return super().is_valid() and not self.previewing

    def clean_input_args(self) -> list[Any]:
        value = self.cleaned_data.get("input_args")
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValidationError(
                'A JSON array of positional arguments, e.g. [1, "a"]; got %(value)s.',
                code="not_array",
                params={"value": _json_text(value)},
            )
        return value

    def clean_input_kwargs(self) -> dict[str, Any]:
        value = self.cleaned_data.get("input_kwargs")
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValidationError(
                'A JSON object of keyword arguments, e.g. {"n": 1}; got %(value)s.',
                code="not_object",
                params={"value": _json_text(value)},
            )
        return value

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if not self.errors:
            self._validate(data)
        if not any(name in self.errors for name in SPEC_FIELDS):
            self.preview = self._preview(data)
        return data

    def _validate(self, data: dict[str, Any]) -> None:
        schedule_id = data.get("schedule_id", "") if self.adding else self.instance.schedule_id
        new_input = {"args": data["input_args"], "kwargs": data["input_kwargs"]}
        starts_other_runs = self.adding or (data["workflow_name"], new_input) != (
            self.saved["workflow_name"],
            self.saved["input"],
        )
        try:
            if starts_other_runs:
                check_startable(data["workflow_name"])
            self.values = schedule_values(
                schedule_id,
                workflow=data["workflow_name"],
                args=data["input_args"],
                kwargs=data["input_kwargs"],
                cron=data.get("cron") or None,
                every=data.get("every"),
                timezone=data.get("timezone"),
                overlap=data.get("overlap") or "",
                catchup_window=data["catchup_window"],
                jitter=data.get("jitter"),
                start_at=data.get("start_at"),
                end_at=data.get("end_at"),
                paused=data.get("paused", False),
                queue=data.get("queue") or None,
                note=data.get("note", ""),
            )
            if not starts_other_runs:
                # The page shows the stored, encoded input: encoding it again would wrap it again.
                self.values["input"] = self.saved["input"]
        except NotRegistered as exc:
            self.add_error("workflow_name", exc.detail)
        except SerializationError as exc:  # too large, say
            self.add_error("input_args", exc.detail)
        except InvalidSchedule as exc:
            field = field_named_in(str(exc))
            self.add_error(field if field in self.fields else None, str(exc))

    def _preview(self, data: dict[str, Any]) -> list[datetime.datetime] | None:
        """The next fire times (jitter not added) if the form were saved now."""
        try:
            spec = ScheduleSpec.build(
                cron=data.get("cron") or None,
                every=data.get("every"),
                timezone=data.get("timezone") or "",
                start_at=data.get("start_at"),
                end_at=data.get("end_at"),
                jitter=data.get("jitter"),
            )
        except InvalidSchedule:
            return None
        # As update_schedule plans it: a new timing, or unpausing, starts from now (never before
        # the last tick fired); other changes keep the planned tick.
        unpausing = self.saved["paused"] and not data.get("paused")
        first = self.saved["next_tick_at"]
        if not self.adding and first is not None and not unpausing and not self.has_changed_any(*TIMING_FIELDS):
            return [first, *spec.upcoming(first, PREVIEW_COUNT - 1)]
        now = store.db_now()
        return spec.upcoming(max(now, self.saved["last_tick_at"] or now), PREVIEW_COUNT)

    def has_changed_any(self, *names: str) -> bool:
        return any(name in self.changed_data for name in names)

    def save(self, commit: bool = True) -> Schedule:
        if commit:
            return self.save_schedule()
        return super().save(commit=False)

    def save_schedule(self) -> Schedule:
        """Create or update the schedule through the store, which plans its next tick."""
        assert self.values is not None, "save_schedule() after a successful is_valid()"
        if self.adding:
            return schedule_store.create_schedule({"schedule_id": self.cleaned_data["schedule_id"], **self.values})
        changed = {name: value for name, value in self.values.items() if self.saved.get(name) != value}
        if not changed:
            return schedule_store.get_schedule(self.instance.schedule_id)
        return schedule_store.update_schedule(self.instance.schedule_id, changed)


class ScheduleActionForm(forms.Form):
    """A bare confirmation; subclasses add the action's inputs."""

    required_css_class = "required"


class PauseForm(ScheduleActionForm):
    note = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text="Optional: replaces the schedule's note (say why it is paused). Empty keeps the note.",
    )


class UnpauseForm(PauseForm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["note"].help_text = "Optional: replaces the schedule's note. Empty keeps the note."


class DateTimeLocalInput(forms.DateTimeInput):
    input_type = "datetime-local"
    format = "%Y-%m-%dT%H:%M:%S"


def _datetime_field(label: str) -> forms.DateTimeField:
    zone = timezone.get_current_timezone_name()
    return forms.DateTimeField(label=f"{label} ({zone})", widget=DateTimeLocalInput(attrs={"step": 1}))


class BackfillForm(ScheduleActionForm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["start"] = _datetime_field("Start")
        self.fields["end"] = _datetime_field("End")
        self.fields["end"].help_text = (
            "The ticks from start to end (inclusive, not past now) that have no run yet start now, oldest "
            "first, under the overlap policy; at most 1,000 ticks at a time."
        )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        start, end = data.get("start"), data.get("end")
        if start is not None and end is not None and end < start:
            self.add_error("end", "The end is before the start.")
        return data
