"""Schedules fired by real ``durable_worker`` processes: several workers on one schedule, a
worker killed in the middle of firing, workers stopped past the catch-up window and within
it, the six overlap policies, DST under the store's test clock, and pause, trigger,
backfill, update and delete while workers run.

Schedules tick every 1 or 2 seconds (tests.settings' POLL_INTERVAL is 0.05 s). Every wait
awaits an event (a row, a log line, a process exit, the database clock passing a moment)
with a generous upper bound; nothing sleeps a fixed time. Workflows:
tests/testapp/schedule_workflows.py.
"""

from __future__ import annotations

import collections
import datetime
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.db import connection

import django_durable as durable
from django_durable import store
from django_durable.models import OPEN_STATUSES, Schedule, WorkflowInstance, WorkflowStatus
from django_durable.schedules.spec import ScheduleSpec, tick_workflow_id
from django_durable.store import db_now
from tests.conftest import REPO, WorkerProcess, has_row_locks, wait_for
from tests.faults.kit import assert_no_trouble, stop, wait_ready, wait_stopped
from tests.testapp.models import ActivityRun
from tests.testapp.schedule_workflows import sc_tick, sc_until_released

pytestmark = pytest.mark.workers

UPPER = 60.0  # an upper bound on any single wait, never an expected duration
# A lease a loaded machine cannot starve the renewer of (the suite's is 2 s): an activity that
# runs twice here must be a schedule's doing, not a lease lost under load.
PATIENT = {"DURABLE_TEST_LEASE_SECONDS": "20"}
UTC = datetime.timezone.utc
SECOND = datetime.timedelta(seconds=1)
TICK_FORMAT = "%Y%m%dT%H%M%SZ"


# -- helpers ----------------------------------------------------------------------


def tick_of(schedule_id: str, workflow_id: str) -> datetime.datetime | None:
    """The tick in a run's id, or None for a triggered run (its id has milliseconds)."""
    try:
        return datetime.datetime.strptime(workflow_id[len(schedule_id) + 1 :], TICK_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def runs_of(schedule_id: str) -> list[WorkflowInstance]:
    """Every run the schedule started (ids ``<schedule id>-<UTC time>``), oldest tick first.
    Schedule ids in one test are never a prefix of one another followed by "-"."""
    return list(WorkflowInstance.objects.filter(workflow_id__startswith=f"{schedule_id}-").order_by("workflow_id"))


def tick_runs(schedule_id: str) -> dict[datetime.datetime, list[WorkflowInstance]]:
    """The schedule's runs for ticks (not triggered ones), by tick."""
    found: dict[datetime.datetime, list[WorkflowInstance]] = collections.defaultdict(list)
    for run in runs_of(schedule_id):
        tick = tick_of(schedule_id, run.workflow_id)
        if tick is not None:
            found[tick].append(run)
    return dict(sorted(found.items()))


def recorded(key: str) -> list[tuple[str, str, str]]:
    """What the runs started under ``key`` recorded (sc_record): (workflow id, tick, reason), in order."""
    rows = ActivityRun.objects.filter(key__startswith=f"{key}|").order_by("id").values_list("key", flat=True)
    return [tuple(row.split("|")[1:]) for row in rows]  # type: ignore[misc]


def the_schedule(schedule_id: str) -> Schedule:
    return Schedule.objects.get(schedule_id=schedule_id)


def closed(schedule_id: str) -> bool:
    return not WorkflowInstance.objects.filter(
        workflow_id__startswith=f"{schedule_id}-", status__in=OPEN_STATUSES
    ).exists()


def wait_ticks(schedule_id: str, count: int, after: datetime.datetime | None = None) -> list[datetime.datetime]:
    """Wait until at least ``count`` ticks (later than ``after``) have a run; all the ticks with a run."""
    wait_for(
        lambda: sum(1 for tick in tick_runs(schedule_id) if after is None or tick > after) >= count,
        timeout=UPPER,
        what=f"{count} runs of schedule {schedule_id} after {after}",
    )
    return list(tick_runs(schedule_id))


def wait_clock(moment: datetime.datetime) -> None:
    """Wait until the database's clock has passed ``moment`` (time passing is the event here)."""
    wait_for(lambda: db_now() > moment, timeout=UPPER, what=f"the database clock to pass {moment}")


def fired(worker: WorkerProcess, schedule_id: str) -> list[str]:
    """The run ids the worker's log says it started for the schedule (``schedule_fired`` lines)."""
    needle = f"schedule_fired schedule_id={schedule_id} "
    return [line.rsplit("workflow_id=", 1)[1].strip() for line in worker.log().splitlines() if needle in line]


def assert_each_tick_once(schedule_id: str, key: str) -> list[datetime.datetime]:
    """Every second from the first tick with a run to the last has exactly one run, which
    recorded its tick once and, if closed, completed. The ticks."""
    by_tick = tick_runs(schedule_id)
    ticks = list(by_tick)
    assert ticks, f"no run of schedule {schedule_id}"
    doubled = {tick: [run.run_id for run in runs] for tick, runs in by_tick.items() if len(runs) > 1}
    assert not doubled, f"ticks fired twice: {doubled}"
    expected = [ticks[0] + i * SECOND for i in range(len(ticks))]
    assert ticks == expected, f"missing ticks: {sorted(set(expected) - set(ticks))}"
    ids = [tick_workflow_id(schedule_id, tick) for tick in ticks]
    assert sorted(workflow_id for workflow_id, _, reason in recorded(key) if reason == "tick") == ids
    for (run,) in by_tick.values():
        assert run.status in (*OPEN_STATUSES, WorkflowStatus.COMPLETED), (run.workflow_id, run.status)
    return ticks


def started(workflow_id: str) -> bool:
    return WorkflowInstance.objects.filter(workflow_id=workflow_id).exists()


def release(workflow_id: str) -> None:
    durable.get_workflow(workflow_id).signal("release")


def whole_second_after(moment: datetime.datetime, seconds: int = 1) -> datetime.datetime:
    """The first whole multiple of ``seconds`` since the epoch after ``moment`` (an ``every`` tick)."""
    return ScheduleSpec.build(every=seconds, timezone="UTC").next_tick(moment)  # type: ignore[return-value]


# -- several workers, one schedule ------------------------------------------------------


def test_three_then_two_workers_fire_each_tick_of_one_schedule_exactly_once(start_worker):
    """Three workers race for every tick of an every=1 schedule, then one is stopped and two
    go on: every tick from the schedule's first has exactly one run, none missing."""
    workers = [start_worker(env=PATIENT) for _ in range(3)]
    wait_ready(*workers)
    durable.create_schedule("race", sc_tick, args=["race"], every=1, overlap="allow_all")
    created_at = the_schedule("race").created_at

    three = wait_ticks("race", 4)
    stop(workers[0])
    wait_ticks("race", 4, after=three[-1])
    durable.get_schedule("race").pause()  # waits for a firing in progress; none after it
    wait_for(lambda: closed("race"), timeout=UPPER, what="the runs to complete")

    ticks = assert_each_tick_once("race", "race")
    assert ticks[0] == whole_second_after(created_at)  # the first tick after creation, none lost
    assert len(ticks) >= 8
    schedule = the_schedule("race")
    assert (schedule.runs_started, schedule.ticks_skipped, schedule.ticks_missed) == (len(ticks), 0, 0)
    stop(*workers[1:])
    # Each run was logged once, by the worker whose transaction created it.
    by_worker = [fired(worker, "race") for worker in workers]
    assert sorted(sum(by_worker, [])) == [tick_workflow_id("race", tick) for tick in ticks]
    assert_no_trouble(*workers)


def test_a_worker_killed_in_the_middle_of_firing_a_tick_loses_nothing(start_worker):
    """A worker stops itself inside the firing transaction (the tick's run created, not
    committed) and is SIGKILLed there while another worker runs: the tick fires once, by
    the other worker, and every later tick too."""
    durable.create_schedule("kill", sc_tick, args=["kill"], every=1, overlap="allow_all")
    doomed = start_worker(env={"DURABLE_CRASH_POINTS": "before_schedule_commit=stop"})
    wait_stopped(doomed, "before_schedule_commit")
    tick = the_schedule("kill").next_tick_at  # the tick it was firing: not moved on
    assert tick is not None and runs_of("kill") == []  # its run is not committed

    survivor = start_worker(env=PATIENT)
    if has_row_locks():
        wait_ready(survivor)  # it skips the locked row; on SQLite it waits for the write lock
    doomed.kill()
    assert doomed.wait(UPPER) == -signal.SIGKILL

    wait_ticks("kill", 3, after=tick)
    durable.get_schedule("kill").pause()
    wait_for(lambda: closed("kill"), timeout=UPPER, what="the runs to complete")
    ticks = assert_each_tick_once("kill", "kill")
    assert ticks[0] == tick
    stop(survivor)
    assert fired(doomed, "kill") == []
    assert fired(survivor, "kill") == [tick_workflow_id("kill", t) for t in ticks]
    assert_no_trouble(survivor)


# -- every worker stopped: the catch-up window -------------------------------------------


def test_workers_stopped_longer_than_the_catchup_window_miss_the_old_ticks_only(start_worker):
    """Two schedules, catch-up windows of 10 s (the shortest allowed) and 60 s, and all workers
    stopped for 14 s: the first counts the ticks older than 10 s at restart as missed and fires the others;
    the second fires every tick it missed, once."""
    durable.create_schedule("short", sc_tick, args=["short"], every=1, overlap="allow_all", catchup_window=10)
    durable.create_schedule("long", sc_tick, args=["long"], every=1, overlap="allow_all", catchup_window=60)
    workers = [start_worker(env=PATIENT), start_worker(env=PATIENT)]
    wait_ticks("short", 2)
    wait_ticks("long", 2)
    stop(*workers)
    stopped_at = db_now()
    before = {schedule_id: list(tick_runs(schedule_id)) for schedule_id in ("short", "long")}
    # (Workers slow to start may have missed the first ticks of the 10 s window already.)
    missed_before = the_schedule("short").ticks_missed

    wait_clock(stopped_at + 14 * SECOND)
    restarted_at = db_now()
    workers = [start_worker(env=PATIENT), start_worker(env=PATIENT)]
    for schedule_id in ("short", "long"):
        wait_ticks(schedule_id, 1, after=restarted_at + SECOND)  # fired live, after the catch-up
        durable.get_schedule(schedule_id).pause()
    wait_for(lambda: closed("short") and closed("long"), timeout=UPPER, what="the runs to complete")

    # Within the window: every tick ran once, those of the stop late.
    ticks = assert_each_tick_once("long", "long")
    assert ticks[: len(before["long"])] == before["long"]
    late = [tick for tick, (run,) in tick_runs("long").items() if run.created_at - tick > 2 * SECOND]
    assert len(late) >= 3, late
    assert the_schedule("long").ticks_missed == 0

    # Past the window: a gap of missed ticks, counted, then the ticks of the last 10 s, fired at restart.
    by_tick = tick_runs("short")
    last_before = before["short"][-1]
    after = [tick for tick in by_tick if tick > last_before]
    resumed = after[0]
    assert list(by_tick)[: len(before["short"])] == before["short"]
    assert after == [resumed + i * SECOND for i in range(len(after))]
    gap = int((resumed - last_before) / SECOND) - 1
    assert gap >= 2, (last_before, resumed)
    schedule = the_schedule("short")
    assert schedule.ticks_missed - missed_before == gap
    assert not WorkflowInstance.objects.filter(
        workflow_id__in=[tick_workflow_id("short", last_before + i * SECOND) for i in range(1, gap + 1)]
    ).exists()
    # One transaction at restart: the ticks before its cutoff (now - 10 s) missed, those after fired.
    (caught_up,) = by_tick[resumed]
    assert caught_up.created_at - resumed <= 10 * SECOND < caught_up.created_at - (resumed - SECOND)
    in_window = [tick for tick in after if by_tick[tick][0].created_at == caught_up.created_at]
    assert len(in_window) >= 2, in_window
    assert sorted(wid for wid, _, _ in recorded("short")) == [tick_workflow_id("short", t) for t in by_tick]
    stop(*workers)
    assert_no_trouble(*workers)


# -- the overlap policies --------------------------------------------------------------

POLICIES = ("skip", "buffer_one", "buffer_all", "allow_all", "cancel_other", "terminate_other")


def test_each_overlap_policy_with_real_workers(start_worker):
    """Six schedules, one per policy, tick four times (start_at..end_at) while their first
    run waits for "release"; then the open runs are released one by one."""
    workers = [start_worker(env=PATIENT), start_worker(env=PATIENT)]
    wait_ready(*workers)
    first = whole_second_after(db_now() + 2 * SECOND)  # after the schedules' creation
    ticks = [first + i * SECOND for i in range(4)]
    for policy in POLICIES:
        durable.create_schedule(
            policy,
            sc_until_released,
            args=[policy],
            every=1,
            overlap=policy,
            start_at=first,
            end_at=ticks[-1],
        )
    assert {the_schedule(policy).next_tick_at for policy in POLICIES} == {first}, "created too late"
    ids = {policy: [tick_workflow_id(policy, tick) for tick in ticks] for policy in POLICIES}

    def settled(policy: str) -> bool:
        # Every tick processed (the schedule ended), and no buffered tick left to start.
        schedule = the_schedule(policy)
        return schedule.next_tick_at is None and (policy != "cancel_other" or schedule.buffered_count == 0)

    wait_for(lambda: all(settled(policy) for policy in POLICIES), timeout=UPPER, what="every tick processed")

    def state(policy: str) -> dict[str, str]:
        return {run.workflow_id: run.status for run in runs_of(policy)}

    def counters(policy: str) -> tuple[int, int, list[str]]:
        schedule = the_schedule(policy)
        return schedule.runs_started, schedule.ticks_skipped, [entry["workflow_id"] for entry in schedule.buffered]

    def t0(policy: str) -> str:
        return ids[policy][0]

    def t1(policy: str) -> str:
        return ids[policy][1]

    def t3(policy: str) -> str:
        return ids[policy][3]

    open_ = (WorkflowStatus.PENDING, WorkflowStatus.RUNNING)
    assert set(state("allow_all")) == set(ids["allow_all"])
    assert all(status in open_ for status in state("allow_all").values())
    assert counters("allow_all") == (4, 0, [])
    assert set(state("skip")) == {t0("skip")} and counters("skip") == (1, 3, [])
    assert set(state("buffer_one")) == {t0("buffer_one")} and counters("buffer_one") == (1, 2, [t1("buffer_one")])
    assert set(state("buffer_all")) == {t0("buffer_all")}
    assert counters("buffer_all") == (1, 0, ids["buffer_all"][1:])
    terminated = state("terminate_other")
    assert terminated == {
        **{workflow_id: WorkflowStatus.TERMINATED for workflow_id in ids["terminate_other"][:3]},
        t3("terminate_other"): terminated[t3("terminate_other")],
    }
    assert terminated[t3("terminate_other")] in open_ and counters("terminate_other") == (4, 0, [])
    # cancel_other: each tick cancels the open run and starts once it has closed; a tick still
    # waiting when the next comes is replaced by it (skipped). The last tick's run is open.
    cancelled = state("cancel_other")
    runs_started, skipped, buffered = counters("cancel_other")
    assert t3("cancel_other") in cancelled and cancelled[t3("cancel_other")] in open_
    assert set(cancelled) <= set(ids["cancel_other"]) and t0("cancel_other") in cancelled
    assert {status for workflow_id, status in cancelled.items() if workflow_id != t3("cancel_other")} <= {
        WorkflowStatus.CANCELED
    }
    assert (runs_started, runs_started + skipped, buffered) == (len(cancelled), 4, [])

    # Release what is open; a buffered tick starts only once the run before it has closed.
    for policy in ("allow_all", "skip", "terminate_other", "cancel_other"):
        for workflow_id, status in state(policy).items():
            if status in open_:
                release(workflow_id)
    for policy, waiting in (("buffer_one", ids["buffer_one"][:2]), ("buffer_all", ids["buffer_all"])):
        for previous, following in zip(waiting, waiting[1:], strict=False):
            release(previous)
            wait_for(functools.partial(started, following), timeout=UPPER, what=f"{following} to start")
            before, after = WorkflowInstance.objects.get(workflow_id=previous), runs_of(policy)[-1]
            assert before.status == WorkflowStatus.COMPLETED and after.workflow_id == following
            assert before.closed_at is not None and after.created_at >= before.closed_at
            assert [status in open_ for status in state(policy).values()].count(True) == 1
        release(waiting[-1])
    wait_for(lambda: all(closed(policy) for policy in POLICIES), timeout=UPPER, what="every run to close")

    assert set(state("buffer_one")) == set(ids["buffer_one"][:2]) and counters("buffer_one")[:2] == (2, 2)
    assert set(state("buffer_all")) == set(ids["buffer_all"]) and counters("buffer_all") == (4, 0, [])
    assert counters("skip") == (1, 3, [])
    for policy in POLICIES:
        # The released runs completed. Each run recorded its tick once, with reason "tick" (a run
        # terminated or cancelled by the next tick may have closed before its activity ran).
        completed = {wid for wid, status in state(policy).items() if status == WorkflowStatus.COMPLETED}
        closes_others = policy in ("terminate_other", "cancel_other")
        assert completed == ({t3(policy)} if closes_others else set(state(policy))), (policy, state(policy))
        records = recorded(policy)
        assert len(records) == len(set(records)), policy
        assert all(tick_of(policy, wid).isoformat() == tick for wid, tick, _ in records), policy  # type: ignore[union-attr]
        assert {reason for _, _, reason in records} == {"tick"}, policy
        recorders = {wid for wid, _, _ in records}
        assert (completed <= recorders <= set(state(policy))) if closes_others else recorders == set(state(policy))
    stop(*workers)
    assert_no_trouble(*workers)


# -- DST, under the store's test clock ---------------------------------------------------

# A worker whose store reads the time from a file the test writes (``store.clock_override``,
# as WorkflowEnvironment sets it in-process): it fires a whole night of cron ticks in seconds.
CLOCKED_WORKER = """
import datetime, os, pathlib
import django
django.setup()
from django.core.management import call_command
from django_durable.store import testclock
clock = pathlib.Path(os.environ["SCHEDULE_TEST_CLOCK"])
testclock.clock_override = lambda: datetime.datetime.fromisoformat(clock.read_text())
call_command("durable_worker", verbosity=2, concurrency=2)
"""


class FileClock:
    """A stopped clock, read from a file by the worker and by this process's store."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set(self, moment: datetime.datetime) -> None:
        staged = self.path.with_suffix(".new")
        staged.write_text(moment.astimezone(UTC).isoformat())
        os.replace(staged, self.path)  # a reader never sees half a time

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.path.read_text())


@pytest.fixture
def clocked_worker(transactional_db: None, tmp_path: Path) -> Iterator[tuple[FileClock, Callable[[], WorkerProcess]]]:
    clock = FileClock(tmp_path / "clock")
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DURABLE_DB_NAME": str(connection.settings_dict["NAME"]),
            "SCHEDULE_TEST_CLOCK": str(clock.path),
        }
        worker = WorkerProcess([sys.executable, "-c", CLOCKED_WORKER], env, tmp_path / f"clocked-{len(started)}.log")
        started.append(worker)
        return worker

    store.clock_override = clock.now
    try:
        yield clock, start
    finally:
        store.clock_override = None
        for worker in started:
            worker.close()


def utc(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


def caught_up(schedule_ids: list[str], now: datetime.datetime) -> bool:
    """Whether every tick due at ``now`` has fired and its run completed."""
    schedules = Schedule.objects.filter(schedule_id__in=schedule_ids)
    return all(s.next_tick_at is not None and s.next_tick_at > now for s in schedules) and all(
        closed(s) for s in schedule_ids
    )


def walk_the_night(clock: FileClock, steps: list[tuple[str, dict[str, list[str]]]]) -> None:
    """Set the clock to each step's time, wait until the worker has processed every tick due
    (each schedule's next tick is later) and its runs have completed, then compare the runs
    of each schedule with the step's expected ticks (all so far)."""
    for moment, expected in steps:
        now = utc(moment)
        clock.set(now)
        wait_for(functools.partial(caught_up, list(expected), now), timeout=UPPER, what=f"the ticks due at {moment}")
        actual = {schedule_id: [t.isoformat() for t in tick_runs(schedule_id)] for schedule_id in expected}
        assert actual == {
            schedule_id: [utc(tick).isoformat() for tick in ticks] for schedule_id, ticks in expected.items()
        }, moment


def test_dst_in_europe_paris_with_a_worker_under_the_test_clock(clocked_worker):
    """Both 2026 transitions in Europe/Paris, a worker walking the nights by the test clock.
    Spring (29 March, 02:00 CET -> 03:00 CEST, at 01:00Z): "30 2 * * *" fires once, at 03:00
    CEST; hourly skips no elapsed hour. Autumn (25 October, 03:00 CEST -> 02:00 CET, at
    01:00Z): "30 2 * * *" fires once, in the first 02:30; hourly fires both 02:00."""
    clock, start = clocked_worker
    clock.set(utc("2026-03-28T23:10:00"))
    for schedule_id, cron in (("spring-0230", "30 2 * * *"), ("spring-hourly", "0 * * * *")):
        durable.create_schedule(schedule_id, sc_tick, args=[schedule_id], cron=cron, timezone="Europe/Paris")
    worker = start()
    wait_ready(worker)
    walk_the_night(
        clock,
        [
            ("2026-03-29T00:00:01", {"spring-0230": [], "spring-hourly": ["2026-03-29T00:00"]}),
            ("2026-03-29T00:30:01", {"spring-0230": [], "spring-hourly": ["2026-03-29T00:00"]}),
            (
                "2026-03-29T01:00:01",
                {"spring-0230": ["2026-03-29T01:00"], "spring-hourly": ["2026-03-29T00:00", "2026-03-29T01:00"]},
            ),
            (
                "2026-03-29T02:00:01",
                {
                    "spring-0230": ["2026-03-29T01:00"],
                    "spring-hourly": ["2026-03-29T00:00", "2026-03-29T01:00", "2026-03-29T02:00"],
                },
            ),
        ],
    )
    assert the_schedule("spring-0230").next_tick_at == utc("2026-03-30T00:30")  # 02:30 CEST
    for schedule_id in ("spring-0230", "spring-hourly"):
        assert the_schedule(schedule_id).ticks_missed == 0
        durable.get_schedule(schedule_id).delete()  # its ticks to October would count as missed

    clock.set(utc("2026-10-24T23:10:00"))
    for schedule_id, cron in (("autumn-0230", "30 2 * * *"), ("autumn-hourly", "0 * * * *")):
        durable.create_schedule(schedule_id, sc_tick, args=[schedule_id], cron=cron, timezone="Europe/Paris")
    walk_the_night(
        clock,
        [
            ("2026-10-25T00:00:01", {"autumn-0230": [], "autumn-hourly": ["2026-10-25T00:00"]}),
            (
                "2026-10-25T00:30:01",
                {"autumn-0230": ["2026-10-25T00:30"], "autumn-hourly": ["2026-10-25T00:00"]},
            ),
            (
                "2026-10-25T01:00:01",
                {"autumn-0230": ["2026-10-25T00:30"], "autumn-hourly": ["2026-10-25T00:00", "2026-10-25T01:00"]},
            ),
            (
                "2026-10-25T01:30:01",
                {"autumn-0230": ["2026-10-25T00:30"], "autumn-hourly": ["2026-10-25T00:00", "2026-10-25T01:00"]},
            ),
            (
                "2026-10-25T02:00:01",
                {
                    "autumn-0230": ["2026-10-25T00:30"],
                    "autumn-hourly": ["2026-10-25T00:00", "2026-10-25T01:00", "2026-10-25T02:00"],
                },
            ),
        ],
    )
    assert the_schedule("autumn-0230").next_tick_at == utc("2026-10-26T01:30")  # 02:30 CET
    assert the_schedule("autumn-0230").ticks_missed == the_schedule("autumn-hourly").ticks_missed == 0
    for schedule_id in ("spring-0230", "spring-hourly", "autumn-0230", "autumn-hourly"):
        assert [reason for _, _, reason in recorded(schedule_id)] == ["tick"] * len(tick_runs(schedule_id))
    worker.terminate()
    assert worker.wait(UPPER) == 0, worker.log()
    assert_no_trouble(worker)


# -- pause, trigger, backfill, update and delete while workers run ---------------------------


def test_pause_trigger_unpause_backfill_update_and_delete_while_workers_run(start_worker):
    workers = [start_worker(env=PATIENT), start_worker(env=PATIENT)]
    verbs = durable.create_schedule("verbs", sc_tick, args=["verbs"], every=1, overlap="allow_all")
    doomed = durable.create_schedule("doomed", sc_until_released, args=["doomed"], every=1, overlap="allow_all")
    wait_ticks("verbs", 2)
    wait_ticks("doomed", 2)

    # Pause: no tick after it. Delete: no run after it, and its runs go on.
    verbs.pause(note="hold on")
    paused_at = db_now()
    doomed.delete()
    deleted_at = db_now()
    with pytest.raises(durable.ScheduleNotFound):
        durable.get_schedule("doomed")
    # Trigger: one run now, paused or not.
    triggered = verbs.trigger()
    assert triggered is not None and tick_of("verbs", triggered.workflow_id) is None
    result = triggered.result(timeout=UPPER)
    assert result["reason"] == "trigger" and result["schedule_id"] == "verbs"
    assert paused_at - SECOND < datetime.datetime.fromisoformat(result["tick"]) < db_now()
    wait_clock(max(paused_at, deleted_at) + 2.5 * SECOND)  # two ticks of each fall in this time
    assert max(tick_runs("verbs")) <= paused_at
    assert max(tick_runs("doomed")) <= deleted_at
    left = runs_of("doomed")
    assert {run.status for run in left} <= {WorkflowStatus.PENDING, WorkflowStatus.RUNNING}
    for run in left:
        release(run.workflow_id)
    wait_for(lambda: closed("doomed"), timeout=UPPER, what="the deleted schedule's runs to complete")
    assert {run.status for run in runs_of("doomed")} == {WorkflowStatus.COMPLETED}
    assert [run.workflow_id for run in runs_of("doomed")] == [run.workflow_id for run in left]

    # Unpause: from the next tick after it, the ticks of the pause dropped.
    before_unpause = db_now()
    verbs.unpause()
    after_unpause = db_now()
    wait_ticks("verbs", 2, after=paused_at)
    ticks = list(tick_runs("verbs"))
    resumed = next(tick for tick in ticks if tick > paused_at)
    assert whole_second_after(before_unpause) <= resumed <= whole_second_after(after_unpause)
    dropped = int((resumed - max(t for t in ticks if t <= paused_at)) / SECOND) - 1
    assert dropped >= 2
    schedule = the_schedule("verbs")
    assert (schedule.paused, schedule.note) == (False, "hold on")
    assert (schedule.ticks_missed, schedule.ticks_skipped) == (0, 0)

    # Backfill from the first tick to the last fired: it starts the dropped ticks, and only them.
    ticks = list(tick_runs("verbs"))
    outcome = verbs.backfill(ticks[0], ticks[-1])
    gap = [resumed - i * SECOND for i in range(dropped, 0, -1)]
    assert outcome.started == [tick_workflow_id("verbs", tick) for tick in gap]
    assert (outcome.buffered, outcome.skipped, outcome.already_run) == (0, 0, len(ticks))
    again = verbs.backfill(ticks[0], ticks[-1])
    assert (again.started, again.already_run) == ([], len(ticks) + dropped)
    for workflow_id in outcome.started:
        assert durable.get_workflow(workflow_id).result(timeout=UPPER)["reason"] == "backfill"

    # Update every=1 -> every=2: the ticks are even seconds, two apart, from the next one.
    before_update = db_now()
    verbs.update(every=2)
    after_update = db_now()
    wait_ticks("verbs", 3, after=after_update)
    # (An even second passing while update() ran may have fired under every=1: it fits in.)
    even = whole_second_after(before_update, 2)
    later = [tick for tick in tick_runs("verbs") if tick >= even]
    assert later[0] <= whole_second_after(after_update, 2)
    assert later == [later[0] + 2 * i * SECOND for i in range(len(later))]
    verbs.pause()
    wait_for(lambda: closed("verbs"), timeout=UPPER, what="the runs to complete")

    # Overall: every tick once, each second up to the update; every run recorded once, with its reason.
    every_one = [tick for tick in tick_runs("verbs") if tick < even]
    assert every_one == [every_one[0] + i * SECOND for i in range(len(every_one))]
    assert all(len(runs) == 1 for runs in tick_runs("verbs").values())
    reasons = collections.Counter(reason for _, _, reason in recorded("verbs"))
    assert reasons == {"tick": len(tick_runs("verbs")) - dropped, "backfill": dropped, "trigger": 1}
    assert len(recorded("verbs")) == len(runs_of("verbs"))
    stop(*workers)
    assert_no_trouble(*workers)
