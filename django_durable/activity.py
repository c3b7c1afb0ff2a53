"""What running activity code can ask about itself."""

from __future__ import annotations

import contextvars
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ActivityInfo:
    workflow_id: str
    run_id: str
    activity_id: str
    activity_name: str
    attempt: int  # 1 for the first
    heartbeat_details: Any = None
    task_token: str | None = None


_current: contextvars.ContextVar[ActivityInfo | None] = contextvars.ContextVar("durable_activity", default=None)


def activity_info() -> ActivityInfo:
    """Information about the activity attempt running in this thread."""
    info = _current.get()
    if info is None:
        raise RuntimeError("activity_info() can only be called from inside a running activity.")
    return info
