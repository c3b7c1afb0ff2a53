"""The schedules' admin, after django-celery-beat's: the list (the specification in words, the
next fire time, the last run and its status, paused with its note), the form (validated as
``create_schedule`` validates, saved through ``store.schedules``, previewing the next five fire
times) and the actions (``schedule_actions``).

Permissions are the ``Schedule`` model's, with ``django_durable.permissions``'s rules for the
operations that start runs: adding needs ``add_schedule`` and ``add_workflowinstance``, and
changing the workflow or its arguments needs ``add_workflowinstance`` too.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, QueryDict
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.views.decorators.clickjacking import xframe_options_deny

from .. import store
from ..exceptions import ScheduleNotFound
from ..models import PAYLOAD_COLUMNS, Schedule
from ..permissions import may_schedule
from ..store import schedule_views
from ..store import schedules as schedule_store
from . import schedule_actions
from .instances import badge, to_pretty
from .schedule_forms import PREVIEW, ScheduleForm
from .schedule_text import fire_times, late_after, run_counts, spec_text, when


class ScheduleChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, *args: Any, **kwargs: Any) -> QuerySet:
        late_before = store.db_now() - late_after()
        return (
            super()
            .get_queryset(request, *args, **kwargs)
            .select_related("last_run")
            .defer(*schedule_views.HEAVY_SCHEDULE_COLUMNS)
            .defer(*(f"last_run__{name}" for name in PAYLOAD_COLUMNS))
            .annotate(late=ExpressionWrapper(Q(next_fire_at__lt=late_before), output_field=BooleanField()))
        )


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    actions = schedule_actions.ACTIONS
    list_display = ("schedule_id", "workflow_name", "spec", "next_fire", "last_run_status", "paused_note", "counts")
    list_display_links = ("schedule_id",)
    list_filter = ("paused", "overlap", "workflow_name")
    search_fields = ("schedule_id", "workflow_name")
    search_help_text = "A schedule id or a workflow name, or part of one."
    change_list_template = "admin/django_durable/schedule/change_list.html"
    change_form_template = "admin/django_durable/schedule/change_form.html"
    fieldsets = (
        (None, {"fields": ("schedule_id", "workflow_name", "input_args", "input_kwargs", "queue")}),
        ("When", {"fields": (("cron", "every"), "timezone", ("start_at", "end_at"), "jitter")}),
        ("Overlap and catch-up", {"fields": ("overlap", "catchup_window")}),
        ("State", {"fields": ("paused", "note")}),
    )

    # -- permissions ---------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return may_schedule(request.user, "create")

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return may_schedule(request.user, "pause")

    def has_unpause_permission(self, request: HttpRequest) -> bool:
        return may_schedule(request.user, "unpause")

    def has_trigger_permission(self, request: HttpRequest) -> bool:
        return may_schedule(request.user, "trigger")

    def has_backfill_permission(self, request: HttpRequest) -> bool:
        return may_schedule(request.user, "backfill")

    # -- the list ------------------------------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ScheduleChangeList

    @admin.display(description="when")
    def spec(self, schedule: Schedule) -> str:
        return spec_text(schedule)

    @admin.display(description="next fire", ordering="next_fire_at")
    def next_fire(self, schedule: Schedule) -> str:
        if schedule.next_fire_at is None:
            return format_html('<span class="quiet">{}</span>', "paused" if schedule.paused else "no more ticks")
        if getattr(schedule, "late", False):
            return format_html(
                '{} <span class="durable-late" title="{}">late</span>',
                when(schedule.next_fire_at),
                "Due for longer than HEALTH_SCHEDULE_LATE_AFTER: is a worker running?",
            )
        return when(schedule.next_fire_at)

    @admin.display(description="last run")
    def last_run_status(self, schedule: Schedule) -> str:
        run = schedule.last_run
        if run is None:
            return ""
        url = reverse(f"{self.admin_site.name}:django_durable_workflowinstance_change", args=(quote(run.pk),))
        return format_html('<a href="{}">{}</a> {}', url, run.workflow_id, badge(run.status))

    @admin.display(description="paused", ordering="paused")
    def paused_note(self, schedule: Schedule) -> str:
        state = format_html('<strong class="durable-paused">{}</strong>', "paused") if schedule.paused else "no"
        if not schedule.note:
            return state
        return format_html('{}<div class="quiet durable-note">{}</div>', state, schedule.note)

    @admin.display(description="runs")
    def counts(self, schedule: Schedule) -> str:
        return run_counts(schedule)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        site = self.admin_site.name
        context = {
            "durable_dashboard_url": reverse(f"{site}:django_durable_workflowinstance_dashboard"),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    # -- the form ------------------------------------------------------------------------

    def get_readonly_fields(self, request: HttpRequest, obj: Schedule | None = None) -> tuple[str, ...]:
        return ("schedule_id",) if obj is not None else ()

    def get_form(
        self, request: HttpRequest, obj: Schedule | None = None, change: bool = False, **kwargs: Any
    ) -> type[ModelForm]:
        form = super().get_form(request, obj, change=change, **kwargs)
        form.user = request.user  # type: ignore[attr-defined]  # a fresh class per request
        return form

    @admin.display(description="args (JSON)")
    def input_args(self, schedule: Schedule) -> str:
        return format_html("<pre>{}</pre>", to_pretty(schedule.input.get("args", [])))

    @admin.display(description="kwargs (JSON)")
    def input_kwargs(self, schedule: Schedule) -> str:
        return format_html("<pre>{}</pre>", to_pretty(schedule.input.get("kwargs", {})))

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        saved = form.save_schedule()
        for field in Schedule._meta.concrete_fields:
            setattr(obj, field.attname, getattr(saved, field.attname))

    def delete_model(self, request: HttpRequest, obj: Schedule) -> None:
        try:
            schedule_store.delete_schedule(obj.schedule_id)
        except ScheduleNotFound:
            pass  # deleted meanwhile

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for schedule_id in queryset.values_list("schedule_id", flat=True):
            try:
                schedule_store.delete_schedule(schedule_id)
            except ScheduleNotFound:
                pass

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Schedule | None = None,
    ) -> HttpResponse:
        form = context["adminform"].form
        editable = add or self.has_change_permission(request, obj)
        context["durable_schedule"] = {
            "editable": editable,
            "preview_button": PREVIEW,
            **_preview(form, obj),
            **(_about(self, request, obj) if obj is not None else {}),
        }
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    def get_urls(self) -> list[Any]:
        def view(fn: Any) -> Any:
            return self.admin_site.admin_view(lambda request, *args, **kwargs: fn(self, request, *args, **kwargs))

        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        patterns = [
            path(
                "<path:object_id>/actions/<str:verb>/",
                view(schedule_actions.action_view),
                name=f"{prefix}_action",
            ),
            *super().get_urls(),
        ]
        # As the run pages: its action buttons are not to be framed.
        return [
            URLPattern(p.pattern, xframe_options_deny(p.callback), p.default_args, p.name)
            if isinstance(p, URLPattern)
            else p
            for p in patterns
        ]


def _preview(form: Any, obj: Schedule | None) -> dict[str, Any]:
    """The next fire times: the form's (a POST, saved or not) or the saved schedule's."""
    if form.is_bound:
        data = getattr(form, "cleaned_data", {})
        ticks = getattr(form, "preview", None)
        if ticks is None:
            return {"preview": None, "preview_from_form": True}
        return {
            "preview": fire_times(ticks, data.get("timezone") or "UTC"),
            "preview_from_form": True,
            "preview_paused": bool(data.get("paused")),
        }
    if obj is None or obj.next_tick_at is None:
        return {"preview": [] if obj is not None else None, "preview_from_form": False}
    spec = schedule_store.spec_of(obj)
    ticks = [obj.next_tick_at, *spec.upcoming(obj.next_tick_at, 4)]
    return {"preview": fire_times(ticks, obj.timezone), "preview_from_form": False, "preview_paused": obj.paused}


def _about(model_admin: ScheduleAdmin, request: HttpRequest, schedule: Schedule) -> dict[str, Any]:
    """What a schedule's page shows beyond its form: its actions, state and recent runs."""
    site = model_admin.admin_site.name
    runs = schedule_views.runs_by_run_id(entry["run_id"] for entry in schedule.recent_runs)
    recent = []
    for entry in schedule.recent_runs:
        run = runs.get(entry["run_id"])
        recent.append(
            {
                **entry,
                "tick": datetime.datetime.fromisoformat(entry["tick"]),
                "started_at": datetime.datetime.fromisoformat(entry["started_at"]),
                "url": reverse(f"{site}:django_durable_workflowinstance_change", args=(quote(run["pk"]),))
                if run
                else "",
                "status": badge(run["status"]) if run else "",
            }
        )
    same_schedule = QueryDict(mutable=True)
    same_schedule["workflow_id__startswith"] = f"{schedule.schedule_id}-"
    changelist = reverse(f"{site}:django_durable_workflowinstance_changelist")
    return {
        "actions": schedule_actions.object_actions(request, schedule),
        "spec": spec_text(schedule),
        "schedule": schedule,
        "counts": run_counts(schedule),
        "recent_runs": recent,
        "runs_url": f"{changelist}?{same_schedule.urlencode()}",
        "dashboard_url": reverse(f"{site}:django_durable_workflowinstance_dashboard"),
    }
