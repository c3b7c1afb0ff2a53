"""The OpenAPI description of the HTTP API's views: ``DurableSchema`` and its field patterns."""

from __future__ import annotations

from typing import Any

from django.core.validators import ProhibitNullCharactersValidator
from rest_framework import serializers
from rest_framework.schemas.openapi import AutoSchema

from ..conf import durable_settings
from ..tokens import MAX_TOKEN_LENGTH
from . import serializers as s

# What the fields refuse beyond their type, as JSON Schema patterns (ECMA 262 and Python alike).
NO_NUL_PATTERN = "^[^\\x00]*$"
ADDRESSABLE_PATTERN = "^[^/\\x00]*$"  # a workflow id that can appear in a URL path


def text_parameter(name: str, description: str) -> dict[str, Any]:
    """A non-empty text query parameter (the filters' shape)."""
    return {
        "name": name,
        "required": False,
        "in": "query",
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": s.MAX_NAME_LENGTH, "pattern": NO_NUL_PATTERN},
    }


class DurableSchema(AutoSchema):
    """OpenAPI for these views: separate request and response serializers, the real
    success status codes, and history paginated like a list.

    The document says what the views refuse wherever JSON Schema can say it (blank and NUL
    text, a required body, the bounds of numbers), so that a request it calls valid is
    refused only for what no schema can know: a token or workflow name that does not exist,
    arguments that do not fit a workflow's signature, a run in the wrong state.
    """

    def __init__(
        self,
        *,
        operation_ids: dict[str, str],
        responses: dict[str, tuple[int, type[serializers.Serializer] | None]] | None = None,
        token_header: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.operation_ids = operation_ids  # action (or method) -> operationId
        self.responses = responses or {}  # action (or method) -> (status code, serializer class)
        self.token_header = token_header  # the task token may come in the X-Durable-Task-Token header

    def _key(self, method: str) -> str:
        return getattr(self.view, "action", None) or method.lower()

    def get_operation_id(self, path: str, method: str) -> str:
        return self.operation_ids[self._key(method)]

    def map_field(self, field: serializers.Field) -> dict[str, Any]:
        if isinstance(field, s.TaskTokenField):
            return {"type": "string", "maxLength": MAX_TOKEN_LENGTH}
        if isinstance(field, s.JSONValueField):
            if field.kind == "object":
                return {"type": "object", "additionalProperties": {}}
            if field.kind == "array":
                return {"type": "array", "items": {}}
            return {"description": "Any JSON value."}
        return super().map_field(field)

    def map_field_validators(self, field: serializers.Field, schema: dict[str, Any]) -> None:
        super().map_field_validators(field, schema)
        if not isinstance(field, serializers.CharField) or field.read_only:
            return
        if not field.allow_blank:
            schema.setdefault("minLength", 1)
        if s._addressable in field.validators:
            schema.setdefault("pattern", ADDRESSABLE_PATTERN)
        elif any(isinstance(v, ProhibitNullCharactersValidator) for v in field.validators):
            schema.setdefault("pattern", NO_NUL_PATTERN)

    def get_response_serializer(self, path: str, method: str) -> serializers.BaseSerializer | None:
        entry = self.responses.get(self._key(method))
        if entry is not None:
            return entry[1]() if entry[1] is not None else None
        return super().get_response_serializer(path, method)

    def get_request_serializer(self, path: str, method: str) -> serializers.BaseSerializer | None:
        serializer = super().get_request_serializer(path, method)
        if isinstance(serializer, s.NoBodySerializer):
            return None  # documented as taking no body
        return serializer

    def get_request_body(self, path: str, method: str) -> dict[str, Any]:
        if method not in ("PUT", "PATCH", "POST"):
            return {}
        serializer = self.get_request_serializer(path, method)
        if serializer is None:
            return {}
        body = super().get_request_body(path, method)
        # Every request serializer here is a Serializer (with fields), not a list of them.
        if isinstance(serializer, serializers.Serializer) and any(
            field.required for field in serializer.fields.values()
        ):
            body["required"] = True  # no body is not an empty object: its required fields are missing
        return body

    def get_pagination_parameters(self, path: str, method: str) -> list[dict[str, Any]]:
        if self._key(method) == "history":
            paginator = self.get_paginator()
            # The stubs take get_paginator() for the class; it returns an instance.
            return paginator.get_schema_operation_parameters(self.view) if paginator else []  # type: ignore[call-arg, arg-type]
        return super().get_pagination_parameters(path, method)

    def allows_filters(self, path: str, method: str) -> bool:
        # Only the list filters; every other action addresses one run (see below).
        return self._key(method) == "list" and super().allows_filters(path, method)

    def get_filter_parameters(self, path: str, method: str) -> list[dict[str, Any]]:
        params = super().get_filter_parameters(path, method)
        if "{workflow_id}" in path:
            params.append(
                {
                    "name": "run_id",
                    "required": False,
                    "in": "query",
                    "description": "A particular run of the workflow; "
                    + ("every run of the id" if self._key(method) == "destroy" else "the latest run")
                    + " when absent.",
                    "schema": {"type": "string", "format": "uuid"},
                }
            )
        if self._key(method) == "retrieve":
            params.append(
                {
                    "name": "wait",
                    "required": False,
                    "in": "query",
                    "description": "Long poll: answer as soon as the run is closed, or after this many seconds "
                    "(at most the API_MAX_WAIT setting, 60 by default).",
                    "schema": {"type": "number", "minimum": 0, "maximum": float(durable_settings.API_MAX_WAIT)},
                }
            )
        if self.token_header:
            params.append(
                {
                    "name": s.TASK_TOKEN_HEADER,
                    "required": False,
                    "in": "header",
                    "description": "The task token, instead of task_token in the body (both only if they agree).",
                    "schema": {"type": "string", "maxLength": MAX_TOKEN_LENGTH},
                }
            )
        return params

    def get_responses(self, path: str, method: str) -> dict[str, Any]:
        responses = super().get_responses(path, method)
        key = self._key(method)
        if key == "history":
            serializer = self.get_response_serializer(path, method)
            item = self.get_reference(serializer) if serializer is not None else {}
            schema: dict[str, Any] = {"type": "array", "items": item}
            paginator = self.get_paginator()
            if paginator:
                # The stubs take get_paginator() for the class; it returns an instance.
                schema = paginator.get_paginated_response_schema(schema)  # type: ignore[call-arg, arg-type]
            for response in responses.values():
                for media in response.get("content", {}).values():
                    media["schema"] = schema
        entry = self.responses.get(key)
        if entry is not None:
            wanted = str(entry[0])
            (current,) = [code for code in responses if code.startswith("2")]
            if current != wanted:
                responses[wanted] = responses.pop(current)
        responses.setdefault(
            "4XX",
            {
                "description": 'Error: {"code": "...", "detail": ...}',
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"code": {"type": "string"}, "detail": {}},
                            "required": ["code", "detail"],
                        }
                    }
                },
            },
        )
        return responses

    def get_components(self, path: str, method: str) -> dict[str, Any]:
        components = super().get_components(path, method)
        entry = self.responses.get(self._key(method))
        if entry is not None and entry[1] is not None:
            serializer = entry[1]()
            components.setdefault(self.get_component_name(serializer), self.map_serializer(serializer))
        return components
