"""The API's exception handler: every error is JSON ``{"code": ..., "detail": ...}``.

Used by the API's views only (their ``get_exception_handler()``), so the
project's own REST framework settings are left alone.

- ``DurableError`` subclasses: their ``status_code``, ``code`` and ``detail``.
- REST framework errors: their status and code; a ``ValidationError`` is
  ``{"code": "invalid", "detail": {field: [messages]}}``.
- Django's ``Http404`` and ``PermissionDenied``: 404 ``not_found``, 403 ``permission_denied``.
- Anything else is a bug: logged and reported like any unhandled exception, then
  answered with a JSON 500 (``DEBUG`` shows Django's technical page instead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core import signals
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import set_rollback

from ..exceptions import DurableError

logger = logging.getLogger("django_durable.api")


# What a view's ``get_exception_handler()`` returns: REST framework passes the view's context.
ExceptionHandler = Callable[[Exception, dict[str, Any]], Response | None]


def error_response(code: str, detail: object, status_code: int, headers: dict[str, str] | None = None) -> Response:
    return Response({"code": code, "detail": detail}, status=status_code, headers=headers)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*(exc.args[:1] or ()))
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*(exc.args[:1] or ()))

    if isinstance(exc, DurableError):
        set_rollback()
        return error_response(exc.code, exc.detail, exc.status_code)

    if isinstance(exc, exceptions.APIException):
        headers: dict[str, str] = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]
        set_rollback()
        if isinstance(exc, exceptions.ValidationError):
            errors = exc.detail
            if not isinstance(errors, dict):
                errors = {api_settings.NON_FIELD_ERRORS_KEY: errors if isinstance(errors, list) else [errors]}
            return error_response("invalid", errors, exc.status_code, headers)
        detail = exc.detail
        code = getattr(detail, "code", None) or exc.default_code
        if isinstance(detail, (list, dict)):  # not raised by these views, but keep the shape
            return error_response(str(code), detail, exc.status_code, headers)
        return error_response(str(code), str(detail), exc.status_code, headers)

    return _server_error(exc, context)


def _server_error(exc: Exception, context: dict[str, Any]) -> Response | None:
    if settings.DEBUG:
        return None  # REST framework re-raises it: Django's technical 500 page
    request = getattr(context.get("request"), "_request", None)
    logger.error("Unhandled error in the django-durable API", exc_info=exc)
    signals.got_request_exception.send(sender=None, request=request)
    set_rollback()
    return error_response("server_error", "A server error occurred.", status.HTTP_500_INTERNAL_SERVER_ERROR)
