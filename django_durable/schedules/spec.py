"""A schedule's specification: a cron expression or a fixed interval, and the times it ticks at.

Pure code (no ORM, no database). Every datetime returned is aware, in UTC.

Cron is parsed and iterated by cronsim in the schedule's zone, with its Debian-cron rules for DST:

- A *fixed-time* expression (neither the minute nor the hour field starts with ``*``, e.g. ``30 2 * * *``)
  follows the wall clock. A local time skipped in spring fires once at the first minute that exists after
  it: in Europe/Paris on 2026-03-29, ``30 2 * * *`` and ``0 3 * * *`` both fire at 03:00 CEST (01:00Z),
  once each. A local time repeated in autumn fires once, in its first pass (the summer offset): on
  2026-10-25, ``30 2 * * *`` fires at 02:30 CEST (00:30Z) only, and ``0 3 * * *`` at 03:00 CET (02:00Z).
- Any other expression (``0 * * * *``, ``*/30 * * * *``, ``*/30 2 * * *``) follows elapsed time: the local
  times that do not exist never fire (an hourly schedule ticks at 00:00Z, then 01:00Z = 03:00 CEST), and
  the repeated hour fires twice (02:00 CEST = 00:00Z and 02:00 CET = 01:00Z).

``every`` ignores zones: its ticks are the whole multiples of ``every`` seconds since 1970-01-01T00:00Z.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import zoneinfo
from collections.abc import Iterator, Mapping
from itertools import islice, takewhile
from typing import Any

from cronsim import CronSim, CronSimError

UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = datetime.timedelta(microseconds=1)

# cronsim knows no aliases; these are the ones of Vixie/Debian cron, minus @reboot (not a time).
CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
CRON_ACCEPTED = "five fields 'minute hour day-of-month month day-of-week' (e.g. '30 2 * * *'), or an alias: " + (
    ", ".join(CRON_ALIASES)
)
JSON_FIELDS = ("cron", "every", "timezone", "start_at", "end_at", "jitter")

Seconds = int | float | datetime.timedelta


class InvalidSchedule(ValueError):
    """A schedule specification that cannot be built: the message says what is wrong and what is accepted."""


def _cron_expression(cron: object) -> str:
    """The five-field expression ``cron`` stands for (an alias resolved); InvalidSchedule if there is none."""
    if not isinstance(cron, str) or not cron.strip():
        raise InvalidSchedule(f"cron must be a non-empty string: {CRON_ACCEPTED}; got {cron!r}")
    text = cron.strip()
    if text.startswith("@"):
        if text.lower() == "@reboot":
            raise InvalidSchedule("cron '@reboot' is not supported: a durable schedule fires at times, not at start-up")
        if text.lower() not in CRON_ALIASES:
            raise InvalidSchedule(f"unknown cron alias {text!r}: expected {CRON_ACCEPTED}")
        return CRON_ALIASES[text.lower()]
    fields = text.split()
    if len(fields) == 6:
        raise InvalidSchedule(
            f"cron {text!r} has six fields: seconds are not supported (use every= for intervals under a minute); "
            f"expected {CRON_ACCEPTED}"
        )
    if len(fields) != 5:
        raise InvalidSchedule(f"cron {text!r} has {len(fields)} fields: expected {CRON_ACCEPTED}")
    try:
        CronSim(text, EPOCH)
    except CronSimError as error:
        raise InvalidSchedule(f"invalid cron {text!r}: {error}; expected {CRON_ACCEPTED}") from error
    return text


def _require_one_of(cron: object, every: object) -> None:
    if (cron is None) == (every is None):
        raise InvalidSchedule(
            "a schedule needs exactly one of cron (e.g. '30 2 * * *' or '@daily') and every (seconds); "
            + ("got both" if cron is not None else "got neither")
        )


def _zone(name: object) -> zoneinfo.ZoneInfo:
    if not isinstance(name, str) or not name:
        raise InvalidSchedule(f"timezone must be an IANA zone name such as 'Europe/Paris' or 'UTC'; got {name!r}")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidSchedule(f"unknown timezone {name!r}: expected an IANA name such as 'Europe/Paris'") from error


def _every_seconds(every: object) -> int:
    accepted = "every must be whole seconds, at least 1: an int, a whole float or a timedelta without microseconds"
    if isinstance(every, datetime.timedelta):
        if every.microseconds:
            raise InvalidSchedule(f"{accepted}; got {every!r}, which has a fraction of a second")
        seconds = every.days * 86400 + every.seconds
    elif isinstance(every, float) and every.is_integer():
        seconds = int(every)
    elif isinstance(every, int) and not isinstance(every, bool):
        seconds = every
    else:
        raise InvalidSchedule(f"{accepted}; got {every!r}")
    if seconds < 1:
        raise InvalidSchedule(f"{accepted}; got {every!r}")
    return seconds


def _jitter_seconds(jitter: object) -> float | None:
    accepted = "jitter must be seconds >= 0: an int, a float or a timedelta"
    if jitter is None:
        return None
    if isinstance(jitter, datetime.timedelta):
        seconds = jitter.total_seconds()
    elif isinstance(jitter, (int, float)) and not isinstance(jitter, bool):
        seconds = float(jitter)
    else:
        raise InvalidSchedule(f"{accepted}; got {jitter!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidSchedule(f"{accepted}; got {jitter!r}")
    return seconds


def _aware_utc(moment: object, name: str, error: type[ValueError] = ValueError) -> datetime.datetime:
    if not isinstance(moment, datetime.datetime):
        raise error(f"{name} must be an aware datetime; got {moment!r}")
    if moment.utcoffset() is None:
        raise error(
            f"{name} must be an aware datetime (with tzinfo, e.g. datetime.timezone.utc or a ZoneInfo); "
            f"got the naive {moment.isoformat()}"
        )
    return moment.astimezone(UTC)


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """When a schedule ticks. Build one with :meth:`build`, which accepts the friendlier input types."""

    cron: str | None
    every: int | None
    timezone: str
    start_at: datetime.datetime | None = None
    end_at: datetime.datetime | None = None
    jitter: float | None = None

    def __post_init__(self) -> None:
        # Validated here as well as in build(), so that no ScheduleSpec can exist that fails at fire time.
        _require_one_of(self.cron, self.every)
        if self.cron is not None:
            _cron_expression(self.cron)
            object.__setattr__(self, "cron", self.cron.strip())
        else:
            object.__setattr__(self, "every", _every_seconds(self.every))
        _zone(self.timezone)
        for name in ("start_at", "end_at"):
            if (moment := getattr(self, name)) is not None:
                object.__setattr__(self, name, _aware_utc(moment, name, InvalidSchedule))
        if self.start_at is not None and self.end_at is not None and self.end_at <= self.start_at:
            raise InvalidSchedule(f"end_at ({self.end_at}) must be after start_at ({self.start_at})")
        object.__setattr__(self, "jitter", _jitter_seconds(self.jitter))

    @classmethod
    def build(
        cls,
        *,
        cron: str | None = None,
        every: Seconds | None = None,
        timezone: str,
        start_at: datetime.datetime | None = None,
        end_at: datetime.datetime | None = None,
        jitter: Seconds | None = None,
    ) -> ScheduleSpec:
        """Validate and normalise: ``every`` to int seconds, ``jitter`` to float seconds, datetimes to UTC."""
        _require_one_of(cron, every)
        return cls(
            cron=cron,
            every=None if every is None else _every_seconds(every),
            timezone=timezone,
            start_at=start_at,
            end_at=end_at,
            jitter=_jitter_seconds(jitter),
        )

    def next_tick(self, after: datetime.datetime) -> datetime.datetime | None:
        """The first tick strictly after ``after`` (and not before start_at), or None if there is none."""
        return next(self._ticks_after(after), None)

    def ticks(self, after: datetime.datetime, until: datetime.datetime, *, limit: int) -> list[datetime.datetime]:
        """The ticks t with ``after < t <= until``, ascending, at most ``limit`` of them (the earliest)."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0; got {limit}")
        last = _aware_utc(until, "until")
        found: list[datetime.datetime] = []
        for tick in islice(self._ticks_after(after), limit):
            if tick > last:
                break
            found.append(tick)
        return found

    def upcoming(self, after: datetime.datetime, count: int) -> list[datetime.datetime]:
        """The next ``count`` ticks after ``after`` (fewer if the schedule ends first)."""
        if count < 0:
            raise ValueError(f"count must be >= 0; got {count}")
        return list(islice(self._ticks_after(after), count))

    def jitter_for(self, schedule_id: str, tick: datetime.datetime) -> datetime.timedelta:
        """The delay of ``tick``, in [0, jitter): a hash of the schedule id and the tick, so every worker agrees."""
        key = f"{schedule_id}\n{_aware_utc(tick, 'tick').isoformat()}"
        span = round((self.jitter or 0.0) * 1_000_000)
        if span == 0:
            return datetime.timedelta(0)
        fraction = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
        return datetime.timedelta(microseconds=fraction * span >> 64)

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values: datetimes as ISO 8601 strings in UTC."""
        return {
            "cron": self.cron,
            "every": self.every,
            "timezone": self.timezone,
            "start_at": None if self.start_at is None else self.start_at.isoformat(),
            "end_at": None if self.end_at is None else self.end_at.isoformat(),
            "jitter": self.jitter,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScheduleSpec:
        """The spec :meth:`to_json` gave ``data`` for; validated again, InvalidSchedule if it is not one."""
        if not isinstance(data, Mapping):
            raise InvalidSchedule(f"a schedule's JSON must be an object; got {data!r}")
        unknown = sorted(set(data) - set(JSON_FIELDS))
        if unknown:
            raise InvalidSchedule(f"unknown schedule fields {unknown}: expected {', '.join(JSON_FIELDS)}")
        values: dict[str, Any] = {name: data.get(name) for name in JSON_FIELDS}
        for name in ("start_at", "end_at"):
            values[name] = _parse_iso(values[name], name)
        return cls.build(**values)

    def _ticks_after(self, after: datetime.datetime) -> Iterator[datetime.datetime]:
        lower = _aware_utc(after, "after")
        if self.start_at is not None:
            # Ticks are whole seconds, so "> start_at - 1µs" is exactly ">= start_at".
            lower = max(lower, self.start_at - ONE_MICROSECOND)
        ticks = self._every_ticks(lower, self.every) if self.every is not None else self._cron_ticks(lower)
        end_at = self.end_at
        return ticks if end_at is None else takewhile(lambda tick: tick <= end_at, ticks)

    def _cron_ticks(self, lower: datetime.datetime) -> Iterator[datetime.datetime]:
        assert self.cron is not None
        latest = lower
        try:
            for local in CronSim(_cron_expression(self.cron), lower.astimezone(_zone(self.timezone))):
                tick = local.astimezone(UTC)
                # cronsim walks fixed-time expressions in wall-clock time, which revisits UTC instants around
                # a repeated hour (from a `lower` in its second pass it yields the first pass's tick again).
                if tick > latest:
                    latest = tick
                    yield tick
        except OverflowError:  # past year 9999: there are no more ticks
            return

    @staticmethod
    def _every_ticks(lower: datetime.datetime, every: int) -> Iterator[datetime.datetime]:
        index = (lower - EPOCH) // ONE_MICROSECOND // (every * 1_000_000) + 1
        try:
            while True:
                yield EPOCH + datetime.timedelta(seconds=index * every)
                index += 1
        except OverflowError:
            return


def _parse_iso(value: object, name: str) -> datetime.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidSchedule(f"{name} must be an ISO 8601 string or null; got {value!r}")
    try:
        # Python 3.10's fromisoformat does not read a trailing Z.
        return datetime.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError as error:
        raise InvalidSchedule(f"{name} is not an ISO 8601 datetime: {value!r}") from error


def _basic(moment: datetime.datetime) -> str:
    # isoformat, not strftime: %Y does not zero-pad years before 1000 on every platform.
    return moment.replace(tzinfo=None, microsecond=0).isoformat().replace("-", "").replace(":", "")


def tick_workflow_id(schedule_id: str, tick: datetime.datetime) -> str:
    """The id of the run for ``tick``: ``"{schedule_id}-20261207T030000Z"`` (UTC, ISO 8601 basic)."""
    moment = _aware_utc(tick, "tick")
    if moment.microsecond:
        raise ValueError(f"a tick is a whole second; got {tick.isoformat()}")
    return f"{schedule_id}-{_basic(moment)}Z"


def trigger_workflow_id(schedule_id: str, now: datetime.datetime) -> str:
    """The id of a run triggered by hand at ``now``: ``"{schedule_id}-20261207T030000.123Z"`` (milliseconds)."""
    moment = _aware_utc(now, "now")
    return f"{schedule_id}-{_basic(moment)}.{moment.microsecond // 1000:03d}Z"
