"""The schedule admin's actions: pause, unpause, trigger now and backfill, as buttons on a
schedule's page and as changelist actions on the selected schedules.

Each is offered only to users holding what ``django_durable.permissions`` asks for it (pause
and unpause: ``change_schedule``; trigger and backfill, which start runs, also
``add_workflowinstance``, and only for a workflow ``check_startable`` allows), checked again
when posted. Each confirms on a page of its own (with its inputs: a note, or the backfill's
interval), touches only the schedules in a state where it is legal, acts through
``store.schedules`` and the schedule client, and reports with ``message_user``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypedDict

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from .. import registry
from ..exceptions import DurableError
from ..models import OverlapPolicy, Schedule
from ..permissions import check_startable, may_schedule
from ..schedules.client import ScheduleHandle
from ..store import schedules as schedule_store
from .schedule_forms import BackfillForm, PauseForm, ScheduleActionForm, UnpauseForm
from .schedule_text import when

LISTED = 100  # schedules named on a confirmation page; the rest are counted
DETAILS = 10  # outcomes told one by one after a changelist action; the rest are counted
ROW_FIELDS = ("pk", "schedule_id", "workflow_name", "paused", "overlap")


class Row(TypedDict):
    pk: int
    schedule_id: str
    workflow_name: str
    paused: bool
    overlap: str


def row_of(schedule: Schedule) -> Row:
    return {name: getattr(schedule, name) for name in ROW_FIELDS}  # type: ignore[return-value]


# -- legality: why the action is not legal for the schedule now, or None -----------------------


def _unpaused(row: Row) -> str | None:
    return "it is already paused" if row["paused"] else None


def _paused(row: Row) -> str | None:
    return None if row["paused"] else "it is not paused"


def _startable(row: Row) -> str | None:
    try:
        registry.get_workflow_definition(row["workflow_name"])
        check_startable(row["workflow_name"])
    except DurableError as exc:
        return f"its workflow cannot be started from here ({exc.detail.rstrip('.')})"
    return None


# -- performing ------------------------------------------------------------------------------

Data = dict[str, Any]


def _pause(row: Row, data: Data, site: str) -> str:
    schedule_store.set_paused(row["schedule_id"], True, data["note"] or None)
    return format_html("Paused schedule {}.", repr(row["schedule_id"]))


def _unpause(row: Row, data: Data, site: str) -> str:
    schedule_store.set_paused(row["schedule_id"], False, data["note"] or None)
    return format_html("Unpaused schedule {}: it fires from its next tick after now.", repr(row["schedule_id"]))


def _trigger(row: Row, data: Data, site: str) -> str:
    run = schedule_store.trigger(row["schedule_id"])
    name = repr(row["schedule_id"])
    if run is not None:
        url = reverse(f"{site}:django_durable_workflowinstance_change", args=(quote(run.pk),))
        return format_html('Triggered schedule {}: started run <a href="{}">{}</a>.', name, url, run.workflow_id)
    if row["overlap"] == OverlapPolicy.SKIP:
        held = "skipped the run: the previous run is still open"
    else:
        held = "buffered the run: it starts when the previous run closes"
    return format_html("Triggered schedule {}: its overlap policy ({}) {}.", name, row["overlap"], held)


def _backfill(row: Row, data: Data, site: str) -> str:
    done = ScheduleHandle(row["schedule_id"]).backfill(data["start"], data["end"])
    return format_html(
        "Backfilled schedule {} from {} to {}: started {} run(s), buffered {}, skipped {} by the overlap "
        "policy, {} already run.",
        repr(row["schedule_id"]),
        when(data["start"]),
        when(data["end"]),
        len(done.started),
        done.buffered,
        done.skipped,
        done.already_run,
    )


@dataclasses.dataclass(frozen=True)
class Verb:
    operation: str  # in django_durable.permissions.SCHEDULE_PERMISSIONS
    label: str
    done: str  # "Paused %(count)s schedule(s)."
    description: str
    legal: Callable[[Row], str | None]
    perform: Callable[[Row, Data, str], str]
    form: type[ScheduleActionForm] = ScheduleActionForm


VERBS: dict[str, Verb] = {
    "pause": Verb(
        "pause",
        "Pause",
        "Paused %(count)s schedule(s).",
        "Stop firing ticks. Ticks that fall while paused are dropped, not fired on unpause; "
        "trigger now still starts a run.",
        _unpaused,
        _pause,
        PauseForm,
    ),
    "unpause": Verb(
        "unpause",
        "Unpause",
        "Unpaused %(count)s schedule(s).",
        "Fire again, from the next tick after now.",
        _paused,
        _unpause,
        UnpauseForm,
    ),
    "trigger": Verb(
        "trigger",
        "Trigger now",
        "Triggered %(count)s schedule(s).",
        "Start a run now, even while paused, under the overlap policy. Its workflow id is the schedule id "
        "and the current time (UTC, with milliseconds).",
        _startable,
        _trigger,
    ),
    "backfill": Verb(
        "backfill",
        "Backfill",
        "Backfilled %(count)s schedule(s).",
        "Start the runs of the ticks of a past interval that have none yet, under the overlap policy.",
        _startable,
        _backfill,
        BackfillForm,
    ),
}


# -- a schedule's page: buttons and their confirmation ---------------------------------------

_PREFIX = f"{Schedule._meta.app_label}_{Schedule._meta.model_name}"


def action_url(pk: Any, verb: str, *, current_app: str | None = None) -> str:
    return reverse(f"admin:{_PREFIX}_action", args=(quote(pk), verb), current_app=current_app)


def object_actions(request: HttpRequest, schedule: Schedule) -> list[dict[str, str]]:
    """The actions ``request.user`` may take on ``schedule`` now: ``{"verb", "label", "url"}``."""
    row = row_of(schedule)
    current_app = getattr(request, "current_app", None)
    return [
        {"verb": verb, "label": spec.label, "url": action_url(schedule.pk, verb, current_app=current_app)}
        for verb, spec in VERBS.items()
        if may_schedule(request.user, spec.operation) and spec.legal(row) is None
    ]


def action_view(model_admin: Any, request: HttpRequest, object_id: str, verb: str) -> HttpResponse:
    spec = VERBS.get(verb)
    if spec is None:
        raise Http404(f"No schedule action {verb!r}.")
    if not may_schedule(request.user, spec.operation):
        raise PermissionDenied
    request.current_app = model_admin.admin_site.name
    schedule = model_admin.get_object(request, unquote(object_id))
    if schedule is None:
        raise Http404("No such schedule.")
    site = model_admin.admin_site.name
    change_url = reverse(f"admin:{_PREFIX}_change", args=(quote(schedule.pk),), current_app=site)
    row = row_of(schedule)
    # Checked on POST too: the schedule may have changed since the page was shown.
    refusal = spec.legal(row)
    if refusal is not None:
        message = f"Cannot {spec.label.lower()} schedule {schedule.schedule_id!r}: {refusal}."
        model_admin.message_user(request, message, messages.ERROR)
        return HttpResponseRedirect(change_url)
    if request.method == "POST":
        form = spec.form(request.POST)
        if form.is_valid():
            try:
                outcome = spec.perform(row, form.cleaned_data, site)
            except (DurableError, ValueError) as exc:  # deleted meanwhile, or too many ticks to backfill
                form.add_error(None, str(getattr(exc, "detail", exc)))
            else:
                model_admin.message_user(request, outcome, messages.SUCCESS)
                return HttpResponseRedirect(change_url)
    else:
        form = spec.form()
    opts = model_admin.opts
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"{spec.label}: schedule {schedule.schedule_id}",
        "opts": opts,
        "app_label": opts.app_label,
        "object": schedule,
        "verb": verb,
        "label": spec.label,
        "description": spec.description,
        "form": form,
        "change_url": change_url,
        "action_url": request.get_full_path(),
        "media": model_admin.media + form.media,
    }
    return TemplateResponse(request, f"admin/{opts.app_label}/{opts.model_name}/action_form.html", context)


# -- the changelist's actions -------------------------------------------------------------------


def _bulk(verb: str, model_admin: Any, request: HttpRequest, queryset: QuerySet[Schedule]) -> HttpResponse | None:
    """Confirm (Django's intermediate page), then act on each selected schedule where the
    action is legal; the others are skipped and counted."""
    spec = VERBS[verb]
    # Django offers the action only with its permission; a forged POST meets this check.
    if not may_schedule(request.user, spec.operation):
        raise PermissionDenied
    rows: list[Row] = list(queryset.order_by("schedule_id").values(*ROW_FIELDS))
    legal = [row for row in rows if spec.legal(row) is None]
    refusals = sorted({reason for row in rows if (reason := spec.legal(row)) is not None})
    skipped = len(rows) - len(legal)
    skipped_why = "; ".join(refusals)
    if not legal:
        model_admin.message_user(
            request,
            f"{spec.label}: none of the {len(rows)} selected schedule(s) qualifies ({skipped_why}); nothing was done.",
            messages.WARNING,
        )
        return None
    form = spec.form(request.POST if request.POST.get("post") else None)
    if not form.is_bound or not form.is_valid():
        opts = model_admin.opts
        request.current_app = model_admin.admin_site.name
        context = {
            **model_admin.admin_site.each_context(request),
            "title": f"{spec.label} {len(legal)} schedule(s)?",
            "opts": opts,
            "app_label": opts.app_label,
            "action": f"{verb}_selected",
            "label": spec.label,
            "description": spec.description,
            "form": form,
            "listed": legal[:LISTED],
            "unlisted": max(0, len(legal) - LISTED),
            "skipped": skipped,
            "skipped_why": skipped_why,
            "selected": [row["pk"] for row in rows],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": model_admin.media + form.media,
        }
        return TemplateResponse(request, f"admin/{opts.app_label}/{opts.model_name}/action_bulk_confirm.html", context)
    outcomes: list[str] = []
    errors: list[str] = []
    for row in legal:
        try:
            outcomes.append(spec.perform(row, form.cleaned_data, model_admin.admin_site.name))
        except (DurableError, ValueError) as exc:
            errors.append(f"{row['schedule_id']!r}: {getattr(exc, 'detail', exc)}")
    if outcomes:
        shown = SafeString(" ".join(outcomes[:DETAILS]))
        more = f" And {len(outcomes) - DETAILS} more." if len(outcomes) > DETAILS else ""
        summary = spec.done % {"count": len(outcomes)}
        model_admin.message_user(request, format_html("{} {}{}", summary, shown, more), messages.SUCCESS)
    if skipped:
        model_admin.message_user(request, f"Skipped {skipped} schedule(s): {skipped_why}.", messages.WARNING)
    if errors:
        listed = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        model_admin.message_user(request, f"{len(errors)} schedule(s) refused: {listed}", messages.ERROR)
    return None


@admin.action(description="Pause selected schedules", permissions=["pause"])
def pause_selected(model_admin: Any, request: HttpRequest, queryset: QuerySet[Schedule]) -> HttpResponse | None:
    return _bulk("pause", model_admin, request, queryset)


@admin.action(description="Unpause selected schedules", permissions=["unpause"])
def unpause_selected(model_admin: Any, request: HttpRequest, queryset: QuerySet[Schedule]) -> HttpResponse | None:
    return _bulk("unpause", model_admin, request, queryset)


@admin.action(description="Trigger selected schedules now", permissions=["trigger"])
def trigger_selected(model_admin: Any, request: HttpRequest, queryset: QuerySet[Schedule]) -> HttpResponse | None:
    return _bulk("trigger", model_admin, request, queryset)


@admin.action(description="Backfill selected schedules", permissions=["backfill"])
def backfill_selected(model_admin: Any, request: HttpRequest, queryset: QuerySet[Schedule]) -> HttpResponse | None:
    return _bulk("backfill", model_admin, request, queryset)


ACTIONS = [pause_selected, unpause_selected, trigger_selected, backfill_selected]
