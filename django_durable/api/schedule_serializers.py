"""Request and response shapes of the schedule endpoints (``api.schedules``).

The request serializers check types and bounds; what a schedule means (a cron expression,
a zone, exactly one of cron and every) is checked by ``schedules.client.schedule_values``,
as for ``durable.create_schedule``.
"""

from __future__ import annotations

import datetime
import inspect
from typing import Any

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from .. import registry
from ..models import OverlapPolicy, Schedule, WorkflowStatus
from ..schedules.client import BACKFILL_LIMIT, MIN_CATCHUP_WINDOW, SCHEDULE_ID_MAX_LENGTH, ScheduleDescription
from .serializers import MAX_MESSAGE_LENGTH, MAX_NAME_LENGTH, JSONValueField

# The longest interval the ``every`` column holds on every database (a 32-bit integer on
# PostgreSQL); the other durations are held to the same bound.
MAX_SECONDS = 2**31 - 1


class SecondsField(serializers.FloatField):
    """A duration in seconds: a JSON number (not text, not a boolean)."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, (bool, str)):
            self.fail("invalid")
        return float(super().to_internal_value(data))

    # The stubs give FloatField a text representation; REST framework's own is a number.
    def to_representation(self, value: Any) -> float | None:  # type: ignore[override]
        if isinstance(value, datetime.timedelta):
            return value.total_seconds()
        return None if value is None else float(value)


class WholeSecondsField(serializers.IntegerField):
    """Whole seconds: a JSON number without a fraction (not text, not a boolean)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, (bool, str)):
            self.fail("invalid")
        return int(super().to_internal_value(data))


class StrictBooleanField(serializers.BooleanField):
    """JSON true or false (not "yes", 1 or "on")."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StoredDateTimeField(serializers.DateTimeField):
    """A datetime in the range every supported database stores (MariaDB's DATETIME: years 1000
    to 9999), so that the schedule's arithmetic around it stays within Python's too."""

    EARLIEST = datetime.datetime(1000, 1, 1, tzinfo=datetime.timezone.utc)

    def to_internal_value(self, value: Any) -> datetime.datetime:
        moment = super().to_internal_value(value)
        earliest = self.EARLIEST if moment.tzinfo is not None else self.EARLIEST.replace(tzinfo=None)
        if moment < earliest:
            raise serializers.ValidationError(_("Ensure this datetime is from the year 1000 (UTC) on."))
        return moment


def addressable_schedule_id(value: str) -> None:
    if "/" in value:
        raise serializers.ValidationError(_("A schedule id used over HTTP cannot contain '/'."))


def check_arguments(workflow_name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """400 if the workflow's signature cannot take these arguments, as ``POST workflows/`` says."""
    definition = registry.get_workflow_definition(workflow_name)
    try:
        signature = inspect.signature(definition.fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, *args, **kwargs)  # None stands for the context
    except TypeError as exc:
        raise serializers.ValidationError(
            {"args": [f"The arguments do not match workflow {definition.name!r}: {exc}."]}
        ) from None


class TextField(serializers.CharField):
    """A JSON string (REST framework's CharField would take a number and make it text)."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


def _text(max_length: int = MAX_NAME_LENGTH, **kwargs: Any) -> TextField:
    return TextField(max_length=max_length, trim_whitespace=False, **kwargs)


# -- requests ---------------------------------------------------------------------------


class ScheduleOptionsSerializer(serializers.Serializer):
    """The options of a schedule, all optional: what ``PATCH schedules/<id>/`` changes.

    A field left out keeps its value; ``null`` puts an optional one back to its default.
    Naming only one of ``cron`` and ``every`` replaces the other.
    """

    workflow = _text(required=False, help_text="The registered name of the workflow each tick starts.")
    args = JSONValueField(kind="array", required=False)
    kwargs = JSONValueField(kind="object", required=False)
    cron = _text(
        required=False,
        allow_null=True,
        help_text="Five fields 'minute hour day-of-month month day-of-week' (e.g. '30 2 * * *') or an alias "
        "(@hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually), read in `timezone`. "
        "Exactly one of cron and every.",
    )
    every = WholeSecondsField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_SECONDS,
        help_text="Seconds between ticks, aligned to the Unix epoch. Exactly one of cron and every.",
    )
    timezone = _text(
        max_length=64,
        required=False,
        allow_null=True,
        help_text="The IANA zone cron is read in (default: the project's TIME_ZONE).",
    )
    overlap = serializers.ChoiceField(
        choices=OverlapPolicy.choices,
        required=False,
        help_text="What a tick does while the previous run is open (default: skip).",
    )
    catchup_window = SecondsField(
        required=False,
        min_value=MIN_CATCHUP_WINDOW.total_seconds(),
        max_value=MAX_SECONDS,
        help_text="Seconds, at least 10: ticks missed while no worker ran are fired if this recent, else counted "
        "as missed (default: 3600).",
    )
    jitter = SecondsField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=MAX_SECONDS,
        help_text="Seconds: each tick fires up to this much later.",
    )
    start_at = StoredDateTimeField(
        required=False, allow_null=True, help_text="No tick before this (from the year 1000, UTC, on)."
    )
    end_at = StoredDateTimeField(required=False, allow_null=True, help_text="No tick after this (year 1000 on).")
    paused = StrictBooleanField(required=False)
    queue = _text(required=False, allow_null=True, help_text="Default: the workflow's queue.")
    note = _text(max_length=MAX_MESSAGE_LENGTH, required=False, allow_null=True, allow_blank=True)


class CreateScheduleSerializer(ScheduleOptionsSerializer):
    schedule_id = _text(
        max_length=SCHEDULE_ID_MAX_LENGTH,
        validators=[addressable_schedule_id],
        help_text="Your id for the schedule; its runs' ids are '<schedule_id>-<tick, UTC, ISO 8601 basic>'. "
        "409 if it is taken.",
    )
    workflow = _text(help_text="The registered name of the workflow each tick starts.")


class ScheduleNoteSerializer(serializers.Serializer):
    note = _text(
        max_length=MAX_MESSAGE_LENGTH,
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text="Replaces the schedule's note; left as it is when absent or null.",
    )


class BackfillScheduleSerializer(serializers.Serializer):
    start = StoredDateTimeField(help_text="The first moment of the interval (inclusive; from the year 1000 on).")
    end = StoredDateTimeField(help_text=f"The last (inclusive; not past now). At most {BACKFILL_LIMIT} ticks.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["end"] < attrs["start"]:
            raise serializers.ValidationError({"end": [_("The end of the interval is before its start.")]})
        return attrs


# -- responses --------------------------------------------------------------------------


class BlankAsNullField(serializers.CharField):
    """A text column where blank means "none" (a schedule's cron when it runs on every)."""

    def to_representation(self, value: Any) -> str | None:  # type: ignore[override]
        return str(value) if value else None


class LastRunSerializer(serializers.Serializer):
    workflow_id = serializers.CharField()
    run_id = serializers.CharField()
    status = serializers.ChoiceField(choices=WorkflowStatus.choices)


class ScheduleSummarySerializer(serializers.ModelSerializer):
    """A schedule as the list shows it: read from its row alone."""

    workflow = serializers.CharField(source="workflow_name", read_only=True)
    cron = BlankAsNullField(read_only=True, allow_null=True)
    catchup_window = SecondsField(read_only=True)
    buffered = serializers.IntegerField(source="buffered_count", read_only=True, help_text="Ticks waiting.")
    last_run = LastRunSerializer(read_only=True, allow_null=True, help_text="The latest run it started.")

    class Meta:
        model = Schedule
        fields = [
            "schedule_id",
            "workflow",
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
            "from_settings",
            "next_fire_at",
            "last_run",
            "buffered",
            "runs_started",
            "ticks_skipped",
            "ticks_missed",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "next_fire_at": {
                "help_text": "When a worker fires the next tick (the tick plus its jitter); "
                "null while paused or once the schedule has ended."
            },
        }


class ScheduledRunSerializer(serializers.Serializer):
    workflow_id = serializers.CharField()
    run_id = serializers.CharField()
    tick = serializers.DateTimeField()
    reason = serializers.CharField(help_text='"tick", "trigger" or "backfill".')
    started_at = serializers.DateTimeField()
    status = serializers.ChoiceField(
        choices=WorkflowStatus.choices, allow_null=True, help_text="null once the run has been purged."
    )


class DescribedField(serializers.ListField):
    """A list of ``schedules.client.describe()``'s answer, which the view passes in the
    context as "description" (it reads the runs' statuses)."""

    def get_attribute(self, instance: Schedule) -> list[Any]:
        description: ScheduleDescription = self.context["description"]
        assert self.field_name is not None  # bound to its serializer
        return list(getattr(description, self.field_name))


class ScheduleSerializer(ScheduleSummarySerializer):
    """One schedule: its row, its input, the next ticks and the runs it started lately."""

    args = JSONValueField(kind="array", source="input.args", read_only=True)
    kwargs = JSONValueField(kind="object", source="input.kwargs", read_only=True)
    next_fire_times = DescribedField(
        child=serializers.DateTimeField(),
        read_only=True,
        help_text="The next ticks (up to 10; none while paused), jitter not added.",
    )
    recent_runs = DescribedField(child=ScheduledRunSerializer(), read_only=True, help_text="Newest first (up to 10).")

    class Meta(ScheduleSummarySerializer.Meta):
        fields = ScheduleSummarySerializer.Meta.fields + ["args", "kwargs", "next_fire_times", "recent_runs"]
        read_only_fields = fields


class TriggeredSerializer(serializers.Serializer):
    started = serializers.BooleanField(help_text="false: the overlap policy skipped the run or buffered it.")
    workflow_id = serializers.CharField(allow_null=True)
    run_id = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=WorkflowStatus.choices, allow_null=True)
    overlap = serializers.ChoiceField(choices=OverlapPolicy.choices)
    buffered = serializers.IntegerField(help_text="Ticks now waiting for the previous run to close.")


class BackfilledSerializer(serializers.Serializer):
    started = serializers.ListField(child=serializers.CharField(), help_text="The started runs' workflow ids.")
    started_count = serializers.IntegerField()
    buffered = serializers.IntegerField(help_text="Ticks left waiting for the previous run to close.")
    skipped = serializers.IntegerField(help_text="Ticks the overlap policy dropped.")
    already_run = serializers.IntegerField(help_text="Ticks that had a run already (never fired twice).")
