"""Fault tests: real ``durable_worker`` processes, signalled, paused and killed.

Every wait here awaits an event (a file an activity writes, a database row, a log
line, a process exit) with a generous upper bound; nothing sleeps a fixed time.
Test settings: LEASE_SECONDS=2, POLL_INTERVAL=0.05, REAP_INTERVAL=0.5.
"""

from __future__ import annotations

import collections
import datetime
import random
import signal
import time
from pathlib import Path

import pytest

import django_durable as durable
from django_durable.engine.events import CLOSE_KINDS, COMMAND_KINDS, COMPLETION_KINDS, EventKind
from django_durable.models import (
    OPEN_STATUSES,
    HistoryEvent,
    InboxEvent,
    WorkflowInstance,
    WorkflowStatus,
    WorkItem,
    WorkItemKind,
)
from django_durable.store import db_now
from tests.conftest import wait_for
from tests.faults.kit import UPPER, assert_no_trouble, runs, stop, wait_file, wait_log, wait_ready
from tests.testapp.models import ActivityRun
from tests.testapp.worker_orchestration_workflows import wo_one_gate
from tests.testapp.workflows import (
    fan_out,
    one_gated,
    one_slow,
    retrying_unlimited,
    sequence,
    sleeper,
    times_out,
)

pytestmark = pytest.mark.workers

LEASE = 2.0  # tests.settings DURABLE["LEASE_SECONDS"]
# For a worker that must keep a lease while a test watches: renewed every third of it, it
# survives a loaded machine starving its renewer for seconds, where 2 s would not.
PATIENT_LEASE = 6.0
PATIENT = {"DURABLE_TEST_LEASE_SECONDS": str(PATIENT_LEASE)}


def gate_started(gate: Path, attempt: int) -> int:
    """Wait until ``gated`` announces ``attempt``; the pid of the worker running it."""
    return int(wait_file(gate / f"started-{attempt}"))


def release(gate: Path, attempt: int | str) -> None:
    (gate / f"release-{attempt}").touch()


def activity_item(handle: durable.WorkflowHandle) -> WorkItem:
    return WorkItem.objects.get(instance__run_id=handle.run_id, kind=WorkItemKind.ACTIVITY)


def is_closed(handle: durable.WorkflowHandle) -> bool:
    return handle.status() not in OPEN_STATUSES


def assert_history_sound(instance: WorkflowInstance) -> list[HistoryEvent]:
    """History seqs are 1..n, one close event and it is last, each command answered at most once."""
    events = list(HistoryEvent.objects.filter(instance=instance).order_by("seq"))
    where = f"{instance.workflow_name} {instance.workflow_id}"
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), where
    assert instance.history_length == len(events), where
    assert events[0].kind == EventKind.EXECUTION_STARTED, where
    closes = [e for e in events if e.kind in CLOSE_KINDS]
    assert len(closes) == 1 and closes[0] is events[-1], (where, [(e.seq, e.kind) for e in events])
    commands = collections.Counter(e.task_id for e in events if e.kind in COMMAND_KINDS)
    answers = collections.Counter(e.task_id for e in events if e.kind in COMPLETION_KINDS)
    assert all(n == 1 for n in commands.values()), (where, commands)
    # A completed workflow awaited all it started (in these workflows): one answer per command.
    assert answers == commands, (where, commands, answers)
    return events


def completion_attempts(handle: durable.WorkflowHandle) -> list[tuple[str, int]]:
    return [
        (e.kind, e.payload.get("attempt"))
        for e in handle.history()
        if e.kind in (EventKind.ACTIVITY_COMPLETED, EventKind.ACTIVITY_FAILED)
    ]


# -- (1) first signal: finish the running activity, exit 0 -------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_first_signal_finishes_the_running_activity_and_exits_0(start_worker, tmp_path, signum):
    gate = tmp_path / "gate"
    gate.mkdir()
    handle = durable.start_workflow(one_gated, "graceful", str(gate))
    worker = start_worker()
    assert gate_started(gate, 1) == worker.pid

    worker.signal(signum)
    wait_log(worker, f"{signum.name} received: finishing 1 running activities")
    # It waits for the activity: still alive, the activity still leased to it.
    assert worker.proc.poll() is None
    assert activity_item(handle).lease_owner is not None
    release(gate, 1)
    assert worker.wait(UPPER) == 0, worker.log()

    # The activity's outcome was recorded before the worker exited.
    assert not WorkItem.objects.filter(kind=WorkItemKind.ACTIVITY).exists()
    recorded = InboxEvent.objects.filter(instance__run_id=handle.run_id, kind=EventKind.ACTIVITY_COMPLETED)
    assert recorded.exists() or is_closed(handle)
    assert "Activity gated of" in worker.log() and "completed (attempt 1)" in worker.log()

    others = [] if is_closed(handle) else [start_worker()]
    assert handle.result(timeout=UPPER) == "graceful"
    assert runs("graceful") == [1]
    assert runs("graceful:done") == [1]
    assert completion_attempts(handle) == [(EventKind.ACTIVITY_COMPLETED, 1)]
    stop(*others)
    assert_no_trouble(worker, *others)


def test_sigterm_during_a_timed_activity_keeps_its_lease_until_it_finishes(start_worker, tmp_path):
    """The stopping worker keeps renewing the lease of the activity it finishes (``wo_gate``
    has a start-to-close timeout, which caps each renewal), past the lease it held when
    the signal came; the activity finishes once, with attempt 1."""
    gate = tmp_path / "gate"
    gate.mkdir()
    handle = durable.start_workflow(wo_one_gate, "slow-graceful", str(gate))
    worker = start_worker(env=PATIENT)
    assert int(wait_file(gate / "started-a")) == worker.pid
    worker.terminate()
    wait_log(worker, "SIGTERM received")
    held_at_signal = activity_item(handle).lease_expires_at
    wait_for(
        lambda: activity_item(handle).lease_expires_at > held_at_signal,
        timeout=UPPER,
        what="a renewal after SIGTERM",
    )
    wait_for(lambda: db_now() > held_at_signal, timeout=UPPER, what="the lease held at SIGTERM to run out")
    item = activity_item(handle)
    assert (item.attempt, item.lease_expires_at > db_now()) == (1, True), item
    (gate / "release-a").touch()
    assert worker.wait(UPPER) == 0, worker.log()
    assert "Lost the lease" not in worker.log()
    others = [] if is_closed(handle) else [start_worker()]
    assert handle.result(timeout=UPPER) == "slow-graceful"
    assert runs("slow-graceful") == [1]
    assert runs("slow-graceful:done") == [1]
    assert "Reaped" not in "".join(o.log() for o in others)


# -- (2) second signal: exit at once --------------------------------------------------


def test_second_sigterm_exits_at_once_and_the_lease_expires(start_worker, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    handle = durable.start_workflow(one_gated, "impatient", str(gate))
    first = start_worker()
    assert gate_started(gate, 1) == first.pid

    first.terminate()
    wait_log(first, "SIGTERM received")
    first.terminate()
    began = time.monotonic()
    code = first.wait(UPPER)
    assert code != 0, first.log()
    assert time.monotonic() - began < 10, "the second SIGTERM did not exit at once"
    assert "Second SIGTERM" in first.log()
    assert runs("impatient:done") == []  # it did not finish the activity

    # The attempt is still leased by the dead worker; its lease runs out on its own.
    item = activity_item(handle)
    assert item.lease_owner is not None and item.attempt == 1
    lease_end = item.lease_expires_at

    release(gate, 2)
    second = start_worker()
    assert handle.result(timeout=UPPER) == "impatient"
    assert runs("impatient") == [1, 2]
    assert runs("impatient:done") == [2]
    retry = ActivityRun.objects.get(key="impatient", attempt=2)
    assert retry.pid == second.pid
    assert retry.created_at >= lease_end, "the attempt was retried before its lease expired"
    assert completion_attempts(handle) == [(EventKind.ACTIVITY_COMPLETED, 2)]
    assert "Reaped activity gated" in second.log()
    stop(second)
    assert_no_trouble(second)


# -- (3) SIGKILL during an activity ------------------------------------------------


@pytest.mark.parametrize("survivor", ["started_before", "started_after"])
def test_sigkill_during_an_activity(start_worker, tmp_path, survivor):
    gate = tmp_path / "gate"
    gate.mkdir()
    release(gate, 2)
    key = f"killed-{survivor}"
    handle = durable.start_workflow(one_gated, key, str(gate))
    workers = [start_worker(), start_worker()] if survivor == "started_before" else [start_worker()]

    victim_pid = gate_started(gate, 1)
    victim = next(w for w in workers if w.pid == victim_pid)
    victim.kill()
    assert victim.wait() == -signal.SIGKILL
    lease_end = activity_item(handle).lease_expires_at
    survivors = [w for w in workers if w is not victim]
    if not survivors:
        survivors.append(start_worker())

    assert handle.result(timeout=UPPER) == key
    assert runs(key) == [1, 2]
    assert runs(key + ":done") == [2]
    retry = ActivityRun.objects.get(key=key, attempt=2)
    assert retry.pid == survivors[0].pid != victim.pid
    assert retry.created_at >= lease_end
    assert completion_attempts(handle) == [(EventKind.ACTIVITY_COMPLETED, 2)]
    assert_history_sound(WorkflowInstance.objects.get(run_id=handle.run_id))
    assert "Reaped activity gated" in survivors[0].log()
    stop(survivors[0])
    assert_no_trouble(survivors[0])


# -- (4) start_to_close_timeout ----------------------------------------------------


def test_start_to_close_timeout_retries_then_fails_and_late_results_are_discarded(start_worker):
    handle = durable.start_workflow(times_out, "too-slow")
    worker = start_worker()
    result = handle.result(timeout=UPPER)
    assert "TimeoutError" in result and "start_to_close_timeout" in result, result
    assert runs("too-slow") == [1, 2]  # retried once after the 1 s timeout, then gave up
    assert completion_attempts(handle) == [(EventKind.ACTIVITY_FAILED, 2)]
    failed = next(e for e in handle.history() if e.kind == EventKind.ACTIVITY_FAILED)
    assert "start_to_close_timeout" in failed.payload["error"]["message"]
    assert_history_sound(WorkflowInstance.objects.get(run_id=handle.run_id))

    # Both timed-out attempts finish their 3 s sleep later; their results are thrown away.
    log = wait_log(worker, "Activity outcome discarded", count=2)
    assert "attempt 1 is no longer leased" in log and "attempt 2 is no longer leased" in log, log
    assert worker.proc.poll() is None  # no crash
    assert is_closed(handle) and handle.result() == result
    stop(worker)
    assert_no_trouble(worker)


# -- (5) several workers, no activity run twice ------------------------------------------


def test_three_workers_run_every_activity_exactly_once(start_worker):
    # Long leases: this is about claims never overlapping, not about recovery, and a
    # loaded machine can delay a 2 s lease's renewal enough to (rightly) retry an activity.
    workers = [start_worker(concurrency=4, env={"DURABLE_TEST_LEASE_SECONDS": "20"}) for _ in range(3)]
    wait_ready(*workers)
    seqs = [durable.start_workflow(sequence, f"seq-{i}", 3, workflow_id=f"seq-{i}") for i in range(30)]
    fans = [durable.start_workflow(fan_out, 8 + i, workflow_id=f"fan-{i}") for i in range(5)]

    for handle in seqs:
        assert handle.result(timeout=UPPER) == 3
    for i, handle in enumerate(fans):
        assert handle.result(timeout=UPPER) == [2 * j for j in range(8 + i)]

    keys = collections.Counter(ActivityRun.objects.values_list("key", flat=True))
    expected = {f"seq-{i}:{step}" for i in range(30) for step in range(3)}
    assert set(keys) == expected
    assert [k for k, n in keys.items() if n != 1] == []
    assert set(ActivityRun.objects.values_list("attempt", flat=True)) == {1}
    assert len(set(ActivityRun.objects.values_list("pid", flat=True))) >= 2, "only one worker did any work"
    for instance in WorkflowInstance.objects.all():
        assert instance.status == WorkflowStatus.COMPLETED
        assert_history_sound(instance)
    assert not WorkItem.objects.exists() and not InboxEvent.objects.exists()
    stop(*workers)
    assert_no_trouble(*workers)
    assert "Reaped" not in "".join(w.log() for w in workers)


# -- (6) chaos: workers killed at random --------------------------------------------------


def test_workers_killed_at_random_lose_nothing(start_worker):
    rng = random.Random(20240611)
    expected: dict[str, object] = {}
    record_keys: list[str] = []
    flaky_keys: dict[str, int] = {}
    for i in range(40):
        kind = rng.choice(["sequence", "sequence", "fan_out", "retrying", "sleeper"])
        wid = f"chaos-{i}-{kind}"
        if kind == "sequence":
            steps = rng.randint(2, 4)
            durable.start_workflow(sequence, wid, steps, workflow_id=wid)
            expected[wid] = steps
            record_keys += [f"{wid}:{step}" for step in range(steps)]
        elif kind == "fan_out":
            n = rng.randint(3, 8)
            durable.start_workflow(fan_out, n, workflow_id=wid)
            expected[wid] = [2 * j for j in range(n)]
        elif kind == "retrying":
            fail_times = rng.randint(0, 2)
            durable.start_workflow(retrying_unlimited, wid, fail_times, workflow_id=wid)
            flaky_keys[wid] = fail_times
        else:
            durable.start_workflow(sleeper, 0.2, workflow_id=wid)

    def all_closed() -> bool:
        return not WorkflowInstance.objects.filter(status__in=OPEN_STATUSES).exists()

    def enough_closed() -> bool:
        return WorkflowInstance.objects.exclude(status__in=OPEN_STATUSES).count() >= 30

    def progress() -> int:
        return ActivityRun.objects.count() + HistoryEvent.objects.count()

    alive = [start_worker(concurrency=rng.choice([2, 4])) for _ in range(3)]
    killed_pids: set[int] = set()
    kills = 0
    # Kill while work is in flight, until about three quarters of the runs have closed.
    while kills < 15:
        target = progress() + rng.randint(20, 60)
        wait_for(lambda target=target: progress() >= target or enough_closed(), timeout=UPPER, what="progress")
        if enough_closed():
            break
        victim = rng.choice(alive)
        victim.kill()
        victim.wait()
        killed_pids.add(victim.pid)
        kills += 1
        alive.remove(victim)
        alive.append(start_worker(concurrency=rng.choice([2, 4])))
    # The last chaotic workers die too; a clean pair finishes the job.
    for victim in alive:
        victim.kill()
        victim.wait()
        killed_pids.add(victim.pid)
        kills += 1
    assert kills >= 5, f"only {kills} kills: the chaos was too mild to mean anything"
    # Long leases: every execution but the last must have been cut short by a kill, not a slow renewal.
    clean = [start_worker(env={"DURABLE_TEST_LEASE_SECONDS": "20"}) for _ in range(2)]
    wait_for(all_closed, timeout=120, what="every workflow to close")

    for instance in WorkflowInstance.objects.all():
        wid = instance.workflow_id
        assert instance.status == WorkflowStatus.COMPLETED, (wid, instance.error, instance.task_error)
        handle = durable.get_workflow(wid)
        if wid in expected:
            assert handle.result() == expected[wid], wid
        elif wid in flaky_keys:
            attempts = runs(wid)
            # It succeeded on its last recorded attempt, after at least fail_times failures.
            assert handle.result() == max(attempts) >= flaky_keys[wid] + 1, (wid, attempts)
            assert len(attempts) <= flaky_keys[wid] + 1 + kills, (wid, attempts)
        else:
            assert handle.result()["slept"] >= 0.2
        assert_history_sound(instance)
    assert WorkflowInstance.objects.count() == 40
    assert list(WorkItem.objects.values("kind", "instance__workflow_id", "lease_owner")) == []
    assert not InboxEvent.objects.exists()

    # At-least-once: a `record` step ran at least once, and again only after a kill.
    for key in record_keys:
        attempts = runs(key)
        assert 1 <= len(attempts) <= kills + 1, (key, attempts, kills)
        # Every execution but the one that counted was cut short by a kill.
        done = list(ActivityRun.objects.filter(key=key).order_by("attempt").values_list("attempt", "pid"))
        assert all(pid in killed_pids for _, pid in done[:-1]), (key, done, killed_pids)
    # A (key, attempt) pair is one claim: it never executes twice.
    pairs = collections.Counter(ActivityRun.objects.values_list("key", "attempt"))
    assert [pair for pair, n in pairs.items() if n > 1] == []

    stop(*clean)
    assert_no_trouble(*clean)


# -- (7) --batch ----------------------------------------------------------------


def test_batch_worker_exits_0_when_no_work_is_due(start_worker, tmp_path):
    started = tmp_path / "started"
    fan = durable.start_workflow(fan_out, 6)
    slow = durable.start_workflow(one_slow, "batch-slow", 1.0, str(started))
    worker = start_worker(batch=True)
    assert worker.wait(UPPER) == 0, worker.log()
    assert "No work due: exiting (--batch)." in worker.log()
    # It did not leave while an activity was still running: everything finished.
    assert fan.result(timeout=0) == [0, 2, 4, 6, 8, 10]
    assert slow.result(timeout=0) == "batch-slow"
    assert runs("batch-slow:done") == [1]
    assert not WorkItem.objects.exists()

    idle = start_worker(batch=True)
    assert idle.wait(UPPER) == 0, idle.log()


def test_batch_worker_leaves_a_future_timer_for_a_later_batch_run(start_worker):
    handle = durable.start_workflow(sleeper, 3.0)
    first = start_worker(batch=True)
    assert first.wait(UPPER) == 0, first.log()
    assert "No work due: exiting (--batch)." in first.log()
    # It exited although the timer is pending: nothing was due *now*.
    assert handle.status() == WorkflowStatus.RUNNING
    timer = WorkItem.objects.get(instance__run_id=handle.run_id)
    assert timer.kind == WorkItemKind.TIMER  # not fired: the first run did not wait for it

    wait_for(lambda: db_now() >= timer.due_at, timeout=UPPER, what="the timer to be due")
    second = start_worker(batch=True)
    assert second.wait(UPPER) == 0, second.log()
    assert handle.status() == WorkflowStatus.COMPLETED
    assert handle.result()["slept"] >= 3.0
    assert not WorkItem.objects.exists()
    assert_history_sound(WorkflowInstance.objects.get(run_id=handle.run_id))


# -- (8) polling: a worker picks up work started after it ------------------------------


def test_idle_worker_picks_up_a_workflow_started_later(start_worker):
    worker = start_worker()
    wait_ready(worker)
    assert not WorkflowInstance.objects.exists()
    fan = durable.start_workflow(fan_out, 4)
    seq = durable.start_workflow(sequence, "late", 2)
    assert fan.result(timeout=UPPER) == [0, 2, 4, 6]
    assert seq.result(timeout=UPPER) == 2
    assert runs("late:0") == [1] and runs("late:1") == [1]
    stop(worker)
    assert_no_trouble(worker)


# -- (9) a paused worker (SIGSTOP past its lease) -----------------------------------------


def test_paused_worker_loses_its_lease_and_its_retry_keeps_a_renewed_lease(start_worker, tmp_path):
    """A worker frozen past its lease (GC pause, SIGSTOP, a suspended VM) must not finish the
    attempt it lost; when the same worker claims the retry, it must keep renewing the retry's
    lease even after the stale attempt's thread ends."""
    gate = tmp_path / "gate"
    gate.mkdir()
    handle = durable.start_workflow(one_gated, "paused", str(gate))
    worker = start_worker(concurrency=4, env=PATIENT)
    assert gate_started(gate, 1) == worker.pid

    worker.signal(signal.SIGSTOP)
    try:
        first_lease_end = activity_item(handle).lease_expires_at
        wait_for(lambda: db_now() > first_lease_end, timeout=UPPER, what="the lease to expire")
    finally:
        worker.signal(signal.SIGCONT)

    # On waking it finds the lease lost, reaps its own attempt and claims the retry.
    assert gate_started(gate, 2) == worker.pid
    release(gate, 1)  # the stale attempt ends now; its result must be discarded
    wait_log(worker, "Activity outcome discarded")
    discarded_at = db_now()
    assert runs("paused:done") == [1]
    assert not InboxEvent.objects.filter(instance__run_id=handle.run_id).exists()

    # The retry is still running: its lease is renewed after the stale attempt's thread ended.
    wait_for(
        lambda: activity_item(handle).lease_expires_at > discarded_at + datetime.timedelta(seconds=PATIENT_LEASE),
        timeout=UPPER,
        what="a renewal of attempt 2's lease after the stale attempt ended",
    )
    log = worker.log()
    assert "(attempt 2): lease of" not in log and not (gate / "started-3").exists(), (
        "attempt 2 was reaped (and run again) while its worker was alive and running it:\n" + log
    )
    item = activity_item(handle)
    assert item.attempt == 2 and item.lease_owner is not None, item
    assert item.lease_expires_at > db_now(), "attempt 2's lease was not renewed"

    release(gate, 2)
    assert handle.result(timeout=UPPER) == "paused"
    assert runs("paused") == [1, 2]
    assert runs("paused:done") == [1, 2]
    assert completion_attempts(handle) == [(EventKind.ACTIVITY_COMPLETED, 2)]
    stop(worker)
