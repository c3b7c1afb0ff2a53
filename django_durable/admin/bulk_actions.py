"""The changelist's bulk actions on runs: cancel, terminate and purge the selected runs.

Each confirms on Django's intermediate page, then acts through ``django_durable.client`` on
the selected rows in a state where it is legal; the others are skipped and counted. Offered
only with the permission the HTTP API needs for it (``django_durable.permissions``), checked
again when posted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.template.response import TemplateResponse

from ..client import WorkflowHandle
from ..exceptions import DurableError
from ..models import OPEN_STATUSES, WorkflowInstance
from ..permissions import may
from .actions import Data, can_operate
from .forms import BulkTerminateForm


@dataclasses.dataclass(frozen=True)
class Bulk:
    verb: str  # its name in django_durable.permissions
    label: str
    done: str  # "Terminated %(count)s run(s)."
    legal: Q  # the rows this action may touch; the rest are skipped
    skipped_why: str
    description: str
    perform: Callable[[WorkflowHandle, Data], Any]
    form: type[forms.Form] = forms.Form


BULK: dict[str, Bulk] = {
    "cancel_selected": Bulk(
        "cancel",
        "Request cancel",
        "Asked %(count)s run(s) to cancel.",
        Q(status__in=OPEN_STATUSES, cancel_requested_at__isnull=True),
        "closed or already asked to cancel",
        "Each run's code sees CancelledError at its next durable call and may clean up first.",
        lambda handle, data: handle.cancel(),
    ),
    "terminate_selected": Bulk(
        "terminate",
        "Terminate",
        "Terminated %(count)s run(s).",
        Q(status__in=OPEN_STATUSES),
        "already closed",
        "Each run closes now: no more workflow code runs, pending activities and timers are dropped.",
        lambda handle, data: handle.terminate(data["reason"]),
        BulkTerminateForm,
    ),
    "purge_selected": Bulk(
        "purge",
        "Purge",
        "Purged %(count)s run(s) with their history.",
        ~Q(status__in=OPEN_STATUSES),
        "still open",
        "Each closed run is deleted with its whole history. This cannot be undone.",
        lambda handle, data: handle.purge(),
    ),
}
LISTED = 100  # runs named on the confirmation page; the rest are counted


def _bulk(action: str, model_admin: Any, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
    """Confirm (Django's intermediate page), then act on the selected rows in a legal
    state through the client API; the others are skipped and counted."""
    bulk = BULK[action]
    # Django offers the action only with its permission; a forged POST meets this check.
    if not may(request.user, bulk.verb):
        raise PermissionDenied
    rows = list(
        queryset.annotate(legal=ExpressionWrapper(bulk.legal, output_field=BooleanField()))
        .values("pk", "workflow_id", "run_id", "workflow_name", "status", "legal")
        .order_by("-created_at")
    )
    legal = [row for row in rows if row["legal"]]
    skipped = len(rows) - len(legal)
    if not legal:
        model_admin.message_user(
            request,
            f"{bulk.label}: none of the {len(rows)} selected run(s) qualifies ({bulk.skipped_why}); nothing was done.",
            messages.WARNING,
        )
        return None
    form = bulk.form(request.POST if request.POST.get("post") else None)
    if not form.is_bound or not form.is_valid():
        opts = model_admin.opts
        request.current_app = model_admin.admin_site.name
        context = {
            **model_admin.admin_site.each_context(request),
            "title": f"{bulk.label} {len(legal)} workflow run(s)?",
            "opts": opts,
            "app_label": opts.app_label,
            "action": action,
            "label": bulk.label,
            "description": bulk.description,
            "form": form,
            "listed": legal[:LISTED],
            "unlisted": max(0, len(legal) - LISTED),
            "skipped": skipped,
            "skipped_why": bulk.skipped_why,
            "selected": [row["pk"] for row in rows],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": model_admin.media + form.media,
        }
        return TemplateResponse(request, f"admin/{opts.app_label}/{opts.model_name}/action_bulk_confirm.html", context)
    done, errors = 0, []
    for row in legal:
        try:
            bulk.perform(WorkflowHandle(row["workflow_id"], str(row["run_id"])), form.cleaned_data)
        except DurableError as exc:  # its state changed since the page was shown
            errors.append(f"{row['workflow_id']!r}: {exc.detail}")
        else:
            done += 1
    if done:
        model_admin.message_user(request, bulk.done % {"count": done}, messages.SUCCESS)
    if skipped:
        model_admin.message_user(request, f"Skipped {skipped} run(s): {bulk.skipped_why}.", messages.WARNING)
    if errors:
        shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        model_admin.message_user(request, f"{len(errors)} run(s) refused: {shown}", messages.ERROR)
    return None


@admin.action(description="Request cancel of selected runs", permissions=["operate"])
def cancel_selected(model_admin: Any, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
    return _bulk("cancel_selected", model_admin, request, queryset)


@admin.action(description="Terminate selected open runs", permissions=["operate"])
def terminate_selected(model_admin: Any, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
    return _bulk("terminate_selected", model_admin, request, queryset)


@admin.action(description="Purge selected closed runs", permissions=["purge"])
def purge_selected(model_admin: Any, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
    return _bulk("purge_selected", model_admin, request, queryset)


class BulkActionsMixin:
    """For ``WorkflowInstanceAdmin``: the changelist's bulk actions, offered to users with
    their permissions only (``has_delete_permission`` stays False: Django's own "Delete
    selected" would bypass the store)."""

    actions: (
        Sequence[Callable[[Any, HttpRequest, QuerySet[WorkflowInstance]], HttpResponseBase | None] | str] | None
    ) = [
        cancel_selected,
        terminate_selected,
        purge_selected,
    ]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return can_operate(request)

    def has_purge_permission(self, request: HttpRequest) -> bool:
        return may(request.user, "purge")
