"""The operator's overview: runs by status, due and overdue work, workers, failures, and the
schedules that fire next or are late."""

from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import urlencode

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from .. import store
from ..models import OPEN_STATUSES, Schedule, WorkflowStatus, WorkItemKind
from ..permissions import SCHEDULE_CHANGE, SCHEDULE_VIEW
from ..store import schedule_views
from ..store import schedules as schedule_store
from . import schedule_text, timeline

TEMPLATE = "admin/django_durable/workflowinstance/dashboard.html"
SCHEDULES_LISTED = 10  # schedules in each of the dashboard's lists
FAILURE_STATUSES = (WorkflowStatus.FAILED, WorkflowStatus.TERMINATED)


def dashboard_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    stats = store.dashboard_stats()
    opts = model_admin.opts
    site = model_admin.admin_site.name
    changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist", current_app=site)

    def runs_url(**params: str) -> str:
        return f"{changelist}?{urlencode(params)}" if params else changelist

    def run_url(instance_id: int) -> str:
        return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[instance_id], current_app=site)

    by_status = stats["runs"]["by_status"]
    statuses = [
        {
            "status": status,
            "label": label,
            "count": by_status[status]["count"],
            "url": runs_url(status__exact=status),
            "open": status in OPEN_STATUSES,
        }
        for status, label in WorkflowStatus.choices
    ]
    since = stats["since"].isoformat()
    failures = [
        {
            "label": WorkflowStatus(status).label,
            "count": by_status[status]["recent"],
            "url": runs_url(status__exact=status, closed_at__gte=since),
        }
        for status in FAILURE_STATUSES
    ]
    work = [{"kind": kind, "label": label, **stats["work"]["by_kind"][kind]} for kind, label in WorkItemKind.choices]
    pending = stats["oldest_pending"]
    oldest = None
    if pending is not None:
        oldest = {
            **pending,
            "kind_label": WorkItemKind(pending["kind"]).label,
            "waited_text": _duration(pending["waited"]),
            "url": run_url(pending["instance_id"]),
            "overdue": pending["waited"] >= stats["overdue_after"],
        }
    failing_tasks = [
        {
            **task,
            "url": run_url(task["instance_id"]),
            "error": timeline.error_text(task["last_error"]),
        }
        for task in stats["failing_tasks"]
    ]
    workers = [
        {
            **worker,
            "queues_text": ", ".join(map(str, worker["queues"] or [])),
            "seen_ago": _duration(stats["now"] - worker["last_seen_at"]),
        }
        for worker in stats["workers"]["list"]
    ]
    window = store.RECENT_WINDOW
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": opts,
        "title": "Workflows dashboard",
        "stats": stats,
        "statuses": statuses,
        "runs_url": changelist,
        "open_count": stats["runs"]["open"],
        "failures": failures,
        "failing_tasks_url": runs_url(task_error__isnull="False"),
        "work": work,
        "oldest": oldest,
        "failing_tasks": failing_tasks,
        "workers": workers,
        "window_text": "hour" if window == datetime.timedelta(hours=1) else _duration(window),
        "overdue_text": _duration(stats["overdue_after"]),
        "stale_text": _duration(stats["stale_after"]),
        "schedules": _schedules(model_admin, request, stats["now"]),
    }
    return TemplateResponse(request, TEMPLATE, context)


def _schedules(model_admin: Any, request: HttpRequest, now: datetime.datetime) -> dict[str, Any] | None:
    """The schedules that fire next and those that are late, for users who may see schedules."""
    if not (request.user.has_perm(SCHEDULE_VIEW) or request.user.has_perm(SCHEDULE_CHANGE)):
        return None
    site = model_admin.admin_site.name
    late_after = schedule_text.late_after()

    def row(schedule: Schedule) -> dict[str, Any]:
        assert schedule.next_fire_at is not None  # both lists hold schedules with a next fire time
        return {
            "schedule": schedule,
            "url": reverse("admin:django_durable_schedule_change", args=[schedule.pk], current_app=site),
            "spec": schedule_text.spec_text(schedule),
            "relative": schedule_text.relative(schedule.next_fire_at, now),
        }

    return {
        "counts": schedule_views.schedule_counts(),
        "next": [
            row(schedule)
            for schedule in schedule_views.next_to_fire(not_before=now - late_after, limit=SCHEDULES_LISTED)
        ],
        "late": [
            row(schedule) for schedule in schedule_store.late_schedules(late_after=late_after, limit=SCHEDULES_LISTED)
        ],
        "late_after_text": _duration(late_after),
        "url": reverse("admin:django_durable_schedule_changelist", current_app=site),
    }


def _duration(delta: datetime.timedelta) -> str:
    return timeline.format_duration(max(delta.total_seconds(), 0.0))
