"""Pagination of the HTTP API's lists: ``?limit=&offset=``, validated."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.views import APIView

from ..conf import durable_settings


class WorkflowPagination(LimitOffsetPagination):
    """``?limit=&offset=``; the default limit is ``DURABLE["API_PAGE_SIZE"]``, a larger limit
    is cut to ``max_limit``. Anything but a whole number (at least 1 for the limit) is 400."""

    MAX_OFFSET = 2**53  # far past any real table, well inside every database's integer range

    @property
    def default_limit(self) -> int:  # type: ignore[override]
        return int(durable_settings.API_PAGE_SIZE)

    @property
    def max_limit(self) -> int:  # type: ignore[override]
        return max(int(durable_settings.API_PAGE_SIZE), 1000)

    def get_limit(self, request: Request) -> int:
        return min(self._number(request, self.limit_query_param, minimum=1, default=self.default_limit), self.max_limit)

    def get_offset(self, request: Request) -> int:
        return min(self._number(request, self.offset_query_param, minimum=0, default=0), self.MAX_OFFSET)

    def _number(self, request: Request, name: str, *, minimum: int, default: int) -> int:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        value = -1
        if raw.isascii() and raw.isdigit():
            value = int(raw) if len(raw) <= 30 else 10**30  # past every bound: no need to parse it all
        if value < minimum:
            raise ValidationError({name: [f"A whole number of at least {minimum} is required."]})
        return value

    def get_schema_operation_parameters(self, view: APIView) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1 if parameter["name"] == self.limit_query_param else 0
        return parameters
