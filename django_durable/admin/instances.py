"""The run list and a run's page: what a staff user finds and inspects."""

from __future__ import annotations

import datetime
import json
import math
import re
import uuid
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet
from django.db.models.fields.json import KT
from django.http import HttpRequest, HttpResponse, QueryDict
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.views.decorators.clickjacking import xframe_options_deny

from ..engine.events import FAILURE_KINDS, EventKind
from ..models import PAYLOAD_COLUMNS, WorkflowInstance, WorkflowStatus, WorkItem, WorkItemKind
from ..permissions import SCHEDULE_CHANGE, SCHEDULE_VIEW
from ..store import schedule_views
from ..tokens import make_task_token
from . import actions, bulk_actions, dashboard, timeline, timetravel
from .schedule_text import when

# Columns the list never shows: they can be large, and a page of 100 runs would read them all.
STATUS_COLOURS: dict[str, str] = {
    WorkflowStatus.PENDING: "#6c757d",
    WorkflowStatus.RUNNING: "#1f6fb2",
    WorkflowStatus.SUSPENDED: "#b8860b",
    WorkflowStatus.COMPLETED: "#2e7d32",
    WorkflowStatus.FAILED: "#ba2121",
    WorkflowStatus.CANCELED: "#8d6e63",
    WorkflowStatus.TERMINATED: "#6a1b9a",
    WorkflowStatus.CONTINUED_AS_NEW: "#00838f",
}
HISTORY_PAGE = 100  # events per page of the history table
HISTORY_EDGE = 50  # a long history opens on its first and last this many events
TIMELINE_EVENTS = 5000  # the picture reads at most this many events (light columns only)
WORK_LIMIT = 200
RELATED_LIMIT = 50
PREVIEW_CHARS = 160
BAD_KINDS = FAILURE_KINDS | {
    EventKind.WORKFLOW_FAILED,
    EventKind.WORKFLOW_TERMINATED,
    EventKind.WORKFLOW_CANCELED,
    EventKind.CANCEL_REQUESTED,
}


def badge(status: str) -> str:
    label = WorkflowStatus(status).label if status in WorkflowStatus.values else status
    colour = STATUS_COLOURS.get(status, "#6c757d")
    return format_html('<span class="durable-status" style="background:{}">{}</span>', colour, label)


def format_duration(start: datetime.datetime | None, end: datetime.datetime | None) -> str:
    if start is None or end is None:
        return ""
    return timeline.format_duration(max((end - start).total_seconds(), 0.0))


def to_pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def payload_view(payload: Any) -> dict[str, Any]:
    """A payload as a one-line preview, the whole of it pretty-printed, and any
    traceback it carries as text (a traceback inside JSON is unreadable)."""
    if not payload:
        return {"preview": "", "full": "", "truncated": False, "traceback": ""}
    traceback = ""
    shown = payload
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and error.get("traceback"):
        traceback = str(error["traceback"])
        shown = {**payload, "error": {k: v for k, v in error.items() if k != "traceback"}}
    compact = json.dumps(shown, ensure_ascii=False, default=str)
    truncated = len(compact) > PREVIEW_CHARS or bool(traceback)
    preview = compact if len(compact) <= PREVIEW_CHARS else compact[: PREVIEW_CHARS - 1] + "…"
    return {"preview": preview, "full": to_pretty(shown), "truncated": truncated, "traceback": traceback}


class TaskErrorFilter(admin.SimpleListFilter):
    title = "workflow task"
    parameter_name = "task"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("failing", "failing (e.g. non-determinism)"), ("healthy", "healthy")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "failing":
            return queryset.filter(task_error__isnull=False)
        if self.value() == "healthy":
            return queryset.filter(task_error__isnull=True)
        return queryset


class InstanceChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, *args: Any, **kwargs: Any) -> QuerySet:
        return (
            super()
            .get_queryset(request, *args, **kwargs)
            .defer(*PAYLOAD_COLUMNS)
            .annotate(task_failing=ExpressionWrapper(Q(task_error__isnull=False), output_field=BooleanField()))
        )


class ReadOnlyMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WorkflowInstance)
class WorkflowInstanceAdmin(ReadOnlyMixin, bulk_actions.BulkActionsMixin, admin.ModelAdmin):
    list_display = (
        "workflow_name",
        "workflow_id",
        "short_run_id",
        "status_badge",
        "created",
        "updated",
        "closed",
        "duration",
    )
    list_display_links = ("workflow_id", "short_run_id")
    # A date filter, not date_hierarchy: that scans the whole table for its dates on every page.
    list_filter = ("status", TaskErrorFilter, "workflow_name", "created_at", "closed_at")
    search_fields = ("workflow_id",)
    search_help_text = "A workflow id (or part of one), or a run id (or its first characters)."
    # Named, so that admins of proxy models (say, failed runs only) subclassing this one get them too.
    change_list_template = "admin/django_durable/workflowinstance/change_list.html"
    change_form_template = "admin/django_durable/workflowinstance/change_form.html"
    # Counting every run on each filtered page is the slow part of a big table.
    show_full_result_count = False
    fieldsets = (
        (
            None,
            {
                "fields": (
                    ("workflow_name", "status_badge"),
                    ("workflow_id", "run_id"),
                    "queue",
                    "waiting_on",
                    "history_length",
                    "cancel_requested_at",
                )
            },
        ),
        (
            "Times",
            {"fields": (("created_at", "scheduled_start_at"), ("started_at", "closed_at"), "duration", "updated_at")},
        ),
    )
    readonly_fields = (
        "workflow_name",
        "status_badge",
        "workflow_id",
        "run_id",
        "queue",
        "waiting_on",
        "history_length",
        "cancel_requested_at",
        "created_at",
        "scheduled_start_at",
        "started_at",
        "closed_at",
        "duration",
        "updated_at",
    )

    # -- the list ------------------------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return InstanceChangeList

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip().lower()
        try:
            found |= queryset.filter(run_id=uuid.UUID(term))  # the unique index, for a pasted run id
        except ValueError:
            if re.fullmatch(r"[0-9a-f]{4,32}", term.replace("-", "")):
                found |= queryset.filter(run_id__startswith=term)
        return found, duplicates

    @admin.display(description="run id", ordering="run_id")
    def short_run_id(self, instance: WorkflowInstance) -> str:
        return format_html('<code title="{}">{}</code>', instance.run_id, str(instance.run_id)[:8])

    @admin.display(description="status", ordering="status")
    def status_badge(self, instance: WorkflowInstance) -> str:
        shown = badge(instance.status)
        failing = getattr(instance, "task_failing", None)
        if failing is None and "task_error" not in instance.get_deferred_fields():
            failing = instance.task_error is not None
        if failing:
            return format_html(
                '{} <span class="durable-task-failing" title="{}">⚠ task failing</span>',
                shown,
                "The workflow task keeps failing: open the run to see why.",
            )
        return shown

    @admin.display(description="created", ordering="created_at")
    def created(self, instance: WorkflowInstance) -> str:
        return when(instance.created_at)

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, instance: WorkflowInstance) -> str:
        return when(instance.updated_at)

    @admin.display(description="closed", ordering="closed_at")
    def closed(self, instance: WorkflowInstance) -> str:
        return when(instance.closed_at)

    @admin.display(description="duration")
    def duration(self, instance: WorkflowInstance) -> str:
        start = instance.started_at or instance.created_at
        if instance.closed_at is not None:
            return format_duration(start, instance.closed_at)
        if instance.status == WorkflowStatus.PENDING and instance.started_at is None:
            return ""
        return format_html("<i>{}</i>", format_duration(start, timezone.now()) + " so far")

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        views: list[tuple[str, dict[str, str]]] = [
            ("All", {}),
            ("Running", {"status__exact": WorkflowStatus.RUNNING}),
            ("Failed", {"status__exact": WorkflowStatus.FAILED}),
            ("Suspended", {"status__exact": WorkflowStatus.SUSPENDED}),
            ("Workflow task failing", {"task": "failing"}),
        ]
        current = {key: value for key, value in request.GET.items() if key in ("status__exact", "task")}
        quick_links = []
        for label, params in views:
            query = QueryDict(mutable=True)
            query.update(params)
            quick_links.append({"label": label, "url": "?" + query.urlencode(), "active": current == params})
        context = {
            "durable_quick_links": quick_links,
            "durable_dashboard_url": reverse(f"{self.admin_site.name}:django_durable_workflowinstance_dashboard"),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    # -- one run -------------------------------------------------------------------

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: WorkflowInstance | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context["durable"] = inspect_run(self, request, obj)
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    def get_urls(self) -> list[Any]:
        def view(fn: Any) -> Any:
            return self.admin_site.admin_view(lambda request, *args, **kwargs: fn(self, request, *args, **kwargs))

        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        patterns = [
            path("dashboard/", view(dashboard.dashboard_view), name=f"{prefix}_dashboard"),
            path("<path:object_id>/at/<int:seq>/", view(timetravel.vars_at_view), name=f"{prefix}_at"),
            path("<path:object_id>/actions/<str:verb>/", view(actions.action_view), name=f"{prefix}_action"),
            *super().get_urls(),
        ]
        # Every debugger page refuses to be framed (clickjacking on its action buttons),
        # whether or not the project installs XFrameOptionsMiddleware.
        return [
            URLPattern(p.pattern, xframe_options_deny(p.callback), p.default_args, p.name)
            if isinstance(p, URLPattern)
            else p
            for p in patterns
        ]


def _url(model_admin: WorkflowInstanceAdmin, name: str, *args: Any) -> str:
    return reverse(f"{model_admin.admin_site.name}:django_durable_workflowinstance_{name}", args=args)


def _run_link(model_admin: WorkflowInstanceAdmin, run: WorkflowInstance) -> dict[str, Any]:
    return {
        "url": _url(model_admin, "change", run.pk),
        "workflow_id": run.workflow_id,
        "workflow_name": run.workflow_name,
        "run_id": str(run.run_id),
        "status": badge(run.status),
        "created_at": run.created_at,
        "run": run,
    }


def inspect_run(model_admin: WorkflowInstanceAdmin, request: HttpRequest, instance: WorkflowInstance) -> dict[str, Any]:
    """Everything the run's page shows beyond its fields, in a fixed number of queries."""
    now = timezone.now()
    work = list(instance.work_items.defer("payload", "heartbeat_details").order_by("due_at", "id")[: WORK_LIMIT + 1])
    given = instance.input if isinstance(instance.input, dict) else {"args": instance.input}
    kwargs = given.get("kwargs")
    last_event_url = _url(model_admin, "at", instance.pk, instance.history_length) if instance.history_length else ""
    same_id = QueryDict(mutable=True)
    same_id["workflow_id"] = instance.workflow_id
    return {
        "actions": actions.object_actions(request, instance),
        "dashboard_url": _url(model_admin, "dashboard"),
        "same_id_url": f"{_url(model_admin, 'changelist')}?{same_id.urlencode()}",
        "vars_now_url": last_event_url,
        "input": {"args": to_pretty(given.get("args", [])), "kwargs": to_pretty(kwargs) if kwargs else ""},
        "result": to_pretty(instance.result) if instance.status == WorkflowStatus.COMPLETED else None,
        "error": _error(instance.error),
        "task_error": _error(instance.task_error),
        "workflow_task": next((item for item in work if item.kind == WorkItemKind.WORKFLOW), None),
        "vars": [{"name": name, "value": to_pretty(value)} for name, value in sorted((instance.vars or {}).items())],
        "related": _related(model_admin, instance),
        "schedule": _started_by(model_admin, request, instance),
        # A task token is a capability: only operators, who may complete activities anyway, see it.
        "work": _work(instance, work[:WORK_LIMIT], now, show_tokens=actions.can_operate(request)),
        "work_more": len(work) > WORK_LIMIT,
        "history": _history(model_admin, request, instance),
        "timeline": _timeline(instance, work, now),
    }


def _started_by(
    model_admin: WorkflowInstanceAdmin, request: HttpRequest, instance: WorkflowInstance
) -> dict[str, Any] | None:
    """The schedule tick the run was started for, linked to the schedule's page: one query."""
    started = schedule_views.started_by(instance.pk)
    if started is None:
        return None
    url = ""
    may_view = request.user.has_perm(SCHEDULE_VIEW) or request.user.has_perm(SCHEDULE_CHANGE)
    if started["schedule_pk"] is not None and may_view:
        url = reverse(f"{model_admin.admin_site.name}:django_durable_schedule_change", args=(started["schedule_pk"],))
    return {**started, "url": url}


def _error(error: Any) -> dict[str, Any] | None:
    if not error:
        return None
    if not isinstance(error, dict):
        return {"type": "Error", "message": str(error), "traceback": "", "details": ""}
    details = error.get("details")
    return {
        "type": error.get("type", "Error"),
        "message": error.get("message", ""),
        "traceback": error.get("traceback", ""),
        "details": to_pretty(details) if details is not None else "",
    }


def _related(model_admin: WorkflowInstanceAdmin, instance: WorkflowInstance) -> dict[str, Any]:
    fields = (
        "pk",
        "workflow_id",
        "workflow_name",
        "run_id",
        "status",
        "created_at",
        "parent_id",
        "continued_from_id",
        "rerun_of_id",
        "rerun_from_seq",
    )
    ids = [pk for pk in (instance.parent_id, instance.continued_from_id, instance.rerun_of_id) if pk]
    # The few single links in one query; children and reruns (there may be thousands) in another, capped.
    singles = list(WorkflowInstance.objects.filter(Q(pk__in=ids) | Q(continued_from=instance.pk)).only(*fields))
    many = list(
        WorkflowInstance.objects.filter(Q(parent=instance.pk) | Q(rerun_of=instance.pk))
        .only(*fields)
        .order_by("created_at", "pk")[: RELATED_LIMIT + 1]
    )
    by_pk = {run.pk: run for run in singles}
    continued_as = next((run for run in singles if run.continued_from_id == instance.pk), None)
    changelist = _url(model_admin, "changelist")
    more = len(many) > RELATED_LIMIT
    many = many[:RELATED_LIMIT]

    def link(pk: int | None) -> dict[str, Any] | None:
        return _run_link(model_admin, by_pk[pk]) if pk in by_pk else None

    return {
        "parent": link(instance.parent_id),
        "parent_task_id": instance.parent_task_id,
        "parent_close_policy": instance.parent_close_policy,
        "continued_from": link(instance.continued_from_id),
        "continued_as": _run_link(model_admin, continued_as) if continued_as else None,
        "rerun_of": link(instance.rerun_of_id),
        "rerun_from_seq": instance.rerun_from_seq,
        "children": [_run_link(model_admin, run) for run in many if run.parent_id == instance.pk],
        "reruns": [_run_link(model_admin, run) for run in many if run.rerun_of_id == instance.pk],
        "more": more,
        "children_url": f"{changelist}?parent__exact={instance.pk}",
        "reruns_url": f"{changelist}?rerun_of__exact={instance.pk}",
    }


def _work(
    instance: WorkflowInstance, items: list[WorkItem], now: datetime.datetime, *, show_tokens: bool
) -> list[dict[str, Any]]:
    rows = []
    for item in items:
        token = ""
        if item.awaiting_completion and show_tokens:
            token = make_task_token(
                item_id=item.pk, run_id=str(instance.run_id), task_id=item.task_id or 0, attempt=item.attempt
            )
        rows.append(
            {
                "item": item,
                "lease_expired": item.lease_expires_at is not None and item.lease_expires_at <= now,
                "overdue": item.lease_owner is None and item.parked_at is None and item.due_at <= now,
                "last_error": _error(item.last_error),
                "token": token,
            }
        )
    return rows


def _history(model_admin: WorkflowInstanceAdmin, request: HttpRequest, instance: WorkflowInstance) -> dict[str, Any]:
    total = instance.history_length
    pages = max(1, math.ceil(total / HISTORY_PAGE))
    try:
        page = int(request.GET["history_page"])
    except (KeyError, ValueError):
        page = None
    events = instance.history.order_by("seq")
    gap: tuple[int, int] | None = None
    if page is not None:
        page = min(max(page, 1), pages)
        first, last = (page - 1) * HISTORY_PAGE + 1, page * HISTORY_PAGE
        window = list(events.filter(seq__gte=first, seq__lte=last))
    elif total > 2 * HISTORY_PAGE:
        window = list(events.filter(Q(seq__lte=HISTORY_EDGE) | Q(seq__gt=total - HISTORY_EDGE)))
        gap = (HISTORY_EDGE + 1, total - HISTORY_EDGE)
    else:
        window = list(events)

    def page_url(number: int | None) -> str:
        query = request.GET.copy()
        query.pop("history_page", None)
        if number is not None:
            query["history_page"] = str(number)
        return ("?" + query.urlencode() if query else request.path) + "#history"

    origin = instance.started_at or instance.created_at
    rows = []
    for event in window:
        payload = event.payload if isinstance(event.payload, dict) else {"value": event.payload}
        rows.append(
            {
                "event": event,
                "offset": "+" + format_duration(origin, event.timestamp) if event.timestamp >= origin else "",
                "attempt": payload.get("attempt", ""),
                "payload": payload_view(payload),
                "at_url": _url(model_admin, "at", instance.pk, event.seq),
                "bad": event.kind in BAD_KINDS,
                "gap_after": gap is not None and event.seq == gap[0] - 1,
            }
        )
    return {
        "rows": rows,
        "total": total,
        "gap": gap,
        "gap_size": gap[1] - gap[0] + 1 if gap else 0,
        "page": page,
        "pages": pages,
        "paged": total > 2 * HISTORY_PAGE,
        "first_url": page_url(1),
        "prev_url": page_url(page - 1) if page and page > 1 else "",
        "next_url": page_url(page + 1) if page and page < pages else "",
        "last_url": page_url(pages),
        "gap_url": page_url(math.ceil(gap[0] / HISTORY_PAGE)) if gap else "",
        "edges_url": page_url(None),
    }


def _timeline(instance: WorkflowInstance, work: list[WorkItem], now: datetime.datetime) -> dict[str, Any]:
    # Only what the picture needs from each payload, so a run's arguments and tracebacks stay in the database.
    events = []
    for row in instance.history.order_by("seq").values(
        "seq",
        "kind",
        "name",
        "task_id",
        "timestamp",
        attempt=KT("payload__attempt"),
        error_type=KT("payload__error__type"),
        error_message=KT("payload__error__message"),
        fire_at=KT("payload__fire_at"),
        child_id=KT("payload__workflow_id"),
        child_status=KT("payload__status"),
    )[:TIMELINE_EVENTS]:
        payload: dict[str, Any] = {"fire_at": row["fire_at"] or "", "workflow_id": row["child_id"] or ""}
        if str(row["attempt"] or "").isdigit():
            payload["attempt"] = int(row["attempt"])
        if row["error_type"] is not None:
            payload["error"] = {"type": row["error_type"], "message": row["error_message"] or ""}
        if row["child_status"]:
            payload["status"] = row["child_status"]
        events.append({**row, "payload": payload})
    # render_timeline escapes every text it writes.
    svg = mark_safe(timeline.render_timeline(events, work, now=now))
    return {"svg": svg, "partial": instance.history_length > TIMELINE_EVENTS, "limit": TIMELINE_EVENTS}
