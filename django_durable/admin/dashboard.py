"""The operator's overview: runs by status, due and overdue work, workers, failures."""

from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import urlencode

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from .. import store
from ..models import OPEN_STATUSES, WorkflowStatus, WorkItemKind
from . import timeline

TEMPLATE = "admin/django_durable/workflowinstance/dashboard.html"
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
    }
    return TemplateResponse(request, TEMPLATE, context)


def _duration(delta: datetime.timedelta) -> str:
    return timeline.format_duration(max(delta.total_seconds(), 0.0))
