"""The Queues page: every queue's activity attempts (running, awaiting completion, waiting,
the oldest waiting) and its limits, and an operator's override of those limits.

Settings give the limits (``DURABLE["QUEUES"]``); an override saved here replaces them for
its queue until reset, without a restart: the next lease of a queue already limited reads
it under the queue's lock, and workers learn of a queue newly limited within
``QUEUE_LIMITS_REFRESH`` seconds.

Permissions: seeing the page needs ``django_durable.view_queuestate`` (or the override's
permission); overriding or resetting needs ``django_durable.override_queue_limits``, a
permission of its own (``change_queuestate`` does not do). Queues are never added or deleted
here: the list shows the queues the settings, the work and the overrides know.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ImproperlyConfigured
from django.forms.utils import ErrorDict
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, reverse
from django.utils.html import format_html
from django.views.decorators.clickjacking import xframe_options_deny

from ..models import QueueState
from ..permissions import QUEUE_OVERRIDE, QUEUE_VIEW, VIEW
from ..queues import QueueLimits, parse_queue_limits
from ..store import queue_views
from ..store.queue_views import QueueOverview
from .instances import to_pretty
from .schedule_text import when
from .timeline import format_duration

RESET = "_reset"  # the change form's button that goes back to the settings' limits
COUNT_FIELDS = ("concurrency", "worker_concurrency", "key_concurrency")


class QueueLimitsForm(forms.ModelForm):
    """A queue's limits as an override: a blank field is no limit of its kind; the reset
    button (``RESET``) drops the override, whatever the fields hold."""

    concurrency = forms.IntegerField(
        min_value=1, required=False, help_text="Attempts of this queue running at once, over all workers."
    )
    worker_concurrency = forms.IntegerField(
        min_value=1, required=False, label="Worker concurrency", help_text="Running at once in each worker process."
    )
    key_concurrency = forms.IntegerField(
        min_value=1,
        required=False,
        label="Key concurrency",
        help_text="Running at once with the same concurrency key (call_activity(concurrency_key=)).",
    )
    rate_limit = forms.IntegerField(
        min_value=1, required=False, label="Rate limit", help_text="At most this many attempts start…"
    )
    rate_period = forms.FloatField(
        required=False, label="per (seconds)", help_text="…in any window of this many seconds."
    )

    class Meta:
        model = QueueState
        fields: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.override: dict[str, Any] | None = None
        if self.instance.pk is not None and not self.is_bound:
            self.initial.update(_initial(_overview(self.instance).limits))

    @property
    def resetting(self) -> bool:
        return self.is_bound and RESET in self.data

    def full_clean(self) -> None:
        if self.resetting:  # the fields are not read: a reset takes no mistake in them
            self._errors = ErrorDict()
            self.cleaned_data = {}
            self.override = None
            return
        super().full_clean()

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        limit, period = data.get("rate_limit"), data.get("rate_period")
        if period is not None and period <= 0:
            self.add_error("rate_period", "The period must be more than 0 seconds.")
        elif limit is not None and period is None and "rate_period" not in self.errors:
            self.add_error("rate_period", "A rate limit needs the period its starts are counted over.")
        elif period is not None and limit is None and "rate_limit" not in self.errors:
            self.add_error("rate_limit", "A period needs the number of starts allowed in it.")
        if self.errors:
            return data
        raw: dict[str, Any] = {name: data[name] for name in COUNT_FIELDS if data.get(name) is not None}
        if limit is not None:
            raw["rate_limit"] = {"limit": limit, "period": period}
        try:
            self.override = parse_queue_limits(self.instance.queue, raw).to_json()
        except ImproperlyConfigured as invalid:
            raise forms.ValidationError(str(invalid)) from invalid
        return data


class QueueChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        # One overview for the page's queues, not a query per row.
        found = {view.queue: view for view in queue_views.queue_overview(state.queue for state in self.result_list)}
        for state in self.result_list:
            if state.queue in found:
                state._durable_overview = found[state.queue]


@admin.register(QueueState)
class QueueAdmin(admin.ModelAdmin):
    form = QueueLimitsForm
    actions = None
    list_display = ("queue", "running", "awaiting", "waiting", "oldest_waiting", "limits_text", "overridden")
    list_display_links = ("queue",)
    search_fields = ("queue",)
    search_help_text = "A queue's name, or part of one."
    list_per_page = 100
    change_list_template = "admin/django_durable/queuestate/change_list.html"
    change_form_template = "admin/django_durable/queuestate/change_form.html"
    fieldsets = (
        (
            "Override the settings' limits",
            {
                "fields": ("concurrency", "worker_concurrency", "key_concurrency", ("rate_limit", "rate_period")),
                "description": "Saved, these limits replace the settings' for this queue; a blank field is no"
                " limit of its kind. “Reset to the settings' limits” drops the override.",
            },
        ),
    )

    # -- permissions ---------------------------------------------------------------------

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm(QUEUE_VIEW) or request.user.has_perm(QUEUE_OVERRIDE))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm(QUEUE_OVERRIDE))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # -- the list ------------------------------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return QueueChangeList

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if self.has_view_permission(request):
            queue_views.ensure_states()  # a queue known from the settings or the work gets its row
        context = {
            "title": "Queues",
            "durable_dashboard_url": _dashboard_url(self, request),
            "durable_refresh": format_duration(queue_views.refresh_seconds()),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    @admin.display(description="running")
    def running(self, state: QueueState) -> str:
        view = _overview(state)
        if view.limits.concurrency is None:
            return str(view.running)
        return format_html('{} <span class="quiet">of {}</span>', view.running, view.limits.concurrency)

    @admin.display(description="awaiting completion")
    def awaiting(self, state: QueueState) -> int:
        return _overview(state).awaiting_completion

    @admin.display(description="waiting")
    def waiting(self, state: QueueState) -> int:
        return _overview(state).waiting

    @admin.display(description="oldest waiting")
    def oldest_waiting(self, state: QueueState) -> str:
        return _oldest_text(_overview(state))

    @admin.display(description="limits")
    def limits_text(self, state: QueueState) -> str:
        return _limits_html(_overview(state))

    @admin.display(description="overridden", boolean=True)
    def overridden(self, state: QueueState) -> bool:
        return _overview(state).overridden

    # -- the queue's page and its override -----------------------------------------------

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        # Without the permission the page shows the queue, not an empty form.
        return self.fieldsets if self.has_change_permission(request, obj) else ()

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: QueueState | None = None,
    ) -> HttpResponse:
        if obj is not None:
            view = _overview(obj)
            context["durable_queue"] = {
                "view": view,
                "editable": self.has_change_permission(request, obj),
                "reset_button": RESET,
                "oldest": _oldest_text(view),
                "limits": _limits_html(view),
                "settings_limits": view.settings_limits.describe(),
                "override_json": None if view.override is None else to_pretty(view.override),
                "refresh": format_duration(queue_views.refresh_seconds()),
                "dashboard_url": _dashboard_url(self, request),
            }
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    def save_model(self, request: HttpRequest, obj: QueueState, form: Any, change: bool) -> None:
        saved = queue_views.set_override(obj.queue, form.override)
        obj.limits, obj.updated_at = saved.limits, saved.updated_at

    # LogEntry takes a message in words as well as Django's structured one.
    def construct_change_message(  # type: ignore[override]
        self, request: HttpRequest, form: Any, formsets: Any, add: bool = False
    ) -> str:
        return _outcome(form.instance.queue, form.override)

    def response_change(self, request: HttpRequest, obj: QueueState) -> HttpResponse:
        view = queue_views.queue_overview([obj.queue])
        limits = view[0].limits if view else QueueLimits()
        refresh = format_duration(queue_views.refresh_seconds())
        self.message_user(
            request,
            f"{_outcome(obj.queue, obj.limits)}: {limits.describe()}. Workers apply it within {refresh}.",
            messages.SUCCESS,
        )
        url = reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist", current_app=self.admin_site.name
        )
        return HttpResponseRedirect(
            add_preserved_filters({"preserved_filters": self.get_preserved_filters(request), "opts": self.opts}, url)
        )

    def get_urls(self) -> list[Any]:
        # As the run and schedule pages: a page with a form that changes things is not to be framed.
        return [
            URLPattern(p.pattern, xframe_options_deny(p.callback), p.default_args, p.name)
            if isinstance(p, URLPattern)
            else p
            for p in super().get_urls()
        ]


def _overview(state: QueueState) -> QueueOverview:
    """The queue's overview: the one its list page read for it, else read now."""
    view: QueueOverview | None = getattr(state, "_durable_overview", None)
    if view is None:
        found = queue_views.queue_overview([state.queue])
        view = (
            found[0]
            if found
            else QueueOverview(state.queue, 0, 0, 0, None, None, QueueLimits(), QueueLimits(), None, "", None, None)
        )
        state._durable_overview = view  # type: ignore[attr-defined]
    return view


def _dashboard_url(model_admin: QueueAdmin, request: HttpRequest) -> str:
    """The dashboard's address, for users who may see it."""
    if not request.user.has_perm(VIEW):
        return ""
    return reverse("admin:django_durable_workflowinstance_dashboard", current_app=model_admin.admin_site.name)


def _initial(limits: QueueLimits) -> dict[str, Any]:
    initial: dict[str, Any] = {name: getattr(limits, name) for name in COUNT_FIELDS}
    if limits.rate_limit is not None:
        initial.update(rate_limit=limits.rate_limit.limit, rate_period=f"{limits.rate_limit.period:g}")
    return initial


def _oldest_text(view: QueueOverview) -> str:
    if view.oldest_waiting is None or view.waited is None:
        return ""
    return format_html(
        '{} <span class="quiet">({} ago)</span>',
        when(view.oldest_waiting),
        format_duration(view.waited.total_seconds()),
    )


def _limits_html(view: QueueOverview) -> str:
    if view.override_error:
        return format_html('<strong class="durable-invalid" title="{}">invalid override</strong>', view.override_error)
    if view.overridden:
        return format_html(
            '{} <span class="durable-override" title="{}">override</span>',
            view.limits.describe(),
            f"The settings' limits: {view.settings_limits.describe()}",
        )
    return view.limits.describe()


def _outcome(queue: str, override: object) -> str:
    if override is None:
        return f"Queue '{queue}' is back to the settings' limits"
    return f"Queue '{queue}' has its limits overridden"
