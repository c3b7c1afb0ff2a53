"""State-changing admin actions on a run (signal, cancel, terminate, ...). Being built."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse


def object_actions(request: HttpRequest, instance: Any) -> list[dict[str, str]]:
    """The actions ``request.user`` may take on ``instance`` now: ``{"verb", "label", "url"}``."""
    return []


def action_view(model_admin: Any, request: HttpRequest, object_id: str, verb: str) -> HttpResponse:
    raise Http404("Not built yet.")
