"""Exceptions recorded as data: what history and work items store for an error."""

from __future__ import annotations

import traceback as _traceback
from typing import Any


def qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def failure_from_exception(exc: BaseException) -> dict[str, Any]:
    failure: dict[str, Any] = {
        "type": qualified_name(type(exc)),
        "message": str(exc),
        "traceback": "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "mro": [qualified_name(cls) for cls in type(exc).__mro__[1:] if cls not in (object, BaseException)],
    }
    details = getattr(exc, "details", None)
    if details is not None:
        failure["details"] = details
    return failure
