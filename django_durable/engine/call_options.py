"""The reserved keywords of ``call_activity`` that are options of the call, not arguments of
the activity: validated where the workflow passes them, recorded with the call's options."""

from __future__ import annotations

from typing import Any

# Keywords ``call_activity`` keeps for itself; an activity cannot take a parameter so named.
RESERVED_ACTIVITY_KEYWORDS = ("concurrency_key", "priority")
PRIORITIES = range(1, 6)  # 1 first, 5 last, as in Temporal
KEY_MAX_LENGTH = 255


def activity_call_options(name: str, *, concurrency_key: object, priority: object) -> dict[str, Any]:
    """The options a call's ``concurrency_key=`` and ``priority=`` add (none when unset)."""
    options: dict[str, Any] = {}
    if concurrency_key is not None:
        if not isinstance(concurrency_key, str) or not 0 < len(concurrency_key) <= KEY_MAX_LENGTH:
            raise ValueError(
                f"call_activity({name!r}, concurrency_key=...) takes a non-empty string of at most "
                f"{KEY_MAX_LENGTH} characters, not {concurrency_key!r}."
            )
        options["concurrency_key"] = concurrency_key
    if priority is not None:
        options["priority"] = check_priority(priority, f"call_activity({name!r}, priority=...)")
    return options


def check_priority(priority: object, where: str) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or priority not in PRIORITIES:
        raise ValueError(f"{where} takes a whole number from 1 (first) to 5 (last), not {priority!r}.")
    return priority
