"""Filters of the HTTP API's workflow list: ``?status=``, ``?workflow_name=``, ``?workflow_id=``."""

from __future__ import annotations

from typing import Any, TypeVar

from django.db.models import Model, QuerySet
from rest_framework.filters import BaseFilterBackend
from rest_framework.request import Request
from rest_framework.views import APIView

from ..models import WorkflowStatus
from . import serializers as s
from .schema import text_parameter

_M = TypeVar("_M", bound=Model)
_Row = TypeVar("_Row")


class WorkflowFilter(BaseFilterBackend):
    """``?status=`` and ``?workflow_name=`` (and ``?workflow_id=``), validated: 400 for bad values."""

    def filter_queryset(self, request: Request, queryset: QuerySet[_M, _Row], view: APIView) -> QuerySet[_M, _Row]:
        params = {
            key: request.query_params[key]
            for key in ("status", "workflow_name", "workflow_id")
            if key in request.query_params
        }
        serializer = s.WorkflowFilterSerializer(data=params)
        serializer.is_valid(raise_exception=True)
        return queryset.filter(**serializer.validated_data)

    def get_schema_operation_parameters(self, view: APIView) -> list[dict[str, Any]]:
        return [
            {
                "name": "status",
                "required": False,
                "in": "query",
                "description": "Only runs in this status.",
                "schema": {"type": "string", "enum": list(WorkflowStatus.values)},
            },
            text_parameter("workflow_name", "Only runs of this workflow."),
            text_parameter("workflow_id", "Only runs with this workflow id."),
        ]
