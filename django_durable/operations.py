"""What ``durable_prune`` and ``durable_healthcheck`` do, short of SQL (that is in ``store``):
durations, the prune loop, the health checks, their verdict and its text."""

from __future__ import annotations

import dataclasses
import datetime
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from . import store
from .conf import durable_settings

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NUMBER = r"\d+(?:\.\d+)?"
_DURATION = re.compile(rf"(?:{_NUMBER}[smhdw])+")
_PART = re.compile(rf"({_NUMBER})([smhdw])")


def parse_duration(value: str | float | datetime.timedelta) -> datetime.timedelta:
    """``30d``, ``12h``, ``1h30m``, ``90s``, ``3600`` (seconds), a number or a timedelta;
    never negative. Raises ``ValueError`` saying what it expected."""
    if isinstance(value, datetime.timedelta):
        duration = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        duration = datetime.timedelta(seconds=value)
    elif isinstance(value, str) and re.fullmatch(_NUMBER, value.strip()):
        duration = datetime.timedelta(seconds=float(value))
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip().lower()):
        seconds = sum(float(number) * UNITS[unit] for number, unit in _PART.findall(value.strip().lower()))
        duration = datetime.timedelta(seconds=seconds)
    else:
        raise ValueError(
            f"{value!r} is not a duration: give a number of seconds or a number with a unit, "
            "s, m, h, d or w (e.g. 90s, 15m, 12h, 30d, 1h30m)."
        )
    if duration < datetime.timedelta(0):
        raise ValueError(f"{value!r} is negative; a duration cannot be.")
    return duration


def format_duration(seconds: float) -> str:
    """``850ms``, ``12s``, ``3m20s``, ``4h``, ``30d``."""
    if seconds < 1:
        return f"{max(seconds, 0) * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    days, rest = divmod(round(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join([f"{value}{unit}" for value, unit in parts if value][:2]) or "0s"


# -- durable_prune --------------------------------------------------------------------


@dataclasses.dataclass
class PruneResult:
    closed_before: datetime.datetime
    dry_run: bool
    runs: int = 0
    history_events: int = 0
    inbox_events: int = 0
    work_items: int = 0
    batches: int = 0
    # Closed runs past the retention that open runs still refer to (left in place).
    kept: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        verb = "Would delete" if self.dry_run else "Deleted"
        text = (
            f"{verb} {self.runs} run(s) closed before {self.closed_before.isoformat(timespec='seconds')} "
            f"({self.history_events} history events, {self.inbox_events} inbox events, "
            f"{self.work_items} work items)"
        )
        if not self.dry_run:
            text += f" in {self.batches} batch(es)"
        if self.kept:
            text += f"; kept {self.kept} that open runs still refer to (as parent, predecessor or rerun source)"
        return text + "."


def prune(
    *,
    older_than: datetime.timedelta,
    batch_size: int,
    workflow_names: Sequence[str] = (),
    dry_run: bool = False,
    on_batch: Callable[[int, dict[str, int]], None] | None = None,
) -> PruneResult:
    """Delete closed runs older than ``older_than`` (by the database's clock), ``batch_size``
    per transaction, until none is left; with ``dry_run`` only count them."""
    closed_before = store.db_now() - older_than
    result = PruneResult(closed_before=closed_before, dry_run=dry_run)
    if dry_run:
        counts = store.count_prunable(closed_before=closed_before, workflow_names=workflow_names)
        for key, value in counts.items():
            setattr(result, key, value)
        return result
    size = store.prune_batch_size(batch_size)
    while True:
        counts = store.prune_batch(closed_before=closed_before, batch_size=size, workflow_names=workflow_names)
        if counts["runs"]:
            result.batches += 1
            for key in store.PRUNE_COUNT_KEYS:
                setattr(result, key, getattr(result, key) + counts[key])
            if on_batch is not None:
                on_batch(result.batches, counts)
        if counts["runs"] < size:  # the last batch: nothing (unlocked) is left
            break
    result.kept = store.count_kept(closed_before=closed_before, workflow_names=workflow_names)
    return result


# -- durable_healthcheck ------------------------------------------------------------------

OK, FAIL, SKIPPED = "ok", "fail", "skipped"
CHECKS = ("database", "migrations", "workers", "overdue", "schedules")
# Late schedules the report names on its line (the JSON lists up to LATE_SCHEDULES_LISTED).
LATE_SCHEDULES_NAMED = 3
LATE_SCHEDULES_LISTED = 10


@dataclasses.dataclass
class Check:
    name: str
    status: str  # OK, FAIL or SKIPPED
    detail: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status.upper():<7} {self.name:<11} {self.detail}"


@dataclasses.dataclass
class HealthReport:
    checks: list[Check]

    @property
    def healthy(self) -> bool:
        return all(check.status != FAIL for check in self.checks)

    @property
    def failed(self) -> list[str]:
        return [check.name for check in self.checks if check.status == FAIL]

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "checks": {
                check.name: {"status": check.status, "detail": check.detail, **check.data} for check in self.checks
            },
        }

    def summary(self) -> str:
        return "Healthy." if self.healthy else f"Unhealthy: {', '.join(self.failed)}."


@dataclasses.dataclass(frozen=True)
class Thresholds:
    stale_after: datetime.timedelta
    overdue_after: datetime.timedelta
    min_workers: int = 1
    queues: tuple[str, ...] = ()
    hostname: str | None = None
    schedule_late_after: datetime.timedelta = datetime.timedelta(seconds=60)


THRESHOLD_SETTINGS = {
    "stale_after": "HEALTH_WORKER_STALE_AFTER",
    "overdue_after": "HEALTH_OVERDUE_AFTER",
    "schedule_late_after": "HEALTH_SCHEDULE_LATE_AFTER",
}


def default_threshold(key: str) -> datetime.timedelta:
    """A threshold of THRESHOLD_SETTINGS from the settings; ``ValueError`` names a bad setting."""
    setting = THRESHOLD_SETTINGS[key]
    value = getattr(durable_settings, setting)
    if value is None and key == "stale_after":
        return store.worker_stale_after()
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"DURABLE[{setting!r}]: {exc}") from None


def check_health(thresholds: Thresholds, *, skip: Sequence[str] = ()) -> HealthReport:
    """Run the checks in order. Nothing is written. A check that cannot run fails with the
    error; with the database unreachable the others are skipped."""
    checks = [_run("database", _check_database)]
    runners: dict[str, Callable[[], Check]] = {
        "migrations": _check_migrations,
        "workers": lambda: _check_workers(thresholds),
        "overdue": lambda: _check_overdue(thresholds),
        "schedules": lambda: _check_schedules(thresholds),
    }
    for name, runner in runners.items():
        if name in skip:
            checks.append(Check(name, SKIPPED, "skipped (--skip)"))
        elif checks[0].status == FAIL:
            checks.append(Check(name, SKIPPED, "skipped: the database is unreachable"))
        elif name == "schedules" and checks[1].status == FAIL:
            # Their table may not exist yet: the failed migrations check says what to do.
            checks.append(Check(name, SKIPPED, "skipped: migrations are not applied"))
        else:
            checks.append(_run(name, runner))
    return HealthReport(checks)


def _run(name: str, runner: Callable[[], Check]) -> Check:
    try:
        return runner()
    except Exception as exc:  # noqa: BLE001 - a probe reports what went wrong, it does not crash
        message = " ".join(str(exc).split()) or "no message"
        return Check(name, FAIL, f"could not check: {type(exc).__name__}: {message}", {"error": message})


def _check_database() -> Check:
    started = time.monotonic()
    vendor = store.check_database()
    elapsed = time.monotonic() - started
    return Check("database", OK, f"reachable ({vendor}, {format_duration(elapsed)})", {"vendor": vendor})


def _check_migrations() -> Check:
    unapplied, leaves = store.unapplied_migrations()
    data = {"unapplied": unapplied, "latest": leaves}
    if unapplied:
        return Check("migrations", FAIL, f"{len(unapplied)} not applied: {', '.join(unapplied)}", data)
    return Check("migrations", OK, f"applied, up to {', '.join(leaves)}", data)


def _check_workers(thresholds: Thresholds) -> Check:
    now, rows = store.worker_rows(hostname=thresholds.hostname)
    if thresholds.queues:
        rows = [row for row in rows if set(row["queues"]) & set(thresholds.queues)]
    alive = [row for row in rows if now - row["last_seen_at"] <= thresholds.stale_after]
    stale = [row for row in rows if now - row["last_seen_at"] > thresholds.stale_after]

    def described(row: store.WorkerRow) -> str:
        return f"{row['name']} (last seen {format_duration((now - row['last_seen_at']).total_seconds())} ago)"

    scope = ""
    if thresholds.queues:
        scope += f" serving {', '.join(thresholds.queues)}"
    if thresholds.hostname:
        scope += f" on {thresholds.hostname}"
    healthy = len(alive) >= thresholds.min_workers
    detail = f"{len(alive)} alive{scope}" + ("" if healthy else f", {thresholds.min_workers} needed")
    if stale:
        shown = ", ".join(described(row) for row in stale[:3]) + (
            f" and {len(stale) - 3} more" if len(stale) > 3 else ""
        )
        detail += f"; stale (silent for over {format_duration(thresholds.stale_after.total_seconds())}): {shown}"
    data = {
        "alive": [_worker_data(row, now) for row in alive],
        "stale": [_worker_data(row, now) for row in stale],
        "min_workers": thresholds.min_workers,
        "stale_after_seconds": thresholds.stale_after.total_seconds(),
    }
    return Check("workers", OK if healthy else FAIL, detail, data)


def _worker_data(row: store.WorkerRow, now: datetime.datetime) -> dict[str, Any]:
    return {**row, "silent_seconds": round((now - row["last_seen_at"]).total_seconds(), 3)}


def _check_overdue(thresholds: Thresholds) -> Check:
    work = store.overdue_work(overdue_after=thresholds.overdue_after, queues=thresholds.queues)
    now, threshold = work["now"], format_duration(thresholds.overdue_after.total_seconds())
    problems = []
    # The oldest items are read after the counts: one claimed or reaped in between is gone (None).
    if work["overdue"]:
        problem = f"{work['overdue']} item(s) due for over {threshold} and unclaimed"
        if (oldest := work["oldest_due"]) is not None:
            problem += f"; oldest: {_item(oldest)}, due {format_duration((now - oldest['due_at']).total_seconds())} ago"
        problems.append(problem)
    if work["lease_expired"]:
        problem = f"{work['lease_expired']} lease(s) expired over {threshold} ago and not reaped"
        if (oldest := work["oldest_lease_expired"]) is not None:
            problem += (
                f"; oldest: {_item(oldest)}, held by {oldest['lease_owner']}, expired "
                f"{format_duration((now - _since(oldest, 'lease_expires_at')).total_seconds())} ago"
            )
        problems.append(problem)
    data = {
        "overdue": work["overdue"],
        "lease_expired": work["lease_expired"],
        "parked": work["parked"],
        "overdue_after_seconds": thresholds.overdue_after.total_seconds(),
        "oldest_due": _item_data(work["oldest_due"], now, "due_at"),
        "oldest_lease_expired": _item_data(work["oldest_lease_expired"], now, "lease_expires_at"),
    }
    parked = f"; {work['parked']} parked (waiting for a person)" if work["parked"] else ""
    if problems:
        return Check("overdue", FAIL, "; ".join(problems) + parked, data)
    if work["oldest_due"] is None:
        detail = "nothing due"
    else:
        waited = format_duration((now - work["oldest_due"]["due_at"]).total_seconds())
        detail = f"oldest due item waiting {waited}"
    return Check("overdue", OK, f"{detail} (overdue after {threshold}){parked}", data)


def _check_schedules(thresholds: Thresholds) -> Check:
    health = store.schedule_health(late_after=thresholds.schedule_late_after, limit=LATE_SCHEDULES_LISTED)
    now, threshold = health["now"], format_duration(thresholds.schedule_late_after.total_seconds())

    def ago(moment: datetime.datetime) -> float:
        return (now - moment).total_seconds()

    data = {
        "active": health["active"],
        "late": health["late"],
        "schedule_late_after_seconds": thresholds.schedule_late_after.total_seconds(),
        "next_fire_at": health["next_fire_at"],
        "late_schedules": [
            {**row, "late_seconds": round(ago(row["next_fire_at"]), 3)} for row in health["oldest_late"]
        ],
    }
    if health["late"]:
        named = [
            f"{row['schedule_id']!r} (due {format_duration(ago(row['next_fire_at']))} ago)"
            for row in health["oldest_late"]
        ]
        shown = ", ".join(named[:LATE_SCHEDULES_NAMED])
        if health["late"] > LATE_SCHEDULES_NAMED:
            shown += f" and {health['late'] - LATE_SCHEDULES_NAMED} more"
        return Check(
            "schedules", FAIL, f"{health['late']} late (a tick due for over {threshold} not fired): {shown}", data
        )
    if health["next_fire_at"] is None:
        return Check("schedules", OK, f"none active (late after {threshold})", data)
    waiting = ago(health["next_fire_at"])
    upcoming = f"next due {format_duration(waiting)} ago" if waiting >= 0 else f"next in {format_duration(-waiting)}"
    return Check("schedules", OK, f"{health['active']} active, none late; {upcoming} (late after {threshold})", data)


_Since = Literal["due_at", "lease_expires_at"]


def _item(row: store.OverdueItem) -> str:
    name = f" {row['name']}" if row["name"] else ""
    return f"{row['kind']}{name} of workflow {row['workflow_id']!r} (queue {row['queue']})"


def _item_data(row: store.OverdueItem | None, now: datetime.datetime, since: _Since) -> dict[str, Any] | None:
    if row is None:
        return None
    return {**row, "run_id": str(row["run_id"]), "waited_seconds": round((now - _since(row, since)).total_seconds(), 3)}


def _since(row: store.OverdueItem, since: _Since) -> datetime.datetime:
    moment = row[since]
    assert moment is not None, "overdue_work reads expired leases only, which have lease_expires_at"
    return moment
