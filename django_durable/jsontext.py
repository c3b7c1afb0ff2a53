"""JSON text from outside (the HTTP API's bodies, the admin's forms), read strictly.

Refused, with a ValueError that says why: what ``json`` refuses, NaN and Infinity,
numbers out of a float's range, unpaired surrogates, and nesting deeper than
``MAX_JSON_DEPTH`` (deeper JSON would exhaust the recursion limit somewhere on its
way into the database: encoders, converters and JSON columns all recurse).
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_JSON_DEPTH = 100


def loads(text: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` under the rules above; ``json.JSONDecodeError`` (a ValueError) keeps
    its position for malformed text."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    check_json_value(value, max_depth)
    return value


def check_json_value(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise ValueError for nesting deeper than ``max_depth`` or a string that is not valid Unicode."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, (list, dict)):
            if depth > max_depth:
                raise ValueError(f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string contains an unpaired surrogate (\\ud800-\\udfff)") from None
