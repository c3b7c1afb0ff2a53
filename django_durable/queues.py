"""Queue limits (``DURABLE["QUEUES"]``): what each queue's activity attempts may do at once.

Pure values and their validation; the database enforces them where work is leased
(``store.queue_limits``), and an operator's override (the admin's Queues page) replaces a
queue's settings there.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

LIMIT_NAMES = ("concurrency", "worker_concurrency", "rate_limit", "key_concurrency")


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` attempt starts in any window of ``period`` seconds."""

    limit: int
    period: float


@dataclasses.dataclass(frozen=True)
class QueueLimits:
    """A queue's limits; None is no limit."""

    concurrency: int | None = None
    worker_concurrency: int | None = None
    rate_limit: RateLimit | None = None
    key_concurrency: int | None = None

    @property
    def limited(self) -> bool:
        return any(getattr(self, name) is not None for name in LIMIT_NAMES)

    def to_json(self) -> dict[str, Any]:
        """The setting's shape (what an override stores), limits that are set only."""
        data: dict[str, Any] = {}
        for name in ("concurrency", "worker_concurrency", "key_concurrency"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.rate_limit is not None:
            data["rate_limit"] = {"limit": self.rate_limit.limit, "period": self.rate_limit.period}
        return data

    def describe(self) -> str:
        """``concurrency 5, 50 per 30s`` (for the admin and logs)."""
        parts = []
        if self.concurrency is not None:
            parts.append(f"concurrency {self.concurrency}")
        if self.worker_concurrency is not None:
            parts.append(f"{self.worker_concurrency} per worker")
        if self.key_concurrency is not None:
            parts.append(f"{self.key_concurrency} per key")
        if self.rate_limit is not None:
            parts.append(f"{self.rate_limit.limit} per {self.rate_limit.period:g}s")
        return ", ".join(parts) or "unlimited"


def parse_queue_limits(queue: str, raw: object) -> QueueLimits:
    """A queue's limits from the setting's (or an override's) dict; ``ImproperlyConfigured``
    naming the queue and the value when it is not one."""
    where = f'DURABLE["QUEUES"][{queue!r}]'
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"{where} must be a dict of limits, not {raw!r}.")
    unknown = sorted(set(raw) - set(LIMIT_NAMES))
    if unknown:
        raise ImproperlyConfigured(f"{where} has unknown keys {unknown}; the limits are {', '.join(LIMIT_NAMES)}.")
    counts = {name: _count(where, name, raw.get(name)) for name in LIMIT_NAMES if name != "rate_limit"}
    return QueueLimits(**counts, rate_limit=_rate_limit(where, raw.get("rate_limit")))


def _count(where: str, name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ImproperlyConfigured(f"{where}[{name!r}] must be a whole number of at least 1, not {value!r}.")
    return value


def _rate_limit(where: str, value: object) -> RateLimit | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"limit", "period"}:
        raise ImproperlyConfigured(
            f'{where}["rate_limit"] must be {{"limit": starts, "period": seconds or a timedelta}}, not {value!r}.'
        )
    limit = _count(where, "rate_limit.limit", value["limit"])
    assert limit is not None
    period = value["period"]
    if isinstance(period, bool) or not isinstance(period, (int, float, datetime.timedelta)):
        raise ImproperlyConfigured(f'{where}["rate_limit"]["period"] must be seconds or a timedelta, not {period!r}.')
    seconds = period.total_seconds() if isinstance(period, datetime.timedelta) else float(period)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ImproperlyConfigured(f'{where}["rate_limit"]["period"] must be more than 0 seconds, not {period!r}.')
    return RateLimit(limit, seconds)


def configured_limits(setting: object) -> dict[str, QueueLimits]:
    """``DURABLE["QUEUES"]`` parsed: each listed queue's limits (unlisted queues are unlimited)."""
    if setting is None:
        return {}
    if not isinstance(setting, Mapping):
        raise ImproperlyConfigured(f'DURABLE["QUEUES"] must be a dict of queue names to limits, not {setting!r}.')
    limits = {}
    for queue, raw in setting.items():
        if not isinstance(queue, str) or not queue:
            raise ImproperlyConfigured(f'DURABLE["QUEUES"] has a key that is not a queue name: {queue!r}.')
        limits[queue] = parse_queue_limits(queue, raw)
    return limits
