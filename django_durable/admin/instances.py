"""The run list and a run's page: what a staff user finds and inspects."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import F
from django.http import HttpRequest
from django.urls import path

from ..models import HistoryEvent, WorkflowInstance, WorkItem
from ..tokens import make_task_token
from . import actions, dashboard, timetravel


class ReadOnlyMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class HistoryEventInline(ReadOnlyMixin, admin.TabularInline):
    model = HistoryEvent
    fields = ("seq", "timestamp", "kind", "name", "task_id", "payload")
    readonly_fields = fields
    extra = 0


class WorkItemInline(ReadOnlyMixin, admin.TabularInline):
    model = WorkItem
    fields = (
        "kind", "name", "task_id", "queue", "due_at", "attempt", "lease_owner", "lease_expires_at",
        "failures", "parked_at", "task_token",
    )
    readonly_fields = fields
    extra = 0

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).annotate(run_uuid=F("instance__run_id"))

    @admin.display(description="task token (awaiting completion)")
    def task_token(self, item: WorkItem) -> str:
        if not item.awaiting_completion:
            return ""
        return make_task_token(
            item_id=item.pk, run_id=str(item.run_uuid), task_id=item.task_id or 0, attempt=item.attempt
        )


@admin.register(WorkflowInstance)
class WorkflowInstanceAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("workflow_id", "workflow_name", "status", "created_at", "closed_at")
    list_filter = ("status", "workflow_name")
    search_fields = ("workflow_id", "=run_id")
    readonly_fields = [f.name for f in WorkflowInstance._meta.fields]
    inlines = [WorkItemInline, HistoryEventInline]

    def get_urls(self) -> list[Any]:
        def view(fn: Any) -> Any:
            return self.admin_site.admin_view(lambda request, *args, **kwargs: fn(self, request, *args, **kwargs))

        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("dashboard/", view(dashboard.dashboard_view), name=f"{prefix}_dashboard"),
            path("<path:object_id>/at/<int:seq>/", view(timetravel.vars_at_view), name=f"{prefix}_at"),
            path("<path:object_id>/actions/<str:verb>/", view(actions.action_view), name=f"{prefix}_action"),
            *super().get_urls(),
        ]
