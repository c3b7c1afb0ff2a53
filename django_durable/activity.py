"""What running activity code can ask about itself, and tell the engine."""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
from collections.abc import Callable
from typing import Any


class ResultPending(Exception):
    """Raise from an activity to finish it later, by task token (see ``activity_info()``).

    The attempt stays pending; its start-to-close and heartbeat timeouts still apply.
    """


@dataclasses.dataclass(frozen=True)
class ActivityInfo:
    workflow_id: str
    run_id: str
    activity_id: str
    activity_name: str
    attempt: int  # 1 for the first
    # A capability: kept out of the repr, which logs and tracebacks show.
    task_token: str = dataclasses.field(repr=False)
    # What the previous attempt last reported with heartbeat(), or None.
    heartbeat_details: Any = None
    # When this attempt was leased, by the database's clock (its queue's rate limit counts it then).
    started_at: datetime.datetime | None = None
    # The call's ``concurrency_key``, or None.
    concurrency_key: str | None = None


@dataclasses.dataclass(frozen=True)
class _Scope:
    info: ActivityInfo
    heartbeat: Callable[[Any], bool]


_current: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("durable_activity", default=None)


def _scope() -> _Scope:
    scope = _current.get()
    if scope is None:
        raise RuntimeError("This can only be called from inside a running activity.")
    return scope


def activity_info() -> ActivityInfo:
    """Information about the activity attempt running in this thread."""
    return _scope().info


def heartbeat(details: Any = None) -> bool:
    """Report progress (kept for a retry's ``heartbeat_details``) and keep a
    ``heartbeat_timeout`` from expiring. Returns whether cancellation was requested.

    Details larger than ``DURABLE["PAYLOAD_MAX_BYTES"]`` allows for heartbeats raise
    ``PayloadTooLarge`` here, and nothing is recorded."""
    from .converter import to_json

    return _scope().heartbeat(to_json(details, "the heartbeat details", kind="heartbeat"))
