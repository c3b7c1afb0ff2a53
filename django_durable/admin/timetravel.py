"""The run's variables as of any history event, replayed from history (read-only).

The run's workflow code runs here, in the web process, as a worker would run it (see
``executors.replayer``): once per page, under the worker's guards, and only for histories
within ``TIME_TRAVEL_MAX_EVENTS`` and ``TIME_TRAVEL_MAX_BYTES``."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from .. import registry, store
from ..conf import durable_settings
from ..engine.events import Event
from ..engine.failures import qualified_name
from ..exceptions import NonDeterminismError, NotRegistered
from ..executors.replayer import replay_vars_at

TEMPLATE = "admin/django_durable/workflowinstance/timetravel.html"
AROUND = 12  # events listed on each side of the chosen one
_MISSING = object()


def vars_at_view(model_admin: Any, request: HttpRequest, object_id: str, seq: int) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    instance = model_admin.get_object(request, unquote(object_id))
    if instance is None:
        raise Http404("No such workflow run.")
    if not model_admin.has_view_permission(request, instance):
        raise PermissionDenied
    opts = model_admin.opts
    url_name = f"{model_admin.admin_site.name}:{opts.app_label}_{opts.model_name}_at"

    def url_at(n: int) -> str:
        return reverse(url_name, args=[object_id, n])

    size = store.history_size(instance.pk)
    refused = _refusal(size)
    history = [] if refused else store.get_history(instance.pk)
    last = size.events if refused else len(history)
    jump = request.GET.get("seq")
    if jump is not None:
        # The jump form is a plain GET form: send it on to the event's own address.
        try:
            target = min(max(int(jump), 1), last)
        except ValueError:
            target = seq
        if last:
            return HttpResponseRedirect(url_at(target))
    if not 1 <= seq <= last:
        raise Http404(f"This run has no event {seq} (its history has {last} events).")
    start = max(seq - 1 - AROUND, 0)
    if refused:
        shown = store.history_window(instance.pk, start + 1, seq + AROUND)
    else:
        shown = history[start : seq + AROUND]
    if len(shown) < seq - start:
        raise Http404(f"This run has no event {seq}.")  # purged or pruned meanwhile
    event = shown[seq - 1 - start]

    unregistered = None
    at = None
    if not refused:
        try:
            fn = registry.get_workflow_definition(instance.workflow_name).fn
        except NotRegistered as exc:
            unregistered = str(exc)
        else:
            at = replay_vars_at(
                fn,
                workflow_id=instance.workflow_id,
                run_id=str(instance.run_id),
                workflow_name=instance.workflow_name,
                queue=instance.queue,
                history=history,
                seq=seq,
            )
    variables = []
    if at is not None and at.error is None:
        variables = [
            {
                "name": name,
                "json": _json(value, indent=None),
                "changed": at.raw_vars_before.get(name, _MISSING) != value,
            }
            for name, value in sorted(at.raw_vars.items())
        ]
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": opts,
        "original": instance,
        "title": f"{instance.workflow_name} {instance.workflow_id}: event {seq} of {last}",
        "change_url": reverse(
            f"{model_admin.admin_site.name}:{opts.app_label}_{opts.model_name}_change", args=[object_id]
        ),
        "seq": seq,
        "last": last,
        "event": event,
        "event_payload": _json(event.payload),
        "at": at,
        "unregistered": unregistered,
        "refused": refused,
        "error_type": qualified_name(type(at.error)) if at is not None and at.error is not None else "",
        # Stopped by a guard or a crash, rather than found not to match its history.
        "replay_stopped": (at is not None and at.error is not None and not isinstance(at.error, NonDeterminismError)),
        "task_timeout": durable_settings.WORKFLOW_TASK_TIMEOUT,
        "variables": variables,
        "vars_json": _json(at.raw_vars) if at is not None and at.error is None else "",
        "result_json": _json(at.result) if at is not None and at.status == "completed" else "",
        "first_url": url_at(1) if seq > 1 else None,
        "previous_url": url_at(seq - 1) if seq > 1 else None,
        "next_url": url_at(seq + 1) if seq < last else None,
        "last_url": url_at(last) if seq < last else None,
        "jump_url": url_at(seq),
        "events": [_row(e, n, url_at(n), n == seq) for n, e in enumerate(shown, start=start + 1)],
        "more_before": start > 0,
        "more_after": seq + AROUND < last,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, TEMPLATE, context)


def _refusal(size: store.HistorySize) -> str | None:
    """Why the page does not replay a run of this size, or None if it may."""
    max_events = durable_settings.TIME_TRAVEL_MAX_EVENTS
    max_bytes = durable_settings.TIME_TRAVEL_MAX_BYTES
    if max_events is not None and size.events > max_events:
        over = (
            f"{size.events:,} events, more than the {max_events:,} that this page replays "
            '(DURABLE["TIME_TRAVEL_MAX_EVENTS"])'
        )
    elif max_bytes is not None and size.bytes > max_bytes:
        over = (
            f"{size.bytes:,} bytes of JSON, more than the {max_bytes:,} that this page replays "
            '(DURABLE["TIME_TRAVEL_MAX_BYTES"])'
        )
    else:
        return None
    return (
        f"Not replayed: this run's history has {over}. Its workflow code would run in the web "
        "process; raise the setting to replay runs this long here."
    )


def _row(event: Event, seq: int, url: str, current: bool) -> dict[str, Any]:
    return {
        "seq": seq,
        "kind": event.kind,
        "name": event.name,
        "task_id": event.task_id,
        "timestamp": event.timestamp,
        "url": url,
        "current": current,
    }


def _json(value: Any, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=True, cls=DjangoJSONEncoder)
