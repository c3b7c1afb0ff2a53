"""The run's variables as of any history event, replayed from history. Being built."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse


def vars_at_view(model_admin: Any, request: HttpRequest, object_id: str, seq: int) -> HttpResponse:
    raise Http404("Not built yet.")
