"""Values crossing the durable boundary (arguments, results, variables).

The default converter produces plain JSON with Django's encoder for dates,
decimals, UUIDs and durations. Dataclasses and Pydantic-style models
(``model_dump()`` / ``model_validate()``) are tagged with their class so they
come back as the same type. A value that cannot be encoded raises
``SerializationError`` where it was passed, never later in a worker, and so
does a value larger than ``DURABLE["PAYLOAD_MAX_BYTES"]`` allows for its kind
(``PayloadTooLarge``, a ``SerializationError``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from .engine.events import PAYLOAD_KINDS, PayloadLimits, check_payload_size
from .exceptions import SerializationError

_DATACLASS_TAG = "__dataclass__"
_MODEL_TAG = "__model__"
# A plain dict that happens to use a tag as a key is wrapped, so data from
# outside (an HTTP request, say) can never make the worker build an object.
_DICT_TAG = "__dict__"
_TAGS = frozenset({_DATACLASS_TAG, _MODEL_TAG, _DICT_TAG})
_MAX_DEPTH = 100


class DataConverter:
    """Interface: ``to_json`` returns a JSON-compatible structure, ``from_json`` reverses it."""

    def to_json(self, value: Any) -> Any:
        raise NotImplementedError

    def from_json(self, data: Any) -> Any:
        raise NotImplementedError


class JSONDataConverter(DataConverter):
    encoder = DjangoJSONEncoder()

    def to_json(self, value: Any) -> Any:
        return self._encode(value, "value", set())

    def from_json(self, data: Any) -> Any:
        if isinstance(data, list):
            return [self.from_json(item) for item in data]
        if isinstance(data, dict):
            if _DICT_TAG in data and len(data) == 1 and isinstance(data[_DICT_TAG], dict):
                return {key: self.from_json(item) for key, item in data[_DICT_TAG].items()}
            if _DATACLASS_TAG in data or _MODEL_TAG in data:
                return self._revive(data)
            return {key: self.from_json(item) for key, item in data.items()}
        return data

    def _encode(self, value: Any, path: str, seen: set[int]) -> Any:
        if isinstance(value, str):
            return _checked_string(value, path)
        if value is None or isinstance(value, (bool, int)):
            return value
        if isinstance(value, (list, tuple, dict)) or dataclasses.is_dataclass(value):
            if id(value) in seen:
                raise SerializationError(f"{path}: circular reference.")
            if len(seen) >= _MAX_DEPTH:  # seen holds the containers on the path here
                raise SerializationError(f"value: nested more than {_MAX_DEPTH} levels deep.")
            seen = seen | {id(value)}
        if isinstance(value, float):
            if not math.isfinite(value):
                raise SerializationError(f"{path}: {value!r} is not valid JSON (NaN/Infinity).")
            return value
        if isinstance(value, (list, tuple)):
            return [self._encode(item, f"{path}[{i}]", seen) for i, item in enumerate(value)]
        if isinstance(value, dict):
            encoded = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise SerializationError(
                        f"{path}: dictionary key {key!r} is not a string; JSON keys must be strings."
                    )
                encoded[_checked_string(key, path)] = self._encode(item, f"{path}[{key!r}]", seen)
            return {_DICT_TAG: encoded} if _TAGS.intersection(encoded) else encoded
        cls = type(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return {_DATACLASS_TAG: _class_path(cls), "fields": self._encode(fields, path, seen)}
        if (
            callable(getattr(value, "model_dump", None))
            and hasattr(cls, "model_validate")
            and not isinstance(value, type)
        ):
            data = value.model_dump(mode="json")
            return {_MODEL_TAG: _class_path(cls), "data": self._encode(data, path, seen)}
        try:
            return self.encoder.default(value)
        except (TypeError, ValueError):
            raise SerializationError(
                f"{path}: object of type {cls.__qualname__} cannot be serialised to JSON. "
                "Pass JSON-compatible values, dataclasses or models with model_dump()."
            ) from None

    def _revive(self, data: dict[str, Any]) -> Any:
        is_dataclass = _DATACLASS_TAG in data
        path = data[_DATACLASS_TAG] if is_dataclass else data[_MODEL_TAG]
        cls = _loaded_class(path)
        if is_dataclass:
            if cls is None or not dataclasses.is_dataclass(cls):
                return self.from_json(data.get("fields", {}))
            return cls(**self.from_json(data.get("fields", {})))
        if cls is None or not hasattr(cls, "model_validate"):
            return self.from_json(data.get("data", {}))
        return cls.model_validate(data.get("data", {}))


def _checked_string(value: str, path: str) -> str:
    # PostgreSQL's jsonb cannot hold NUL, and lone surrogates are not valid UTF-8.
    if "\x00" in value:
        raise SerializationError(f"{path}: strings cannot contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SerializationError(f"{path}: string is not valid Unicode (lone surrogate).") from None
    return value


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _loaded_class(path: Any) -> type | None:
    # Only classes of modules already imported by the project are revived:
    # stored data must never make the worker import arbitrary modules.
    if not isinstance(path, str):
        return None
    module_name, _, qualname = path.partition(":")
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


_converter: tuple[type, DataConverter] | None = None


def get_converter() -> DataConverter:
    from .conf import durable_settings

    global _converter
    cls = durable_settings.DATA_CONVERTER
    if _converter is None or _converter[0] is not cls:
        _converter = (cls, cls())
    return _converter[1]


def to_json(value: Any, what: str = "value", *, kind: str | None = None) -> Any:
    """Encode ``value`` with the configured converter; errors name ``what``.

    With ``kind`` (one of ``PAYLOAD_KINDS``), a value larger than that kind's
    payload limit raises ``PayloadTooLarge``.
    """
    try:
        encoded = get_converter().to_json(value)
    except SerializationError as exc:
        raise SerializationError(f"Cannot serialise {what}: {exc.detail}") from None
    if kind is not None:
        check_size(encoded, what, kind)
    return encoded


def check_size(encoded: Any, what: str, kind: str) -> None:
    """``PayloadTooLarge`` if ``encoded`` (what ``to_json`` returned) is over ``kind``'s limit."""
    check_payload_size(encoded, what=what, kind=kind, limits=payload_limits())


_limits: tuple[Any, dict[str, int | None]] | None = None


def payload_limits() -> PayloadLimits:
    """``DURABLE["PAYLOAD_MAX_BYTES"]`` as {kind: bytes or None} for every kind."""
    from .conf import DEFAULT_PAYLOAD_MAX_BYTES, durable_settings

    global _limits
    configured = durable_settings.PAYLOAD_MAX_BYTES
    if _limits is None or _limits[0] is not configured:
        if isinstance(configured, Mapping):
            limits = {kind: configured.get(kind, DEFAULT_PAYLOAD_MAX_BYTES) for kind in PAYLOAD_KINDS}
        else:
            limits = dict.fromkeys(PAYLOAD_KINDS, configured)
        _limits = (configured, limits)
    return _limits[1]


def from_json(data: Any) -> Any:
    return get_converter().from_json(data)
