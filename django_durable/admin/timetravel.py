"""The run's variables as of any history event, replayed from history (read-only)."""

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
from ..converter import get_converter
from ..engine.events import Event
from ..engine.failures import qualified_name
from ..engine.replay import VarsAt, vars_at
from ..exceptions import NotRegistered

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

    history = store.get_history(instance.pk)
    last = len(history)
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

    unregistered = None
    at = before = None
    try:
        fn = registry.get_workflow_definition(instance.workflow_name).fn
    except NotRegistered as exc:
        unregistered = str(exc)
    else:
        def replay(n: int) -> VarsAt:
            return vars_at(
                fn,
                history=history,
                seq=n,
                workflow_id=instance.workflow_id,
                run_id=str(instance.run_id),
                workflow_name=instance.workflow_name,
                queue=instance.queue,
                converter=get_converter(),
                activity_options=registry.activity_call_options,
                workflow_options=registry.workflow_call_options,
            )

        at = replay(seq)
        before = replay(seq - 1) if seq > 1 and at.error is None else None

    event = history[seq - 1]
    variables = []
    if at is not None and at.error is None:
        earlier = before.raw_vars if before is not None and before.error is None else {}
        variables = [
            {"name": name, "json": _json(value, indent=None), "changed": earlier.get(name, _MISSING) != value}
            for name, value in sorted(at.raw_vars.items())
        ]
    start = max(seq - 1 - AROUND, 0)
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
        "error_type": qualified_name(type(at.error)) if at is not None and at.error is not None else "",
        "variables": variables,
        "vars_json": _json(at.raw_vars) if at is not None and at.error is None else "",
        "result_json": _json(at.result) if at is not None and at.status == "completed" else "",
        "first_url": url_at(1) if seq > 1 else None,
        "previous_url": url_at(seq - 1) if seq > 1 else None,
        "next_url": url_at(seq + 1) if seq < last else None,
        "last_url": url_at(last) if seq < last else None,
        "jump_url": url_at(seq),
        "events": [
            _row(e, n, url_at(n), n == seq)
            for n, e in enumerate(history[start:seq + AROUND], start=start + 1)
        ],
        "more_before": start > 0,
        "more_after": seq + AROUND < last,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, TEMPLATE, context)


def _row(event: Event, seq: int, url: str, current: bool) -> dict[str, Any]:
    return {
        "seq": seq, "kind": event.kind, "name": event.name, "task_id": event.task_id,
        "timestamp": event.timestamp, "url": url, "current": current,
    }


def _json(value: Any, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=True, cls=DjangoJSONEncoder)
