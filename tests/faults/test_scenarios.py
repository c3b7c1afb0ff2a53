"""Fault scenarios on real ``durable_worker`` processes, each ended by the checker
(tests/faults/invariants.py): workers killed at random, workers paused past their lease,
PostgreSQL restarted under them, their connections terminated mid-claim and
mid-commit, a worker whose clock is hours off, and a short seeded chaos soak.

PostgreSQL restarts run on a private cluster (tests/faults/pgcluster.py), never the shared
server. Scenarios of PostgreSQL itself skip on SQLite and MariaDB (MariaDB's own are in
tests/faults/test_mariadb_faults.py), those of a database server's row locks and clock skip
on SQLite; without PostgreSQL's server binaries or Debian's faketime they skip, and fail
instead in CI (CI=true or ``dev.py --require-postgres``). Every wait awaits an event, with a
generous bound.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection

import django_durable as durable
from django_durable.engine.events import EventKind
from django_durable.models import HistoryEvent, WorkflowInstance, WorkItem, WorkItemKind
from django_durable.store import db_now
from tests.conftest import REPO, wait_for
from tests.faults import pgcluster
from tests.faults.invariants import Outcome
from tests.faults.kit import (
    ON_POSTGRES,
    UPPER,
    all_closed,
    cannot_run,
    completions,
    freeze,
    runs,
    stop,
    verdict,
    wait_held,
    wait_log,
    wait_ready,
    wait_stopped,
)
from tests.testapp.models import ActivityRun
from tests.testapp.workflows import (
    ac_approval,
    fan_out,
    ow_parent,
    ow_waiter,
    retrying,
    retrying_unlimited,
    sequence,
    sleeper,
    wo_one_gate,
)

pytestmark = pytest.mark.workers

postgres_only = pytest.mark.skipif(
    not ON_POSTGRES,
    reason="a PostgreSQL scenario (its server restarted, its backends terminated): the PostgreSQL pass runs it "
    "(MariaDB's KILL of a connection: tests/faults/test_mariadb_faults.py)",
)
# SQLite has one write lock, which a frozen transaction holds from every other worker, and no
# server: there every process is its own database clock, so a skewed clock is a skewed database.
server_only = pytest.mark.skipif(
    connection.vendor == "sqlite", reason="row locks and a database server's clock: not SQLite's"
)


def holding(point: str, folder: Path) -> dict[str, str]:
    """Worker env: park the thread that reaches ``point`` on a file in ``folder``."""
    return {"DURABLE_CRASH_POINTS": f"{point}=hold", "DURABLE_CRASH_DIR": str(folder)}


# A long lease for the worker that takes over: the retry it runs must be the only one, on a
# loaded machine too (a starved renewer would let a 2 s lease run out and the retry run again).
TAKING_OVER = {"DURABLE_TEST_LEASE_SECONDS": "20"}


def slept_at_least(seconds: float) -> Outcome:
    def slept_enough(result: dict[str, Any]) -> bool:
        return result["slept"] >= seconds

    return Outcome(predicate=slept_enough)


class Mix:
    """A seeded mix of the test app's workflows, and what each must return: activities in
    sequence and fanned out, timers, child workflows, signals (``send_signals``),
    activities finished by task token (``complete_tokens``) and retries."""

    KINDS = ("sequence", "sequence", "fan_out", "sleeper", "parent", "waiter", "approval", "retrying")

    def __init__(self, rng: random.Random, count: int, folder: Path, prefix: str) -> None:
        self.expected: dict[str, Any] = {}
        self.waiters: dict[str, dict[str, int]] = {}
        self.approvals: dict[str, Path] = {}
        for i in range(count):
            kind = rng.choice(self.KINDS)
            wid = f"{prefix}{i}-{kind}"
            if kind == "sequence":
                steps = rng.randint(2, 4)
                durable.start_workflow(sequence, wid, steps, workflow_id=wid)
                self.expected[wid] = steps
            elif kind == "fan_out":
                n = rng.randint(3, 6)
                durable.start_workflow(fan_out, n, workflow_id=wid)
                self.expected[wid] = [2 * j for j in range(n)]
            elif kind == "sleeper":
                durable.start_workflow(sleeper, 0.3, workflow_id=wid)
                self.expected[wid] = slept_at_least(0.3)
            elif kind == "parent":
                durable.start_workflow(ow_parent, [1, 2], workflow_id=wid)
                self.expected[wid] = [10, 20]
            elif kind == "waiter":
                durable.start_workflow(ow_waiter, workflow_id=wid)
                self.waiters[wid] = {"n": i}
                self.expected[wid] = {"n": i}
            elif kind == "approval":
                self.approvals[wid] = folder / wid
                self.approvals[wid].mkdir(parents=True)
                durable.start_workflow(ac_approval, str(self.approvals[wid]), workflow_id=wid)
                self.expected[wid] = {"result": {"ok": wid}}
            else:
                fail_times = rng.randint(0, 2)
                durable.start_workflow(retrying_unlimited, wid, fail_times, workflow_id=wid)
                self.expected[wid] = Outcome(predicate=lambda attempt, least=fail_times + 1: attempt >= least)

    def send_signals(self, rng: random.Random | None = None) -> None:
        for wid, payload in list(self.waiters.items()):
            if rng is None or rng.random() < 0.3:
                durable.get_workflow(wid).signal("go", payload)
                del self.waiters[wid]

    def complete_tokens(self) -> None:
        """Complete each approval by the token of its newest attempt (an older one is refused)."""
        for wid, folder in list(self.approvals.items()):
            tokens = sorted(folder.glob("token-*"), key=lambda path: int(path.name.split("-")[1]))
            if not tokens:
                continue
            try:
                durable.complete_activity(json.loads(tokens[-1].read_text())["token"], {"ok": wid})
            except durable.ActivityNotPending:
                continue  # superseded by a retry whose token is on its way
            del self.approvals[wid]

    def tend(self, rng: random.Random | None = None) -> None:
        self.send_signals(rng)
        self.complete_tokens()


# -- SIGKILL at random times ---------------------------------------------------------------


def test_workers_killed_at_random_times_lose_nothing(start_worker, tmp_path):
    rng = random.Random(8)
    mix = Mix(rng, 24, tmp_path / "tokens", "k")

    def progress() -> int:
        mix.tend(rng)
        return ActivityRun.objects.count() + HistoryEvent.objects.count()

    def mostly_closed() -> bool:
        return WorkflowInstance.objects.filter(status="completed").count() >= 18

    alive = [start_worker(concurrency=rng.choice([2, 4])) for _ in range(3)]
    kills = 0
    while kills < 6 and not mostly_closed():
        target = progress() + rng.randint(10, 40)
        wait_for(lambda target=target: progress() >= target or mostly_closed(), timeout=UPPER, what="progress")
        victim = rng.choice(alive)
        victim.kill()
        assert victim.wait() == -signal.SIGKILL
        kills += 1
        alive.remove(victim)
        alive.append(start_worker(concurrency=rng.choice([2, 4])))
    for victim in alive:
        victim.kill()
        victim.wait()
        kills += 1
    assert kills >= 4, f"only {kills} kills: too mild to mean anything"

    clean = [start_worker(), start_worker()]
    wait_for(lambda: mix.tend() or all_closed(), timeout=2 * UPPER, what="every workflow to close")
    stop(*clean)
    result = verdict(mix.expected)
    result.assert_ok()
    assert result.counts["children"] >= 2 and result.counts["signals"] >= 1 and result.counts["timers"] >= 2


# -- SIGSTOP past the lease ---------------------------------------------------------------


def test_a_paused_workers_late_heartbeat_is_fenced(start_worker, tmp_path):
    """Frozen (SIGSTOP) at its third heartbeat, past its lease: another worker retries the
    attempt; woken (SIGCONT), its heartbeat is refused and its outcome discarded."""
    gate = tmp_path / "gate"
    gate.mkdir()
    handle = durable.start_workflow(wo_one_gate, "late-beat", str(gate), True, workflow_id="late-beat")
    first = start_worker(env=holding("before_heartbeat@3", tmp_path))
    held = wait_held(tmp_path, first, "before_heartbeat")
    freeze(first)
    held.unlink()  # it goes on from there once woken
    assert runs("late-beat") == [1]

    second = start_worker(env=TAKING_OVER)
    try:
        wait_for(lambda: runs("late-beat") == [1, 2], timeout=UPPER, what="the retry to start")
    finally:
        first.signal(signal.SIGCONT)
    wait_log(first, "Activity outcome discarded")
    assert runs("late-beat:not-pending") == [1]  # the late heartbeat was refused

    (gate / "release-a").touch()
    assert handle.result(timeout=UPPER) == "late-beat"
    stop(first, second)
    assert runs("late-beat:done") == [2]
    assert completions(handle) == [(EventKind.ACTIVITY_COMPLETED, 2)]
    verdict({"late-beat": "late-beat"}).assert_ok()


def test_a_paused_workers_late_completion_is_fenced(start_worker, tmp_path):
    """Frozen with its activity's result in hand, past its lease: the retry completes the
    run; woken, its completion is refused and nothing is recorded twice."""
    handle = durable.start_workflow(retrying, "late-result", 0, workflow_id="late-result")
    first = start_worker(env=holding("before_activity_completion", tmp_path))
    held = wait_held(tmp_path, first, "before_activity_completion")
    freeze(first)
    held.unlink()
    assert runs("late-result") == [1]

    second = start_worker(env=TAKING_OVER)
    try:
        assert handle.result(timeout=UPPER) == 2
    finally:
        first.signal(signal.SIGCONT)
    wait_log(first, "Activity outcome discarded")
    stop(first, second)
    assert runs("late-result") == [1, 2]
    assert completions(handle) == [(EventKind.ACTIVITY_COMPLETED, 2)]
    verdict({"late-result": 2}).assert_ok()


# -- PostgreSQL restarted mid-run (a private cluster) ------------------------------------------


@pytest.fixture(scope="session")
def private_pg() -> Iterator[pgcluster.PrivateCluster]:
    if not ON_POSTGRES:
        pytest.skip("PostgreSQL restarts: the PostgreSQL pass runs them")
    reason = pgcluster.unavailable()
    if reason:
        cannot_run(f"no private PostgreSQL cluster: {reason}")
    cluster = pgcluster.PrivateCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def on_private_pg(private_pg: pgcluster.PrivateCluster, transactional_db: None) -> Iterator[dict[str, str]]:
    """Point this test's connection, and (with the returned env) its workers, at a fresh
    migrated database on the private cluster; the shared server's test database is left
    alone and comes back afterwards."""
    settings_dict = connection.settings_dict
    saved = {key: settings_dict[key] for key in ("NAME", "HOST", "PORT")}
    where = {"HOST": private_pg.host, "PORT": str(private_pg.port)}
    template = "faults_template"
    if not private_pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", [template]):
        private_pg.create_database(template)
        connection.close()
        settings_dict.update(NAME=template, **where)
        try:
            call_command("migrate", verbosity=0, interactive=False)
        finally:
            connection.close()
            settings_dict.update(saved)
    name = f"faults_{uuid.uuid4().hex[:8]}"
    private_pg.create_database(name, template=template)
    connection.close()
    settings_dict.update(NAME=name, **where)
    try:
        yield {"DURABLE_PG_HOST": private_pg.host, "DURABLE_PG_PORT": str(private_pg.port)}
    finally:
        connection.close()
        settings_dict.update(saved)
        private_pg.drop_database(name)


@postgres_only
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgresql_restarted_mid_run(on_private_pg, private_pg, start_worker, tmp_path, mode):
    mix = Mix(random.Random(5), 16, tmp_path / "tokens", f"pg-{mode}-")
    workers = [start_worker(env=on_private_pg), start_worker(env=on_private_pg)]
    wait_for(lambda: ActivityRun.objects.count() >= 6, timeout=UPPER, what="the run to be under way")
    assert not all_closed()
    if mode == "fast":
        private_pg.restart("fast")
    else:
        private_pg.stop("immediate")  # a crash: recovery from WAL at the next start
        wait_for(
            lambda: any("Database error in the worker loop" in w.log() for w in workers),
            timeout=UPPER,
            what="a worker to notice the outage",
        )
        private_pg.start()
    connection.close()  # ours died with the server too

    wait_for(lambda: mix.tend() or all_closed(), timeout=2 * UPPER, what="every workflow to close")
    stop(*workers)
    assert any("Database reachable again." in w.log() for w in workers)
    verdict(mix.expected).assert_ok()


# -- connections terminated mid-claim and mid-commit ------------------------------------------


def raw_connection() -> Any:
    """A psycopg connection of our own to the test database (autocommit)."""
    import psycopg

    s = connection.settings_dict
    return psycopg.connect(
        host=s["HOST"],
        port=s["PORT"],
        user=s["USER"],
        password=s["PASSWORD"] or None,
        dbname=s["NAME"],
        autocommit=True,
    )


def backends(where: str, params: list[Any] | None = None) -> list[int]:
    """Other sessions on the test database matching ``where`` (SQL on pg_stat_activity)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            f"AND ({where})",
            params or [],
        )
        return [pid for (pid,) in cursor.fetchall()]


def terminate(pids: list[int]) -> None:
    with connection.cursor() as cursor:
        for pid in pids:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


@postgres_only
def test_connection_terminated_mid_claim(start_worker):
    """The worker's claim statement waits on a table lock; its connection is terminated
    right there. The worker reconnects and loses nothing."""
    handle = durable.start_workflow(sequence, "mid-claim", 2, workflow_id="mid-claim")
    with raw_connection() as locker:
        locker.execute("BEGIN")
        locker.execute(f'LOCK TABLE "{WorkItem._meta.db_table}" IN EXCLUSIVE MODE')  # blocks claims, not reads
        worker = start_worker()
        claiming = wait_for(
            lambda: backends("wait_event_type = 'Lock' AND query LIKE %s", ["%picked%"]),
            timeout=UPPER,
            what="the worker's claim to wait on the lock",
        )
        terminate(claiming)
        locker.execute("ROLLBACK")
    assert handle.result(timeout=UPPER) == 2
    stop(worker)
    log = worker.log()
    assert "Database error in the worker loop" in log and "Database reachable again." in log, log
    assert runs("mid-claim:0") == [1] and runs("mid-claim:1") == [1]
    verdict({"mid-claim": 2}).assert_ok()


@postgres_only
@pytest.mark.parametrize("point", ["before_task_commit", "before_activity_commit"])
def test_connection_terminated_mid_commit(start_worker, point):
    """The worker stops itself with its transaction written but not committed; its
    connection is terminated; woken, its commit fails. A workflow task's lease runs out
    and the task is done again, once; an activity's result is recorded again at once, on
    a new connection, and the activity does not run again."""
    key = f"mid-{point}".replace("_", "-")
    handle = durable.start_workflow(retrying, key, 0, workflow_id=key)
    env = {"DURABLE_CRASH_POINTS": f"{point}=stop"}
    if point == "before_activity_commit":
        # The attempt's lease must outlast the stop and the reconnect on a loaded machine:
        # the result is recorded again while the lease holds, never reaped.
        env["DURABLE_TEST_LEASE_SECONDS"] = "30"
    worker = start_worker(env=env)
    wait_stopped(worker, point)
    try:
        # Its own, and any other thread's the stop froze mid-transaction.
        open_transactions = backends("state = 'idle in transaction'")
        assert open_transactions
        terminate(open_transactions)
    finally:
        worker.signal(signal.SIGCONT)
    if point == "before_task_commit":
        assert handle.result(timeout=UPPER) == 1
        message = "Database error in the worker loop"
        assert runs(key) == [1]
        stop(worker)
        assert message in worker.log() and "Reaped" in worker.log(), worker.log()
    else:
        assert handle.result(timeout=UPPER) == 1
        assert runs(key) == [1]
        stop(worker)
        assert "Database error recording 1 activities (flaky); recording them again" in worker.log(), worker.log()
        assert "Reaped" not in worker.log(), worker.log()
    verdict({key: runs(key)[-1]}).assert_ok()


@server_only
def test_a_worker_frozen_inside_a_transaction_does_not_stall_the_others(start_worker):
    """A worker frozen (GC pause, suspended VM) with a workflow task's transaction open
    holds that run's row lock. Its lease runs out; the other workers must go on serving
    every other run meanwhile."""
    stuck = durable.start_workflow(retrying, "frozen-in-txn", 0, workflow_id="frozen-in-txn")
    first = start_worker(env={"DURABLE_CRASH_POINTS": "before_task_commit=stop"})
    wait_stopped(first, "before_task_commit")
    try:
        task = WorkItem.objects.get(instance__run_id=stuck.run_id, kind=WorkItemKind.WORKFLOW)
        second = start_worker()
        wait_ready(second)
        wait_for(
            lambda: db_now() > task.lease_expires_at + datetime.timedelta(seconds=1),
            timeout=UPPER,
            what="the frozen worker's lease to expire",
        )
        other = durable.start_workflow(sequence, "unaffected", 1, workflow_id="unaffected")
        # Stalled, it would wait for the frozen worker, which only the finally below wakes.
        assert other.result(timeout=UPPER) == 1
    finally:
        first.signal(signal.SIGCONT)
    # The activity the frozen task scheduled was leased to it from the frozen transaction's
    # start: it may be born expired, be reaped and run again (attempt 2); the late attempt's
    # outcome is fenced either way.
    result = stuck.result(timeout=UPPER)
    assert result in (1, 2)
    stop(first, second)
    verdict({"frozen-in-txn": result, "unaffected": 1}).assert_ok()


# -- a worker whose clock is hours off ------------------------------------------------------


def faketime_library() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    return found[0] if found else None


@server_only
def test_workers_with_clocks_hours_off_neither_steal_leases_nor_fire_timers_early(start_worker, tmp_path):
    """Leases, due times and retries are compared with the database server's clock: a worker 3 h
    ahead must not reap the lease of one 3 h behind, nor fire a timer early. (On SQLite
    every process is its own database clock, so there a skewed clock is a skewed database.)"""
    library = faketime_library()
    if library is None:
        cannot_run("Debian's faketime is not installed (apt-get install faketime)")

    # Longer than the suite's 2 s: a lease lost here must be the skew's doing, not a loaded
    # machine starving the renewer (which a 2 s lease does not survive for long).
    lease = 6.0

    def skewed(offset: str) -> dict[str, str]:
        # Only the wall clock is off: monotonic clocks do not follow a wrong time of day.
        # (libfaketime then breaks time.sleep(), which the worker does not use.)
        return {
            "LD_PRELOAD": library,
            "FAKETIME": offset,
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "DURABLE_TEST_LEASE_SECONDS": str(lease),
        }

    probe = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **skewed("+3h")},
        timeout=UPPER,
    )
    assert abs(float(probe.stdout) - time.time() - 3 * 3600) < 600, probe  # the skew does apply

    held = durable.start_workflow(retrying, "skewed", 0, workflow_id="skewed")
    behind = start_worker(env={**skewed("-3h"), **holding("before_activity_completion", tmp_path)})
    release = wait_held(tmp_path, behind, "before_activity_completion")
    ahead = start_worker(env=skewed("+3h"))
    wait_ready(ahead)
    timed = durable.start_workflow(sleeper, 2.0, workflow_id="skewed-timer")

    # The attempt stays with the worker 3 h behind (its thread parked, its lease renewed)
    # while the one 3 h ahead looks for expired leases.
    item = WorkItem.objects.get(instance__run_id=held.run_id, kind=WorkItemKind.ACTIVITY)
    wait_for(
        lambda: db_now() > item.claimed_at + datetime.timedelta(seconds=2 * lease),
        timeout=UPPER,
        what="two lease periods",
    )
    item.refresh_from_db()
    assert item.attempt == 1 and f":{behind.pid}:" in item.lease_owner and item.lease_expires_at > db_now()
    release.unlink()
    assert held.result(timeout=UPPER) == 1
    result = timed.result(timeout=UPPER)
    stop(behind, ahead)
    assert "Reaped" not in behind.log() + ahead.log()
    assert runs("skewed") == [1]
    assert result["slept"] >= 2.0
    for fired in HistoryEvent.objects.filter(instance__run_id=timed.run_id, kind=EventKind.TIMER_FIRED):
        assert fired.timestamp >= datetime.datetime.fromisoformat(fired.payload["fire_at"]), fired.payload
    verdict({"skewed": 1, "skewed-timer": result}).assert_ok()


# -- a short seeded chaos soak -------------------------------------------------------------------


@postgres_only
def test_a_short_seeded_chaos_session(tmp_path):
    """benchmarks/chaos.py for 25 s: kills, pauses, crash points, terminated connections and a
    PostgreSQL restart, then the checker: nothing lost, nothing duplicated."""
    reason = pgcluster.unavailable()
    if reason:
        cannot_run(f"no private PostgreSQL cluster for the soak: {reason}")
    log = tmp_path / "chaos.jsonl"
    command = [
        sys.executable,
        "benchmarks/chaos.py",
        "--seed",
        "7",
        "--duration",
        "25",
        "--workers",
        "3",
        "--db-name",
        "chaos_ci",
        "--log",
        str(log),
        "--workdir",
        str(tmp_path / "workers"),
    ]
    proc = subprocess.run(
        command,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    verdicts = [line for line in lines if line["op"] == "verdict"]
    assert proc.returncode == 0 and verdicts, f"{proc.stdout}\n{proc.stderr}"
    counts = verdicts[-1]["counts"]
    assert counts["lost"] == counts["duplicated"] == counts["wrong"] == counts["stuck"] == 0, counts
    assert counts["workflows"] >= 100 and counts["activities"] >= 200, counts
    assert counts["db_restarts"] == 1, counts
    assert counts["kills"] + counts["pauses"] + counts["crash_point_exits"] >= 3, counts
    assert {"start", "signal", "complete_token", "db_up", "drained"} <= {line["op"] for line in lines}
