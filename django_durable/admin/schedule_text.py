"""How the schedule pages and the dashboard say things: a schedule's specification in words,
and fire times in the schedule's own zone."""

from __future__ import annotations

import datetime
import zoneinfo
from typing import Any, TypedDict

from django.utils import timezone

from ..conf import durable_settings
from ..models import Schedule
from ..operations import parse_duration
from .timeline import format_duration


class FireTime(TypedDict):
    at: datetime.datetime  # UTC
    local: str  # in the schedule's zone, with its abbreviation
    utc: str  # "" when the zone is UTC


def spec_text(schedule: Schedule) -> str:
    """``cron 0 3 * * * (Europe/Paris)`` or ``every 300 s (5m)``, with its start and end if any."""
    if schedule.cron:
        text = f"cron {schedule.cron} ({schedule.timezone})"
    else:
        every = schedule.every or 0
        text = f"every {every} s" + (f" ({format_duration(every)})" if every >= 60 else "")
    if schedule.start_at is not None:
        text += f", from {when(schedule.start_at)}"
    if schedule.end_at is not None:
        text += f", until {when(schedule.end_at)}"
    if schedule.jitter:
        text += f", jitter up to {format_duration(schedule.jitter)}"
    return text


def when(at: datetime.datetime | None) -> str:
    """A moment as the admin shows it: local time, to the second."""
    return timezone.localtime(at).strftime("%Y-%m-%d %H:%M:%S") if at is not None else ""


def fire_times(ticks: list[datetime.datetime], zone_name: str) -> list[FireTime]:
    try:
        zone: datetime.tzinfo = zoneinfo.ZoneInfo(zone_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zone = datetime.timezone.utc
    shown: list[FireTime] = []
    for tick in ticks:
        local = tick.astimezone(zone)
        utc = tick.astimezone(datetime.timezone.utc)
        shown.append(
            {
                "at": utc,
                "local": local.strftime("%a %Y-%m-%d %H:%M:%S %Z"),
                "utc": "" if local.utcoffset() == datetime.timedelta(0) else utc.strftime("%H:%M:%S UTC"),
            }
        )
    return shown


def relative(at: datetime.datetime, now: datetime.datetime) -> str:
    """``in 4m`` or ``5s ago``."""
    seconds = (at - now).total_seconds()
    return f"in {format_duration(seconds)}" if seconds >= 0 else f"{format_duration(-seconds)} ago"


def run_counts(schedule: Any) -> str:
    return f"{schedule.runs_started} started, {schedule.ticks_skipped} skipped, {schedule.ticks_missed} missed"


def late_after() -> datetime.timedelta:
    """``HEALTH_SCHEDULE_LATE_AFTER``: a schedule whose tick has been due longer is late."""
    return parse_duration(durable_settings.HEALTH_SCHEDULE_LATE_AFTER)
