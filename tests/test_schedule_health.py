"""``durable_healthcheck``'s schedules check: a schedule whose next tick has been due for longer
than ``HEALTH_SCHEDULE_LATE_AFTER`` (``--schedule-late-after``) is late, and makes the probe fail.

A schedule is made late the way it happens: created while the clock stood minutes back (a
``WorkflowEnvironment``), with no worker firing it since. The check runs in-process through
``call_command``; the last test runs it as ``manage.py`` beside a real worker that catches up.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

import django_durable as durable
from django_durable import registry, store
from django_durable.models import Schedule
from django_durable.store import schedules as schedule_store
from django_durable.testing import WorkflowEnvironment
from tests.conftest import REPO, wait_for
from tests.testapp.schedule_workflows import sc_tick

pytestmark = pytest.mark.database

TIMEOUT = 30.0
MINUTE = datetime.timedelta(minutes=1)


def command(*args: str) -> tuple[int, str]:
    """``durable_healthcheck`` in-process: (exit status, stdout), asserting it wrote nothing."""
    out = io.StringIO()
    code = 0
    with CaptureQueriesContext(connection) as queries:
        try:
            call_command("durable_healthcheck", "--min-workers", "0", *args, stdout=out, stderr=io.StringIO())
        except SystemExit as exit:
            code = int(exit.code or 0)
    verbs = {q["sql"].lstrip().split()[0].upper() for q in queries.captured_queries}
    assert not verbs & {"INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER"}, queries.captured_queries
    return code, out.getvalue()


def health(*args: str) -> tuple[int, dict[str, Any]]:
    code, out = command("--json", *args)
    report = json.loads(out)
    assert code == (0 if report["healthy"] else 1), (code, report)
    return code, report["checks"]["schedules"]


def created_ago(schedule_id: str, ago: datetime.timedelta, **options: Any) -> durable.ScheduleHandle:
    """A schedule created ``ago`` back: its first tick has been due since then, unfired."""
    with WorkflowEnvironment(start_time=store.db_now() - ago):
        return durable.create_schedule(schedule_id, sc_tick, args=[schedule_id], **options)


def test_no_schedule_is_healthy(db):
    code, check = health()
    assert (code, check["status"], check["active"], check["late"]) == (0, "ok", 0, 0)
    assert check["detail"] == "none active (late after 1m)"
    assert check["late_schedules"] == [] and check["next_fire_at"] is None


def test_schedules_on_time_are_healthy(db):
    durable.create_schedule("every-hour", sc_tick, args=["h"], every=3600)
    durable.create_schedule("nightly", sc_tick, args=["n"], cron="0 3 * * *", timezone="Europe/Paris")
    durable.create_schedule("paused", sc_tick, args=["p"], every=60, paused=True)
    code, check = health()
    assert (code, check["status"], check["active"], check["late"]) == (0, "ok", 2, 0)
    assert check["detail"].startswith("2 active, none late; next in "), check
    assert check["detail"].endswith(" (late after 1m)")
    next_fire = Schedule.objects.get(schedule_id="every-hour").next_fire_at
    assert datetime.datetime.fromisoformat(check["next_fire_at"]) == next_fire


def test_a_late_schedule_fails_the_check_until_it_fires(db):
    created_ago("reports", 10 * MINUTE, every=60, overlap="allow_all")
    durable.create_schedule("on-time", sc_tick, args=["t"], every=3600)

    code, check = health()
    assert (code, check["status"], check["active"], check["late"]) == (1, "fail", 2, 1)
    [late] = check["late_schedules"]
    assert (late["schedule_id"], late["workflow_name"]) == ("reports", registry.workflow_name(sc_tick))
    assert 9 * 60 <= late["late_seconds"] <= 10 * 60 + TIMEOUT, late
    assert check["detail"].startswith("1 late (a tick due for over 1m not fired): 'reports' (due "), check

    code, out = command()
    lines = out.splitlines()
    assert lines[4].split()[:3] == ["FAIL", "schedules", "1"], lines
    assert lines[-1] == "Unhealthy: schedules."

    # A longer threshold tolerates the lag; --skip leaves the check out.
    assert health("--schedule-late-after", "15m")[0] == 0
    code, report = command("--json", "--skip", "schedules")
    assert code == 0 and json.loads(report)["checks"]["schedules"]["status"] == "skipped"

    # A worker's pass fires the due ticks (within the catch-up window; allow_all starts each one).
    with WorkflowEnvironment() as env:
        env.run_until_idle()
        schedule = Schedule.objects.get(schedule_id="reports")
        due = schedule_store.spec_of(schedule).ticks(schedule.created_at, env.now, limit=100)
    assert len(due) >= 9 and schedule.runs_started == len(due), (due, schedule.runs_started)
    code, check = health()
    assert (code, check["status"], check["late"]) == (0, "ok", 0)


def test_the_setting_sets_the_threshold_and_a_paused_schedule_is_never_late(db, settings):
    handle = created_ago("report", 5 * MINUTE, every=60)
    assert health()[0] == 1
    settings.DURABLE = {**settings.DURABLE, "HEALTH_SCHEDULE_LATE_AFTER": "10m"}
    code, check = health()
    assert (code, check["schedule_late_after_seconds"]) == (0, 600)
    assert health("--schedule-late-after", "90s")[0] == 1  # the option overrides the setting

    settings.DURABLE = {**settings.DURABLE, "HEALTH_SCHEDULE_LATE_AFTER": 60}
    handle.pause(note="maintenance")
    code, check = health()
    assert (code, check["active"], check["detail"]) == (0, 0, "none active (late after 1m)")


def test_names_the_three_longest_late_and_counts_the_rest(db):
    for minutes in (3, 9, 5, 7, 4):
        created_ago(f"late-{minutes}", minutes * MINUTE, every=60)
    code, check = health()
    assert (code, check["late"]) == (1, 5)
    assert [row["schedule_id"] for row in check["late_schedules"]] == ["late-9", "late-7", "late-5", "late-4", "late-3"]
    named = check["detail"].split(": ", 1)[1]
    assert named.startswith("'late-9' (due ") and "'late-7'" in named and "'late-5'" in named, named
    assert "late-4" not in named and named.endswith(" and 2 more"), named


def test_bad_thresholds_exit_2(db, settings):
    with pytest.raises(CommandError, match="--schedule-late-after: 'soon' is not a duration") as error:
        call_command("durable_healthcheck", "--schedule-late-after", "soon", stdout=io.StringIO())
    assert error.value.returncode == 2
    settings.DURABLE = {**settings.DURABLE, "HEALTH_SCHEDULE_LATE_AFTER": "often"}
    with pytest.raises(CommandError, match=r"DURABLE\['HEALTH_SCHEDULE_LATE_AFTER'\]: 'often' is not a duration"):
        call_command("durable_healthcheck", stdout=io.StringIO())
    assert command("--schedule-late-after", "2m")[0] == 0


def probe() -> subprocess.CompletedProcess:
    """``manage.py durable_healthcheck`` on the test database, as a monitor runs it."""
    return subprocess.run(
        [sys.executable, "-m", "django", "durable_healthcheck", "--settings", "tests.settings", "--skip", "workers"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "DURABLE_DB_NAME": str(connection.settings_dict["NAME"])},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.mark.workers
def test_a_worker_catches_up_and_the_probe_turns_healthy(start_worker):
    created_ago("catch-up", 3 * MINUTE, every=60)  # overlap "skip": one run, the other ticks skipped
    late = probe()
    assert late.returncode == 1, late
    assert "FAIL    schedules   1 late (a tick due for over 1m not fired): 'catch-up' (due " in late.stdout, late

    start_worker()

    def caught_up() -> bool:
        schedule = schedule_store.get_schedule("catch-up")
        return schedule.next_fire_at is not None and schedule.next_fire_at > store.db_now()

    wait_for(caught_up, TIMEOUT, what="the worker to fire the missed ticks")
    schedule = schedule_store.get_schedule("catch-up")
    assert schedule.runs_started >= 1 and schedule.runs_started + schedule.ticks_skipped >= 2, schedule.recent_runs
    healthy = probe()
    assert healthy.returncode == 0, healthy
    assert "OK      schedules   1 active, none late; next in " in healthy.stdout, healthy.stdout
