"""Schedules, continued (see test_schedules.py): DURABLE["SCHEDULES"] synced into the database,
a schedule whose last run is pruned, and the workers' firing pass (short transactions, when the
next tick is due, missed ticks counted up to end_at, a schedule that became invalid)."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

import django_durable as durable
from django_durable import store
from django_durable.models import Schedule, WorkflowInstance, WorkflowStatus
from django_durable.schedules.sync import sync_schedules
from django_durable.store import schedules as schedule_store
from django_durable.testing import WorkflowEnvironment
from tests.test_schedules import HOUR, MINUTE, SECOND, T0, at, database_state, minute_id, recorded, row, run_ids
from tests.testapp import schedule_workflows as sw

pytestmark = pytest.mark.database

NIGHTLY = {"workflow": "sc_tick", "args": ["nightly"], "cron": "0 3 * * *", "timezone": "Europe/Paris"}
OFTEN = {"workflow": "sc_tick", "args": ["often"], "every": 300, "overlap": "allow_all", "note": "five"}
YEARLY = {"workflow": "sc_tick", "args": ["yearly"], "cron": "@yearly"}


def declare(**schedules: Any) -> override_settings:
    return override_settings(DURABLE={**settings.DURABLE, "SCHEDULES": schedules})


def outcome(**lists: list[str]) -> dict[str, list[str]]:
    return {key: lists.get(key, []) for key in ("created", "updated", "removed", "unchanged", "conflicts")}


# -- DURABLE["SCHEDULES"] -----------------------------------------------------------------------


def test_sync_creates_the_declared_schedules_and_syncing_again_changes_nothing(db: None) -> None:
    with declare(nightly=NIGHTLY, often=OFTEN):
        assert sync_schedules() == outcome(created=["nightly", "often"])
        state = database_state()
        assert sync_schedules() == outcome(unchanged=["nightly", "often"])
        assert database_state() == state
    nightly, often = row("nightly"), row("often")
    assert (nightly.from_settings, nightly.workflow_name, nightly.cron, nightly.every) == (
        True,
        "sc_tick",
        "0 3 * * *",
        None,
    )
    assert (nightly.timezone, nightly.input, nightly.catchup_window) == (
        "Europe/Paris",
        {"args": ["nightly"], "kwargs": {}},
        HOUR,
    )
    assert (often.every, often.overlap, often.note, often.from_settings) == (300, "allow_all", "five", True)
    assert durable.get_schedule("often").describe().from_settings is True


def test_sync_updates_a_changed_declaration_in_place_from_now_on(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        with declare(nightly=NIGHTLY):
            sync_schedules()
        pk = row("nightly").pk
        env.advance(days=1)  # fires at 03:00 Paris, 02:00Z
        with declare(nightly={**NIGHTLY, "cron": "0 4 * * *", "args": ["later"]}):
            assert sync_schedules() == outcome(updated=["nightly"])
            assert sync_schedules() == outcome(unchanged=["nightly"])
        assert (Schedule.objects.get().pk, row("nightly").cron, row("nightly").runs_started) == (pk, "0 4 * * *", 1)
        assert row("nightly").next_tick_at == at(2030, 1, 2, 3)
        env.advance(days=1)
    assert run_ids("nightly") == ["nightly-20300101T020000Z", "nightly-20300102T030000Z"]
    assert [workflow_id for workflow_id, _, _ in recorded("later")] == ["nightly-20300102T030000Z"]


def test_a_schedule_removed_from_the_setting_is_paused_with_a_note_and_resumes_when_declared_again(
    db: None,
) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        with declare(nightly=NIGHTLY, yearly=YEARLY):
            sync_schedules()
        with declare(yearly=YEARLY):
            assert sync_schedules() == outcome(removed=["nightly"], unchanged=["yearly"])
            assert sync_schedules() == outcome(unchanged=["yearly"])  # paused already: nothing to do
        assert row("nightly").paused
        assert "DURABLE['SCHEDULES']" in row("nightly").note
        env.advance(days=2)
        assert run_ids("nightly") == []
        with declare(nightly=NIGHTLY, yearly=YEARLY):
            assert sync_schedules() == outcome(updated=["nightly"], unchanged=["yearly"])
        assert (row("nightly").paused, row("nightly").note) == (False, "")
        env.advance(days=1)
    # The ticks that fell while it was paused are dropped.
    assert run_ids("nightly") == ["nightly-20300103T020000Z"]


def test_an_operators_pause_of_a_declared_schedule_survives_the_next_sync(db: None) -> None:
    """A worker restart (a deploy, a crash) does not undo a pause made in the admin or the API;
    a setting that names ``paused`` does decide."""
    with declare(nightly=NIGHTLY):
        sync_schedules()
        durable.get_schedule("nightly").pause(note="incident 42")
        assert sync_schedules() == outcome(unchanged=["nightly"])
    assert (row("nightly").paused, row("nightly").note, row("nightly").next_fire_at) == (True, "incident 42", None)
    with declare(nightly={**NIGHTLY, "paused": False}):
        assert sync_schedules() == outcome(updated=["nightly"])
    assert (row("nightly").paused, row("nightly").note) == (False, "incident 42")


def test_sync_leaves_schedules_created_at_run_time_alone(db: None, caplog: pytest.LogCaptureFixture) -> None:
    durable.create_schedule("runtime", sw.sc_tick, args=["runtime"], every=60)
    before = database_state()
    with declare():
        assert sync_schedules() == outcome()
    assert database_state() == before
    with declare(runtime=NIGHTLY), caplog.at_level(logging.WARNING, logger="django_durable.schedules"):
        assert sync_schedules() == outcome(conflicts=["runtime"])
    assert database_state() == before
    assert "'runtime'" in caplog.text and "created at run" in caplog.text


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({**NIGHTLY, "cron": "0 3 * *"}, r"\['broken'\]: cron '0 3 \* \*' has 4 fields"),
        ({**NIGHTLY, "timezone": "Europe/Atlantis"}, r"\['broken'\]: unknown timezone 'Europe/Atlantis'"),
        ({**NIGHTLY, "workflow": "no_such_workflow"}, r"\['broken'\]: .*no_such_workflow"),
        ({**NIGHTLY, "overlap": "never"}, r"\['broken'\]: overlap must be one of"),
        ({**NIGHTLY, "args": [object()]}, r"\['broken'\]: .*arguments of schedule 'broken'"),
        ({**NIGHTLY, "colour": "blue"}, r"\['broken'\] has unknown options \['colour'\]"),
        ({"cron": "0 3 * * *"}, r"\['broken'\] must be a dict with a \"workflow\""),
        ("0 3 * * *", r"\['broken'\] must be a dict with a \"workflow\""),
    ],
)
def test_a_bad_declaration_is_improperly_configured_naming_it_and_nothing_is_synced(
    db: None, declared: object, message: str
) -> None:
    with declare(good=NIGHTLY, broken=declared), pytest.raises(ImproperlyConfigured, match=message):
        sync_schedules()
    assert not Schedule.objects.exists()


def test_schedules_that_are_not_a_dict_are_improperly_configured(db: None) -> None:
    with override_settings(DURABLE={**settings.DURABLE, "SCHEDULES": [NIGHTLY]}):
        with pytest.raises(ImproperlyConfigured, match="must be a dict of schedule id to options"):
            sync_schedules()


# -- pruning -----------------------------------------------------------------------------------


def test_pruning_a_schedules_last_run_leaves_the_schedule_working(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        schedule = durable.create_schedule("pr", sw.sc_tick, args=["pr"], every=60, overlap="buffer_one")
        env.advance(minutes=1)
        assert row("pr").last_run.status == WorkflowStatus.COMPLETED
        assert store.prune_batch(closed_before=env.now + HOUR, batch_size=100)["runs"] == 1
        assert row("pr").last_run_id is None
        assert [run.status for run in schedule.describe().recent_runs] == [None]
        env.advance(minutes=1)
        description = schedule.describe()
    assert run_ids("pr") == [minute_id("pr", 2)]
    assert row("pr").last_run.workflow_id == minute_id("pr", 2)
    assert [(run.workflow_id, run.status) for run in description.recent_runs] == [
        (minute_id("pr", 2), WorkflowStatus.COMPLETED),
        (minute_id("pr", 1), None),
    ]
    assert description.runs_started == 2


# -- the firing pass ------------------------------------------------------------------------------


def test_a_long_catch_up_is_cut_into_short_transactions_and_the_pass_says_more_is_due(db: None) -> None:
    with WorkflowEnvironment(start_time=T0):
        durable.create_schedule("burst", sw.sc_until_released, args=["burst"], every=1)
    with WorkflowEnvironment(start_time=T0 + 250 * SECOND) as env:
        # 250 due ticks: a transaction takes 100 of them; a pass takes the schedule up to `limit` times.
        fired = schedule_store.fire_due_schedules(limit=2)
        assert (fired.processed, fired.next_in) == (2, 0.0)
        assert row("burst").last_tick_at == T0 + 2 * schedule_store.TICKS_PER_TRANSACTION * SECOND
        fired = schedule_store.fire_due_schedules(limit=2)
        assert (fired.processed, fired.next_in) == (1, 1.0)
        env.run_until_idle()
    assert run_ids("burst") == ["burst-20300101T000001Z"]
    assert (row("burst").ticks_skipped, row("burst").ticks_missed) == (249, 0)
    assert row("burst").next_tick_at == T0 + 251 * SECOND


def test_the_pass_says_when_the_next_tick_is_due_after_the_ticks_it_fired(db: None) -> None:
    with WorkflowEnvironment(start_time=T0):
        durable.create_schedule("soon", sw.sc_tick, args=["soon"], every=5)
        durable.create_schedule("later", sw.sc_tick, args=["later"], every=3600)
    with WorkflowEnvironment(start_time=T0 + 5 * SECOND):
        fired = schedule_store.fire_due_schedules(limit=10)
        assert (fired.processed, fired.next_in) == (1, 5.0)
        assert schedule_store.fire_due_schedules(limit=10) == schedule_store.Fired(processed=0, next_in=5.0)


@pytest.mark.parametrize("spec", [{"every": 600}, {"cron": "*/10 * * * *"}], ids=["every", "cron"])
def test_missed_ticks_are_counted_up_to_end_at(db: None, spec: dict[str, Any]) -> None:
    with WorkflowEnvironment(start_time=T0):
        durable.create_schedule(
            "ended", sw.sc_tick, args=["ended"], end_at=T0 + HOUR, catchup_window=10 * MINUTE, **spec
        )
    with WorkflowEnvironment(start_time=T0 + 3 * HOUR) as env:
        env.run_until_idle()
    assert run_ids("ended") == []
    assert (row("ended").ticks_missed, row("ended").next_fire_at) == (6, None)  # 00:10 to 01:00


def test_a_schedule_that_became_invalid_is_paused_with_the_reason_and_the_others_still_fire(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        durable.create_schedule("broken", sw.sc_tick, args=["broken"], cron="0 * * * *", timezone="Europe/Paris")
        durable.create_schedule("fine", sw.sc_tick, args=["fine"], every=3600)
        # As if tzdata had dropped the zone since the schedule was created.
        Schedule.objects.filter(schedule_id="broken").update(timezone="Europe/Atlantis")
        env.advance(hours=2)
    assert run_ids("broken") == []
    assert (row("broken").paused, row("broken").next_fire_at) == (True, None)
    assert "unknown timezone 'Europe/Atlantis'" in row("broken").note
    assert run_ids("fine") == [minute_id("fine", 60), minute_id("fine", 120)]


def test_jitter_delays_each_tick_by_its_own_amount_and_the_run_keeps_the_ticks_id(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        durable.create_schedule("jit", sw.sc_tick, args=["jit"], every=60, jitter=30)
        env.advance(minutes=3, seconds=30)
    runs = WorkflowInstance.objects.filter(workflow_id__startswith="jit-").order_by("pk")
    delays = [run.created_at - (T0 + minute * MINUTE) for minute, run in enumerate(runs, start=1)]
    assert [run.workflow_id for run in runs] == [minute_id("jit", minute) for minute in (1, 2, 3)]
    assert all(datetime.timedelta(0) <= delay < 30 * SECOND for delay in delays)
    assert len(set(delays)) == 3  # a hash of the schedule and the tick: each tick its own


def test_a_schedule_paused_by_a_plain_update_stops_looking_due(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        durable.create_schedule("raw", sw.sc_tick, args=["raw"], every=60)
        env.advance(minutes=1)
        Schedule.objects.filter(schedule_id="raw").update(paused=True)  # a list_editable, a shell
        env.advance(minutes=5)  # without the fix: StepLimitExceeded, the tick due forever
        assert schedule_store.next_fire_at() is None
    assert run_ids("raw") == [minute_id("raw", 1)]


def test_lateness_is_counted_from_a_ticks_jittered_fire_time(db: None) -> None:
    """A jitter longer than the catch-up window does not make the tick count as missed."""
    with WorkflowEnvironment(start_time=T0) as env:
        durable.create_schedule("jittery", sw.sc_tick, args=["jittery"], every=60, jitter=50, catchup_window=10)
        env.advance(minutes=5, seconds=50)
    assert len(run_ids("jittery")) == 5
    assert row("jittery").ticks_missed == 0
