"""A JSON parser that enforces ``DURABLE["API_MAX_BODY_SIZE"]``.

It never reads more than the limit plus one byte: a declared ``Content-Length``
over the limit is refused before anything is read, and a body without one
(chunked, or ASGI) is read up to one byte past the limit and refused there.
It also refuses what the database could not store faithfully, by the rules of
``django_durable.jsontext`` (shared with the admin's forms): NaN and Infinity,
unpaired surrogates, and nesting deeper than ``MAX_JSON_DEPTH``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any, Protocol

from django.conf import settings
from rest_framework import renderers
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import BaseParser
from rest_framework.request import Request

from .. import jsontext, store
from ..conf import durable_settings

_READ_CHUNK = 64 * 1024


class PayloadTooLarge(APIException):
    status_code = 413
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


def body_size_limit() -> int:
    """The smaller of ``DURABLE["API_MAX_BODY_SIZE"]`` and Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``."""
    limit = int(durable_settings.API_MAX_BODY_SIZE)
    django_limit = getattr(settings, "DATA_UPLOAD_MAX_MEMORY_SIZE", None)
    if django_limit is not None:
        limit = min(limit, int(django_limit))
    return limit


class Readable(Protocol):
    """A request body: a file, or the request itself."""

    def read(self, size: int, /) -> bytes: ...


def declared_length(meta: Mapping[str, Any]) -> int | None:
    """The request's Content-Length, or None when it is absent or not a non-negative number."""
    raw = meta.get("CONTENT_LENGTH", meta.get("HTTP_CONTENT_LENGTH"))
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")


def read_limited(stream: Readable, limit: int) -> bytes:
    """At most ``limit`` bytes of ``stream``; PayloadTooLarge if there is more."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(_READ_CHUNK, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise _too_large(limit)
    return b"".join(chunks)


class JSONParser(BaseParser):
    """``application/json``, size-limited and strict (see the module docstring)."""

    media_type = "application/json"
    renderer_class = renderers.JSONRenderer

    # The stubs allow only an object (or a DataAndFiles), but a JSON body may be any JSON value.
    def parse(  # type: ignore[override]
        self, stream: IO[Any] | None, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> store.JSON:
        parser_context = parser_context or {}
        limit = body_size_limit()
        request = parser_context.get("request")
        if request is not None:
            length = declared_length(request.META)
            if length is not None and length > limit:
                raise _too_large(limit)
        if stream is None:
            return {}
        body = read_limited(stream, limit)
        if not body:
            return {}
        encoding = parser_context.get("encoding") or settings.DEFAULT_CHARSET
        try:
            data = jsontext.loads(body.decode(encoding))
        except (ValueError, LookupError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        return data


class LimitedBodyRequest(Request):
    """A DRF request that offers a body without Content-Length to the parser.

    DRF treats a missing Content-Length as "no body"; under ASGI (or a WSGI server
    that passes chunked bodies through) the body is there all the same, so the
    parser reads it, up to the size limit.
    """

    # The ignores: REST framework's and Django's private members, which the stubs leave out.
    def _load_stream(self) -> None:
        meta = self._request.META
        if (
            declared_length(meta) is None
            and self._request.method in ("POST", "PUT", "PATCH")
            and meta.get("CONTENT_TYPE")
            and not self._request._read_started  # type: ignore[attr-defined]
        ):
            self._stream = self._request  # type: ignore[assignment]
            return
        super()._load_stream()  # type: ignore[misc]
