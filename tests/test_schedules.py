"""Schedules against the real database, in virtual time (django_durable.testing): validation at
creation, the runs' ids and ``ctx.schedule``, cron in a zone with DST, epoch-aligned intervals,
the catch-up window, the six overlap policies, and the handle's verbs (pause, trigger, backfill,
update, delete, describe). DURABLE["SCHEDULES"] and pruning: test_schedule_sync.py."""

from __future__ import annotations

import datetime
import re
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import django_durable as durable
from django_durable.exceptions import NotRegistered, SerializationError
from django_durable.models import HistoryEvent, Schedule, WorkflowInstance, WorkflowStatus, WorkItem
from django_durable.testing import WorkflowEnvironment
from tests.testapp import schedule_workflows as sw
from tests.testapp.models import ActivityRun

pytestmark = pytest.mark.database

UTC = datetime.timezone.utc
SECOND = datetime.timedelta(seconds=1)
MINUTE = datetime.timedelta(minutes=1)
HOUR = datetime.timedelta(hours=1)
PARIS = ZoneInfo("Europe/Paris")


def at(*args: int) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


T0 = at(2030, 1, 1)


def run_ids(schedule_id: str) -> list[str]:
    """The workflow ids of the schedule's runs, in the order they were created (one per chain)."""
    ids = WorkflowInstance.objects.filter(workflow_id__startswith=f"{schedule_id}-").order_by("pk")
    return list(dict.fromkeys(ids.values_list("workflow_id", flat=True)))


def minute_id(schedule_id: str, minute: int) -> str:
    """The id of the run for the tick at T0 plus ``minute`` minutes."""
    return f"{schedule_id}-20300101T{minute // 60:02d}{minute % 60:02d}00Z"


def recorded(key: str) -> list[tuple[str, ...]]:
    """(workflow id, tick, reason) of each run that did its side effect, in order."""
    keys = ActivityRun.objects.filter(key__startswith=f"{key}|").order_by("pk").values_list("key", flat=True)
    return [tuple(key.split("|")[1:]) for key in keys]


def status(workflow_id: str) -> str:
    return durable.get_workflow(workflow_id).status()


def release(workflow_id: str) -> None:
    durable.get_workflow(workflow_id).signal("release")


def row(schedule_id: str) -> Schedule:
    return Schedule.objects.get(schedule_id=schedule_id)


def database_state() -> list[Any]:
    """Every schedule's fields and the number of runs, history events and work items."""
    schedules = [{k: v for k, v in vars(s).items() if k != "_state"} for s in Schedule.objects.order_by("pk")]
    return [schedules, WorkflowInstance.objects.count(), HistoryEvent.objects.count(), WorkItem.objects.count()]


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"cron": "0 3 * * *", "every": 60}, durable.InvalidSchedule, "exactly one of cron .* got both"),
        ({}, durable.InvalidSchedule, "exactly one of cron .* got neither"),
        ({"cron": "61 * * * *"}, durable.InvalidSchedule, "invalid cron '61 \\* \\* \\* \\*'"),
        ({"cron": "0 3 * *"}, durable.InvalidSchedule, "has 4 fields"),
        ({"cron": "@sometimes"}, durable.InvalidSchedule, "unknown cron alias"),
        ({"cron": "0 3 * * *", "timezone": "Mars/Olympus_Mons"}, durable.InvalidSchedule, "unknown timezone"),
        ({"every": 0}, durable.InvalidSchedule, "whole seconds, at least 1"),
        ({"every": -60}, durable.InvalidSchedule, "whole seconds, at least 1"),
        ({"every": 0.5}, durable.InvalidSchedule, "whole seconds, at least 1"),
        ({"every": 1.5}, durable.InvalidSchedule, "whole seconds, at least 1"),
        ({"every": datetime.timedelta(milliseconds=1500)}, durable.InvalidSchedule, "a fraction of a second"),
        ({"every": 60, "overlap": "sometimes"}, durable.InvalidSchedule, "overlap must be one of skip, buffer_one"),
        ({"every": 60, "catchup_window": -MINUTE}, durable.InvalidSchedule, "catchup_window must be at least 10"),
        ({"every": 60, "catchup_window": 0}, durable.InvalidSchedule, "catchup_window must be at least 10"),
        ({"every": 60, "catchup_window": 9.5}, durable.InvalidSchedule, "catchup_window must be at least 10"),
        ({"every": 60, "args": [object()]}, SerializationError, "arguments of schedule 'bad'"),
        ({"every": 60, "kwargs": {"when": {1, 2}}}, SerializationError, "keyword arguments of schedule 'bad'"),
        ({"every": 60, "start_at": T0 + HOUR, "end_at": T0}, durable.InvalidSchedule, "must be after start_at"),
        ({"every": 60, "start_at": datetime.datetime(2030, 1, 1)}, durable.InvalidSchedule, "aware datetime"),
        ({"every": 60, "workflow": "no_such_workflow"}, NotRegistered, "no_such_workflow"),
    ],
)
def test_create_schedule_rejects_a_bad_option_and_changes_nothing(
    db: None, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    durable.create_schedule("other", sw.sc_tick, args=["other"], every=60)
    before = database_state()
    workflow = options.pop("workflow", sw.sc_tick)
    with pytest.raises(error, match=message):
        durable.create_schedule("bad", workflow, **{"args": ["bad"], **options})
    assert database_state() == before


def test_a_taken_id_is_schedule_already_exists_409_and_the_schedule_is_unchanged(db: None) -> None:
    durable.create_schedule("dup", sw.sc_tick, args=["dup"], every=60)
    before = database_state()
    with pytest.raises(durable.ScheduleAlreadyExists) as raised:
        durable.create_schedule("dup", sw.sc_until_released, args=["other"], cron="0 3 * * *")
    assert raised.value.status_code == 409
    assert "'dup'" in str(raised.value)
    assert database_state() == before
    assert (row("dup").workflow_name, row("dup").every, row("dup").cron) == ("sc_tick", 60, "")


def test_a_missing_schedule_is_schedule_not_found_404(db: None) -> None:
    with pytest.raises(durable.ScheduleNotFound) as raised:
        durable.get_schedule("nowhere")
    assert raised.value.status_code == 404


# -- ids and ctx.schedule ------------------------------------------------------------------


def test_run_ids_name_the_tick_or_the_trigger_time_and_ctx_schedule_tells_the_run(db: None) -> None:
    with WorkflowEnvironment(start_time=T0 + datetime.timedelta(microseconds=123_456)) as env:
        schedule = durable.create_schedule("ids", sw.sc_tick, args=["ids"], cron="0 3 * * *", timezone="UTC")
        triggered = schedule.trigger()
        assert triggered is not None
        assert triggered.workflow_id == "ids-20300101T000000.123Z"
        assert re.fullmatch(r"ids-\d{8}T\d{6}\.\d{3}Z", triggered.workflow_id)
        assert env.result(triggered) == {
            "schedule_id": "ids",
            "tick": "2030-01-01T00:00:00.123456+00:00",
            "reason": "trigger",
        }
        env.advance(hours=3)
        ticked = durable.get_workflow("ids-20300101T030000Z")
        assert ticked.result(timeout=0) == {
            "schedule_id": "ids",
            "tick": "2030-01-01T03:00:00+00:00",
            "reason": "tick",
        }
        backfilled = schedule.backfill(at(2029, 12, 31), at(2029, 12, 31, 3))
        assert backfilled.started == ["ids-20291231T030000Z"]
        env.run_until_idle()
        assert durable.get_workflow("ids-20291231T030000Z").result(timeout=0)["reason"] == "backfill"
    assert run_ids("ids") == ["ids-20300101T000000.123Z", "ids-20300101T030000Z", "ids-20291231T030000Z"]


# -- cron, intervals and DST ---------------------------------------------------------------


def test_a_nightly_cron_in_paris_fires_thirty_times_in_thirty_virtual_days(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:  # 01:00 in Paris
        schedule = durable.create_schedule(
            "nightly", sw.sc_tick, args=["nightly"], cron="0 3 * * *", timezone="Europe/Paris"
        )
        env.advance(days=30)
        description = schedule.describe()
    # 03:00 CET is 02:00Z, on January 1st to 30th.
    expected = [f"nightly-203001{day:02d}T020000Z" for day in range(1, 31)]
    assert run_ids("nightly") == expected
    assert [workflow_id for workflow_id, _, _ in recorded("nightly")] == expected
    assert {status(workflow_id) for workflow_id in expected} == {WorkflowStatus.COMPLETED}
    assert description.runs_started == 30
    assert (description.ticks_skipped, description.ticks_missed) == (0, 0)
    assert [run.workflow_id for run in description.recent_runs] == expected[::-1][:10]
    assert description.next_fire_times[:2] == [at(2030, 1, 31, 2), at(2030, 2, 1, 2)]


def test_every_is_aligned_to_the_epoch_and_starts_after_creation(db: None) -> None:
    with WorkflowEnvironment(start_time=T0 + datetime.timedelta(seconds=7)) as env:
        durable.create_schedule("five", sw.sc_tick, args=["five"], every=datetime.timedelta(minutes=5))
        durable.create_schedule("exact", sw.sc_tick, args=["exact"], every=300, start_at=T0 + 10 * MINUTE)
        env.advance(minutes=16)
    assert run_ids("five") == [minute_id("five", 5), minute_id("five", 10), minute_id("five", 15)]
    # start_at on an aligned time: that tick is the first.
    assert run_ids("exact") == [minute_id("exact", 10), minute_id("exact", 15)]


def test_created_on_an_aligned_time_the_first_tick_is_the_next_one(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        durable.create_schedule("aligned", sw.sc_tick, args=["aligned"], every=300)
        env.advance(minutes=5)
    assert run_ids("aligned") == [minute_id("aligned", 5)]


def test_start_at_and_end_at_bound_the_ticks(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        schedule = durable.create_schedule(
            "bounded", sw.sc_tick, args=["bounded"], every=300, start_at=T0 + 12 * MINUTE, end_at=T0 + 25 * MINUTE
        )
        assert schedule.describe().next_fire_times == [T0 + 15 * MINUTE, T0 + 20 * MINUTE, T0 + 25 * MINUTE]
        env.advance(hours=2)
        assert schedule.describe().next_fire_times == []
    assert run_ids("bounded") == [minute_id("bounded", 15), minute_id("bounded", 20), minute_id("bounded", 25)]
    assert (row("bounded").next_tick_at, row("bounded").next_fire_at) == (None, None)


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        # 2026-03-29: 02:30 does not exist in Paris; it fires once, at 03:00 CEST (01:00Z).
        (at(2026, 3, 27, 12), ["20260328T013000Z", "20260329T010000Z", "20260330T003000Z", "20260331T003000Z"]),
        # 2026-10-25: 02:30 happens twice; it fires once, in the first pass (02:30 CEST, 00:30Z).
        (at(2026, 10, 23, 12), ["20261024T003000Z", "20261025T003000Z", "20261026T013000Z", "20261027T013000Z"]),
    ],
    ids=["spring-forward", "fall-back"],
)
def test_a_daily_schedule_in_a_dst_hour_fires_once_a_day_across_the_transition(
    db: None, start: datetime.datetime, expected: list[str]
) -> None:
    with WorkflowEnvironment(start_time=start) as env:
        durable.create_schedule("dst", sw.sc_tick, args=["dst"], cron="30 2 * * *", timezone="Europe/Paris")
        env.advance(days=4)
    assert run_ids("dst") == [f"dst-{tick}" for tick in expected]
    assert len(recorded("dst")) == 4


@pytest.mark.parametrize(
    ("start", "local_hours"),
    [
        (at(2026, 3, 28, 21), ["23:00+01:00", "00:00+01:00", "01:00+01:00", "03:00+02:00", "04:00+02:00"]),
        (at(2026, 10, 24, 21), ["00:00+02:00", "01:00+02:00", "02:00+02:00", "02:00+01:00", "03:00+01:00"]),
    ],
    ids=["spring-forward", "fall-back"],
)
def test_an_hourly_schedule_fires_every_elapsed_hour_across_dst(
    db: None, start: datetime.datetime, local_hours: list[str]
) -> None:
    with WorkflowEnvironment(start_time=start) as env:
        durable.create_schedule("hourly", sw.sc_tick, args=["hourly"], cron="0 * * * *", timezone="Europe/Paris")
        env.advance(hours=5)
    ticks = [start + hour * HOUR for hour in range(1, 6)]
    assert run_ids("hourly") == [f"hourly-{tick:%Y%m%dT%H%M%S}Z" for tick in ticks]
    paris = [datetime.datetime.fromisoformat(tick).astimezone(PARIS) for _, tick, _ in recorded("hourly")]
    assert [moment.isoformat(timespec="minutes")[11:] for moment in paris] == local_hours


# -- catch-up ------------------------------------------------------------------------------


def test_ticks_missed_while_no_worker_ran_fire_within_the_catchup_window_and_are_counted_before_it(
    db: None,
) -> None:
    with WorkflowEnvironment(start_time=T0):
        durable.create_schedule(
            "late", sw.sc_tick, args=["late"], every=600, overlap="allow_all", catchup_window=30 * MINUTE
        )
    # No worker for three hours and five minutes: ticks 00:10 to 03:00.
    with WorkflowEnvironment(start_time=T0 + 185 * MINUTE) as env:
        env.run_until_idle()
        # Before 02:35 (now - 30 min): 00:10 ... 02:30 are missed; 02:40, 02:50 and 03:00 fire.
        assert run_ids("late") == [minute_id("late", minute) for minute in (160, 170, 180)]
        assert (row("late").ticks_missed, row("late").runs_started) == (15, 3)
        env.advance(minutes=10)
        env.run_until_idle()
    assert run_ids("late")[3:] == [minute_id("late", 190)]
    assert len(recorded("late")) == 4  # each once
    assert row("late").ticks_missed == 15


def test_catch_up_ticks_obey_the_overlap_policy_and_the_default_window_is_an_hour(db: None) -> None:
    with WorkflowEnvironment(start_time=T0):
        durable.create_schedule("skipper", sw.sc_tick, args=["skipper"], every=600)
        assert row("skipper").catchup_window == HOUR
    with WorkflowEnvironment(start_time=T0 + 185 * MINUTE) as env:
        env.run_until_idle()
    # 00:10 ... 02:00 are older than an hour; 02:10 starts a run, the five after it fall while it is open.
    assert run_ids("skipper") == [minute_id("skipper", 130)]
    assert (row("skipper").ticks_missed, row("skipper").ticks_skipped) == (12, 5)


def test_the_shortest_catchup_window_fires_only_a_tick_that_is_due_now(db: None) -> None:
    with WorkflowEnvironment(start_time=T0):
        durable.create_schedule("strict", sw.sc_tick, args=["strict"], every=600, catchup_window=10)
    with WorkflowEnvironment(start_time=T0 + 30 * MINUTE) as env:
        env.run_until_idle()
        env.advance(minutes=10)
    assert run_ids("strict") == [minute_id("strict", 30), minute_id("strict", 40)]
    assert row("strict").ticks_missed == 2


# -- overlap policies ----------------------------------------------------------------------


def overlapping(env: WorkflowEnvironment, policy: str, workflow: Any = sw.sc_until_released) -> str:
    """A schedule every minute under ``policy`` whose first run (tick 00:01) is open; its id."""
    durable.create_schedule("ov", workflow, args=["ov"], every=60, overlap=policy)
    env.advance(minutes=1)
    assert run_ids("ov") == [minute_id("ov", 1)]
    return minute_id("ov", 1)


def test_skip_drops_and_counts_the_ticks_that_fall_while_the_previous_run_is_open(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        first = overlapping(env, "skip")
        env.advance(minutes=2)
        assert run_ids("ov") == [first]
        assert row("ov").ticks_skipped == 2
        release(first)
        env.run_until_idle()
        assert status(first) == WorkflowStatus.COMPLETED
        env.advance(minutes=1)
    assert run_ids("ov") == [first, minute_id("ov", 4)]
    assert row("ov").ticks_skipped == 2


def test_buffer_one_keeps_one_tick_waiting_and_starts_it_when_the_previous_run_closes(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        first = overlapping(env, "buffer_one")
        env.advance(minutes=2)  # 00:02 waits, 00:03 is skipped
        assert run_ids("ov") == [first]
        assert (row("ov").buffered_count, row("ov").ticks_skipped) == (1, 1)
        release(first)
        env.run_until_idle()
        assert run_ids("ov") == [first, minute_id("ov", 2)]
        assert status(minute_id("ov", 2)) == WorkflowStatus.RUNNING
        assert row("ov").buffered_count == 0
        env.advance(minutes=1)  # 00:04 waits for 00:02's run
        assert (run_ids("ov")[2:], row("ov").buffered_count) == ([], 1)
    assert recorded("ov")[1] == (minute_id("ov", 2), (T0 + 2 * MINUTE).isoformat(), "tick")


def test_buffer_all_starts_every_waiting_tick_in_turn(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        first = overlapping(env, "buffer_all")
        env.advance(minutes=2)
        assert (run_ids("ov"), row("ov").buffered_count) == ([first], 2)
        release(first)
        env.run_until_idle()
        assert run_ids("ov") == [first, minute_id("ov", 2)]
        release(minute_id("ov", 2))
        env.run_until_idle()
        assert run_ids("ov") == [first, minute_id("ov", 2), minute_id("ov", 3)]
    assert (row("ov").buffered_count, row("ov").ticks_skipped) == (0, 0)


def test_allow_all_starts_every_tick_alongside(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        overlapping(env, "allow_all")
        env.advance(minutes=2)
    ids = [minute_id("ov", minute) for minute in (1, 2, 3)]
    assert run_ids("ov") == ids
    assert [status(workflow_id) for workflow_id in ids] == [WorkflowStatus.RUNNING] * 3


def test_cancel_other_asks_the_previous_run_to_cancel_and_starts_the_tick_once_it_has_closed(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        first = overlapping(env, "cancel_other")
        durable.get_workflow(first).suspend()  # it cannot act on the cancel request yet
        env.advance(minutes=1)
        assert WorkflowInstance.objects.get(workflow_id=first).cancel_requested_at == T0 + 2 * MINUTE
        assert (run_ids("ov"), row("ov").buffered_count) == ([first], 1)
        env.advance(minutes=1)  # 00:03 replaces the waiting 00:02
        assert (run_ids("ov"), row("ov").buffered_count, row("ov").ticks_skipped) == ([first], 1, 1)
        durable.get_workflow(first).resume()
        env.run_until_idle()
        assert status(first) == WorkflowStatus.CANCELED
        assert run_ids("ov") == [first, minute_id("ov", 3)]
        assert status(minute_id("ov", 3)) == WorkflowStatus.RUNNING


def test_terminate_other_terminates_the_previous_run_and_starts_the_tick_at_once(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        first = overlapping(env, "terminate_other")
        durable.get_workflow(first).suspend()  # terminating does not wait for the run
        env.advance(minutes=1)
        assert status(first) == WorkflowStatus.TERMINATED
        assert "schedule 'ov'" in WorkflowInstance.objects.get(workflow_id=first).error["message"]
        assert run_ids("ov") == [first, minute_id("ov", 2)]
        assert status(minute_id("ov", 2)) == WorkflowStatus.RUNNING
    assert [workflow_id for workflow_id, _, _ in recorded("ov")] == [first, minute_id("ov", 2)]


@pytest.mark.parametrize("policy", ["skip", "terminate_other"])
def test_the_previous_run_is_followed_through_continue_as_new(db: None, policy: str) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        first = overlapping(env, policy, sw.sc_continued)
        chain = list(WorkflowInstance.objects.filter(workflow_id=first).order_by("pk"))
        assert [run.status for run in chain] == [WorkflowStatus.CONTINUED_AS_NEW, WorkflowStatus.RUNNING]
        env.advance(minutes=1)
        if policy == "skip":
            assert run_ids("ov") == [first]
            assert row("ov").ticks_skipped == 1
            assert row("ov").last_run_id == chain[1].pk
        else:
            assert WorkflowInstance.objects.get(pk=chain[1].pk).status == WorkflowStatus.TERMINATED
            assert run_ids("ov") == [first, minute_id("ov", 2)]


# -- pause, trigger -------------------------------------------------------------------------


def test_ticks_that_fall_while_paused_are_dropped_not_fired_on_unpause(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        schedule = durable.create_schedule("p", sw.sc_tick, args=["p"], every=60)
        env.advance(minutes=1)
        schedule.pause(note="maintenance")
        description = schedule.describe()
        assert (description.paused, description.note, description.next_fire_times) == (True, "maintenance", [])
        env.advance(minutes=5)
        assert run_ids("p") == [minute_id("p", 1)]
        schedule.unpause()
        env.run_until_idle()
        assert run_ids("p") == [minute_id("p", 1)]
        assert schedule.describe().next_fire_times[0] == T0 + 7 * MINUTE
        env.advance(minutes=1)
    assert run_ids("p") == [minute_id("p", 1), minute_id("p", 7)]
    assert (row("p").ticks_missed, row("p").ticks_skipped, row("p").note) == (0, 0, "maintenance")


def test_unpausing_a_schedule_that_is_not_paused_or_changing_its_note_drops_no_due_tick(db: None) -> None:
    with WorkflowEnvironment(start_time=T0):
        schedule = durable.create_schedule("up", sw.sc_tick, args=["up"], every=60)
    with WorkflowEnvironment(start_time=T0 + 90 * SECOND) as env:
        schedule.unpause()  # the 00:01 tick is due and no worker has fired it yet
        schedule.update(note="still here", jitter=0)
        env.run_until_idle()
    assert run_ids("up") == [minute_id("up", 1)]


@pytest.mark.parametrize("policy", ["skip", "buffer_one", "allow_all"])
def test_trigger_starts_a_run_while_paused_under_the_overlap_policy(db: None, policy: str) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        schedule = durable.create_schedule(
            "tr", sw.sc_until_released, args=["tr"], every=60, paused=True, overlap=policy
        )
        first = schedule.trigger()
        assert first is not None and first.workflow_id == "tr-20300101T000000.000Z"
        env.advance(seconds=1.5)
        second = schedule.trigger()
        env.advance(minutes=5)  # paused: no tick fires
        if policy == "allow_all":
            assert second is not None and second.workflow_id == "tr-20300101T000001.500Z"
            assert run_ids("tr") == [first.workflow_id, second.workflow_id]
        else:
            assert second is None
            assert run_ids("tr") == [first.workflow_id]
            assert row("tr").ticks_skipped == (1 if policy == "skip" else 0)
            release(first.workflow_id)
            env.run_until_idle()
            expected = [first.workflow_id] + (["tr-20300101T000001.500Z"] if policy == "buffer_one" else [])
            assert run_ids("tr") == expected
    assert [reason for _, _, reason in recorded("tr")] == ["trigger"] * len(run_ids("tr"))


def test_triggers_in_the_same_millisecond_each_start_a_run(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        schedule = durable.create_schedule("twice", sw.sc_tick, args=["twice"], every=3600, overlap="allow_all")
        handles = [schedule.trigger(), schedule.trigger()]
        env.run_until_idle()
    assert [handle.workflow_id for handle in handles if handle] == [
        "twice-20300101T000000.000Z",
        "twice-20300101T000000.001Z",
    ]
    assert len(recorded("twice")) == 2


# -- backfill --------------------------------------------------------------------------------


def test_backfill_starts_the_ticks_with_no_run_yet_and_never_a_tick_twice(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        schedule = durable.create_schedule("bf", sw.sc_tick, args=["bf"], every=3600, overlap="allow_all")
        env.advance(hours=3)  # 01:00, 02:00, 03:00 fire
        first = schedule.backfill(T0 - 5 * HOUR, T0 + 3 * HOUR)
        assert first.started == [f"bf-20291231T{hour}0000Z" for hour in range(19, 24)] + ["bf-20300101T000000Z"]
        assert (first.already_run, first.buffered, first.skipped) == (3, 0, 0)
        again = schedule.backfill(T0 - 5 * HOUR, T0 + 3 * HOUR)
        assert (again.started, again.already_run) == ([], 9)
        fired = schedule.backfill(T0 + HOUR, T0 + 3 * HOUR)
        assert (fired.started, fired.already_run) == ([], 3)
        # Only the past: ticks after now are left to the schedule.
        assert schedule.backfill(T0 + 3 * HOUR, T0 + 10 * HOUR).started == []
        env.advance(hours=1)
    assert len(run_ids("bf")) == 10
    workflow_ids = [workflow_id for workflow_id, _, _ in recorded("bf")]
    assert sorted(workflow_ids) == sorted(set(workflow_ids)) == sorted(run_ids("bf"))
    assert row("bf").runs_started == 10


def test_a_backfilled_tick_that_comes_due_later_is_not_fired_again(db: None) -> None:
    with WorkflowEnvironment(start_time=T0):
        schedule = durable.create_schedule("bfd", sw.sc_tick, args=["bfd"], every=3600, overlap="allow_all")
    with WorkflowEnvironment(start_time=T0 + 150 * MINUTE) as env:  # 01:00 and 02:00 are due, not fired
        backfilled = schedule.backfill(T0 + HOUR, T0 + 3 * HOUR)
        assert backfilled.started == ["bfd-20300101T010000Z", "bfd-20300101T020000Z"]
        env.advance(hours=1)
    assert run_ids("bfd") == ["bfd-20300101T010000Z", "bfd-20300101T020000Z", "bfd-20300101T030000Z"]
    assert len(recorded("bfd")) == 3
    assert row("bfd").runs_started == 3


@pytest.mark.parametrize(
    ("policy", "started", "buffered", "skipped"), [("skip", 1, 0, 2), ("buffer_all", 1, 2, 0), ("allow_all", 3, 0, 0)]
)
def test_backfill_obeys_the_overlap_policy(db: None, policy: str, started: int, buffered: int, skipped: int) -> None:
    with WorkflowEnvironment(start_time=T0 + 10 * MINUTE) as env:
        schedule = durable.create_schedule("bfo", sw.sc_until_released, args=["bfo"], every=60, overlap=policy)
        result = schedule.backfill(T0, T0 + 2 * MINUTE)  # three ticks, oldest first
        assert (len(result.started), result.buffered, result.skipped) == (started, buffered, skipped)
        assert result.started[0] == minute_id("bfo", 0)
        if policy == "buffer_all":
            release(minute_id("bfo", 0))
            env.run_until_idle()
            assert run_ids("bfo") == [minute_id("bfo", 0), minute_id("bfo", 1)]
            # A waiting tick counts as run: backfilling it again starts nothing.
            assert schedule.backfill(T0, T0 + 2 * MINUTE).already_run == 3


def test_backfill_refuses_more_than_a_thousand_ticks_a_reversed_interval_and_naive_times(db: None) -> None:
    with WorkflowEnvironment(start_time=T0 + 2 * datetime.timedelta(days=1)):
        schedule = durable.create_schedule("bfr", sw.sc_tick, args=["bfr"], every=60)
        before = database_state()
        with pytest.raises(ValueError, match="more than 1000 ticks"):
            schedule.backfill(T0, T0 + 1000 * MINUTE)  # 1001 ticks
        with pytest.raises(ValueError, match="before its start"):
            schedule.backfill(T0 + MINUTE, T0)
        with pytest.raises(ValueError, match="timezone-aware"):
            schedule.backfill(datetime.datetime(2030, 1, 1), T0 + MINUTE)
        assert database_state() == before
        result = schedule.backfill(T0, T0 + 999 * MINUTE)  # 1000 ticks: the first starts, the others skip
        assert (len(result.started), result.skipped) == (1, 999)


# -- update, delete, describe ------------------------------------------------------------------


def test_update_changes_the_spec_from_now_on(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        schedule = durable.create_schedule("u", sw.sc_tick, args=["u"], every=60)
        env.advance(seconds=90)
        schedule.update(every=300)
        assert schedule.describe().next_fire_times[:2] == [T0 + 5 * MINUTE, T0 + 10 * MINUTE]
        env.advance(minutes=9)
        assert run_ids("u") == [minute_id("u", 1), minute_id("u", 5), minute_id("u", 10)]
        # cron replaces every (and the other way round) without naming the other None.
        schedule.update(cron="30 * * * *", args=["u2"])
        assert (row("u").cron, row("u").every, row("u").input["args"]) == ("30 * * * *", None, ["u2"])
        env.advance(minutes=30)
        with pytest.raises(durable.InvalidSchedule):
            schedule.update(cron="0 3 * * *", every=60)
        with pytest.raises(TypeError, match="unknown options"):
            schedule.update(color="blue")
        assert row("u").cron == "30 * * * *"
    assert run_ids("u")[3:] == [minute_id("u", 30)]
    assert recorded("u2") == [(minute_id("u", 30), (T0 + 30 * MINUTE).isoformat(), "tick")]


def test_delete_removes_the_schedule_and_leaves_its_runs_running(db: None) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        schedule = durable.create_schedule("del", sw.sc_until_released, args=["del"], every=60)
        env.advance(minutes=1)
        schedule.delete()
        with pytest.raises(durable.ScheduleNotFound):
            durable.get_schedule("del")
        with pytest.raises(durable.ScheduleNotFound):
            schedule.delete()
        env.advance(minutes=5)
        assert run_ids("del") == [minute_id("del", 1)]
        assert status(minute_id("del", 1)) == WorkflowStatus.RUNNING
        release(minute_id("del", 1))
        env.run_until_idle()
    assert status(minute_id("del", 1)) == WorkflowStatus.COMPLETED


def test_describe_shows_the_spec_the_next_ten_fire_times_the_recent_runs_with_status_and_the_counters(
    db: None,
) -> None:
    with WorkflowEnvironment(start_time=T0) as env:
        schedule = durable.create_schedule(
            "desc", sw.sc_until_released, args=["desc"], every=60, overlap="allow_all", note="hello"
        )
        env.advance(minutes=3)
        release(minute_id("desc", 1))
        env.run_until_idle()
        description = schedule.describe()
    assert description.spec.every == 60 and description.spec.cron is None
    assert (description.workflow_name, description.args, description.overlap) == (
        "sc_until_released",
        ["desc"],
        "allow_all",
    )
    assert (description.paused, description.note, description.from_settings) == (False, "hello", False)
    assert description.next_fire_times == [T0 + minute * MINUTE for minute in range(4, 14)]
    assert [(run.workflow_id, run.status, run.reason) for run in description.recent_runs] == [
        (minute_id("desc", 3), WorkflowStatus.RUNNING, "tick"),
        (minute_id("desc", 2), WorkflowStatus.RUNNING, "tick"),
        (minute_id("desc", 1), WorkflowStatus.COMPLETED, "tick"),
    ]
    assert [run.tick for run in description.recent_runs] == [T0 + 3 * MINUTE, T0 + 2 * MINUTE, T0 + MINUTE]
    assert (description.runs_started, description.ticks_skipped, description.ticks_missed) == (3, 0, 0)
    assert (description.buffered, description.created_at) == (0, T0)


def test_update_keeps_the_stored_input_as_it_is(db):
    """update() of another option does not encode the stored (already encoded) arguments again."""
    schedule = durable.create_schedule(
        "keeps-input", "sc_tick", args=[{"__dict__": "looks like a tag"}], kwargs={}, every=60
    )
    stored = Schedule.objects.get(schedule_id="keeps-input").input
    schedule.update(note="once")
    schedule.update(note="twice")
    assert Schedule.objects.get(schedule_id="keeps-input").input == stored
    schedule.update(args=["new"])
    assert Schedule.objects.get(schedule_id="keeps-input").input == {"args": ["new"], "kwargs": stored["kwargs"]}
