"""The operator's overview: runs by status, due and overdue work, workers, failures. Being built."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse


def dashboard_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    raise Http404("Not built yet.")
