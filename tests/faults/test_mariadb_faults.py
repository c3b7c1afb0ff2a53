"""MariaDB's own faults on real ``durable_worker`` processes: ``KILL`` of a worker's
connection mid-claim and mid-commit, and a short chaos soak of ``KILL QUERY`` and
``KILL CONNECTION`` at random worker sessions, each ended by the checker
(tests/faults/invariants.py).

A worker's sessions are found in information_schema.PROCESSLIST: those on the test
database other than the test's own. Every wait awaits an event (a session's state, a
log line, a file, a row), with a generous bound; nothing sleeps a fixed time for
correctness.
"""

from __future__ import annotations

import collections
import random
import re
import threading
import time
from typing import Any

import pytest
from django.db import connection

import django_durable as durable
from django_durable.engine.events import EventKind
from django_durable.models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem, WorkItemKind
from tests.conftest import wait_for
from tests.faults.kit import UPPER, all_closed, completions, runs, stop, verdict, wait_held, wait_log, wait_ready
from tests.faults.test_scenarios import Mix, holding
from tests.testapp.models import ActivityRun
from tests.testapp.workflows import retrying, sequence

pytestmark = [
    pytest.mark.workers,
    pytest.mark.skipif(
        connection.vendor != "mysql", reason="MariaDB's KILL of a worker's connection: the MariaDB pass runs it"
    ),
]

# MariaDB's errors a killed session's client sees (mysqlclient's OperationalError codes).
INTERRUPTED = "1317"  # KILL QUERY: "Query execution was interrupted"; the connection lives on
LOST = ("2013", "2006")  # KILL CONNECTION: "Lost connection ...", "Server has gone away"


def raw_connection() -> Any:
    """A mysqlclient connection of our own to the test database (autocommit): its
    session is not one of the test's Django connections."""
    import MySQLdb

    s = connection.settings_dict
    return MySQLdb.connect(
        host=s["HOST"] or "127.0.0.1",
        port=int(s["PORT"] or 3306),
        user=s["USER"],
        password=s["PASSWORD"] or "",
        database=s["NAME"],
        autocommit=True,
    )


def own_session() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        return int(cursor.fetchone()[0])


def sessions(where: str = "TRUE", params: list[Any] | None = None, *, besides: tuple[int, ...] = ()) -> list[int]:
    """The other sessions on the test database matching ``where`` (SQL on PROCESSLIST, aliased p)."""
    excluded = ", ".join(["CONNECTION_ID()", *(str(int(session)) for session in besides)])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.ID FROM information_schema.PROCESSLIST p "
            f"WHERE p.DB = DATABASE() AND p.ID NOT IN ({excluded}) AND ({where}) ORDER BY p.ID",
            params or [],
        )
        return [int(session) for (session,) in cursor.fetchall()]


# InnoDB refreshes its copy of INNODB_TRX only when nobody read it for 0.1 s: a poll more often
# than that reads the same stale copy for ever.
TRX_POLL = 0.25


def open_writers() -> set[tuple[int, int]]:
    """(session, transaction) of other sessions idle inside a transaction that wrote rows:
    a thread parked before its commit. (A worker's idle claims, reaps and timer scans write
    nothing; its lease renewals commit at once.)"""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.ID, t.trx_id FROM information_schema.INNODB_TRX t "
            "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
            "WHERE p.DB = DATABASE() AND p.ID <> CONNECTION_ID() AND p.COMMAND = 'Sleep' AND t.trx_rows_modified > 0"
        )
        return {(int(session), int(trx)) for session, trx in cursor.fetchall()}


def parked_writer() -> tuple[int, int]:
    """The one (session, transaction) of ``open_writers()`` seen open on two looks in a row."""
    seen: set[tuple[int, int]] = set()

    def twice() -> set[tuple[int, int]]:
        nonlocal seen
        now = open_writers()
        both, seen = seen & now, now
        return both

    writers = wait_for(twice, timeout=UPPER, interval=TRX_POLL, what="a transaction parked before its commit")
    assert isinstance(writers, set) and len(writers) == 1, writers
    return next(iter(writers))


def transaction_alive(trx: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM information_schema.INNODB_TRX WHERE trx_id = %s", [trx])
        return bool(cursor.fetchone()[0])


def kill(session: int, what: str = "CONNECTION") -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"KILL {what} {int(session)}")


def lock_wait_of_claims(locker: int) -> list[int]:
    """Sessions whose claim (the only locking read of work items that skips locked rows,
    while nothing is leased) waits on the table lock ``locker`` holds."""
    return sessions(
        "p.STATE = 'Waiting for table metadata lock' AND p.INFO LIKE %s AND p.INFO LIKE %s",
        [f"%{WorkItem._meta.db_table}%", "%SKIP LOCKED%"],
        besides=(locker,),
    )


# -- KILL mid-claim -------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["CONNECTION", "QUERY"])
def test_kill_mid_claim(start_worker, what):
    """The worker's claim transaction waits on a table lock (LOCK TABLES ... READ lets its
    plain reads through and stops its locking read); its session is killed right there.
    The worker claims again and loses nothing."""
    key = f"kill-mid-claim-{what.lower()}"
    handle = durable.start_workflow(sequence, key, 2, workflow_id=key)
    locker = raw_connection()
    try:
        with locker.cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID()")
            (locker_id,) = cursor.fetchone()
            cursor.execute(f"LOCK TABLES `{WorkItem._meta.db_table}` READ")
        worker = start_worker()
        (claiming,) = wait_for(
            lambda: lock_wait_of_claims(locker_id), timeout=UPPER, what="the worker's claim to wait on the lock"
        )
        assert WorkflowInstance.objects.get(workflow_id=key).history_length == 1
        kill(claiming, what)
        wait_log(worker, "Database error in the worker loop")
        if what == "CONNECTION":
            wait_for(lambda: claiming not in sessions(), timeout=UPPER, what=f"session {claiming} to end")
        # Back in its loop, it claims again: on a new session after KILL CONNECTION.
        again = wait_for(
            lambda: [s for s in lock_wait_of_claims(locker_id) if what == "QUERY" or s != claiming],
            timeout=UPPER,
            what="the worker to claim again",
        )
        assert again
        with locker.cursor() as cursor:
            cursor.execute("UNLOCK TABLES")
    finally:
        locker.close()
    assert handle.result(timeout=UPPER) == 2
    stop(worker)
    log = worker.log()
    assert "Database reachable again." in log, log
    assert (INTERRUPTED in log) if what == "QUERY" else any(code in log for code in LOST), log
    assert runs(f"{key}:0") == [1] and runs(f"{key}:1") == [1]
    verdict({key: 2}).assert_ok()


# -- KILL mid-commit ------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["before_task_commit", "before_activity_commit"])
def test_kill_mid_commit(start_worker, tmp_path, point):
    """A worker's thread is held with its transaction written but not committed (the rest
    of the worker goes on); its session is killed, which rolls the transaction back; let
    go, its commit fails. Nothing is lost and nothing is recorded twice: a workflow task is
    done again, once; an activity's result is recorded again, and the activity does not
    run again."""
    key = f"kill-{point}".replace("_", "-")
    handle = durable.start_workflow(retrying, key, 0, workflow_id=key)
    env = holding(point, tmp_path)
    if point == "before_activity_commit":
        # The attempt's lease must outlast the hold and the reconnect on a loaded machine:
        # the result is recorded again while the lease holds, never reaped.
        env["DURABLE_TEST_LEASE_SECONDS"] = "30"
    worker = start_worker(env=env)
    held = wait_held(tmp_path, worker, point)
    try:
        session, trx = parked_writer()
        kill(session)
        wait_for(
            lambda: not transaction_alive(trx) and session not in sessions(),
            timeout=UPPER,
            interval=TRX_POLL,
            what=f"transaction {trx} of session {session} to be rolled back",
        )
        # Rolled back: the workflow task's work item, or the attempt's, is still there, leased.
        kind = WorkItemKind.WORKFLOW if point == "before_task_commit" else WorkItemKind.ACTIVITY
        item = WorkItem.objects.get(instance__run_id=handle.run_id, kind=kind)
        assert item.attempt == 1 and f":{worker.pid}:" in (item.lease_owner or ""), item.lease_owner
    finally:
        held.unlink()
    assert handle.result(timeout=UPPER) == 1
    stop(worker)
    log = worker.log()
    assert any(code in log for code in LOST), log
    if point == "before_task_commit":
        # Its lease ran out once the loop let go of it; the task was done again, once.
        assert "Database error in the worker loop" in log and "Reaped workflow retrying" in log, log
        assert re.search(r"Claimed workflow retrying \(item \d+, attempt 2\)", log), log
    else:
        assert "Database error recording 1 activities (flaky); recording them again" in log, log
        assert "Reaped" not in log, log
    assert runs(key) == [1], log
    assert completions(handle) == [(EventKind.ACTIVITY_COMPLETED, 1)]
    verdict({key: 1}).assert_ok()


# -- a short chaos soak of KILLs ------------------------------------------------------------------


class Killer(threading.Thread):
    """KILLs worker sessions at random, every so often, from sessions of its own, as a DBA
    or pt-kill would: most often a statement caught waiting (it stalls writers of one of
    the engine's tables for a moment with LOCK TABLES ... READ, then kills a session that
    waits on it, mid-transaction), else any worker session, idle or not. A ``KILL QUERY``
    fails the statement and leaves the session; a ``KILL CONNECTION`` ends the session."""

    TABLES = (WorkItem, WorkflowInstance, HistoryEvent, InboxEvent, ActivityRun)

    def __init__(self, seed: int, spared: int) -> None:
        super().__init__(name="killer", daemon=True)
        self.rng = random.Random(seed)
        self.spared = spared
        self.halt = threading.Event()
        self.kills: collections.Counter[str] = collections.Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            killer, locker = raw_connection(), raw_connection()
            try:
                with locker.cursor() as cursor:
                    cursor.execute("SET SESSION lock_wait_timeout = 5")  # a long transaction: skip this round
                self._loop(killer.cursor(), locker.cursor())
            finally:
                killer.close()
                locker.close()
        except BaseException as exc:
            self.error = exc

    def _workers(self, cursor: Any, locker: int, waiting: bool) -> list[tuple[int, str]]:
        cursor.execute(
            "SELECT ID, INFO FROM information_schema.PROCESSLIST WHERE DB = DATABASE() "
            "AND ID NOT IN (CONNECTION_ID(), %s, %s)" + (" AND STATE = 'Waiting for table metadata lock'" * waiting),
            [self.spared, locker],
        )
        return [(int(session), (info or "idle").split(None, 1)[0].upper()) for session, info in cursor.fetchall()]

    def _loop(self, cursor: Any, locker: Any) -> None:
        import MySQLdb

        locker.execute("SELECT CONNECTION_ID()")
        (locker_id,) = locker.fetchone()
        while not self.halt.wait(self.rng.uniform(0.1, 0.5)):  # pacing only
            what = self.rng.choice(["QUERY", "CONNECTION"])
            stall = what == "QUERY" or self.rng.random() < 0.5
            targets: list[tuple[int, str]] = []
            try:
                if stall:
                    table = self.rng.choice(self.TABLES)._meta.db_table
                    locker.execute(f"LOCK TABLES `{table}` READ")
                    for _ in range(100):  # up to a second or so, for a writer to come along
                        targets = self._workers(cursor, locker_id, waiting=True)
                        if targets or self.halt.wait(0.01):
                            break
                else:
                    targets = self._workers(cursor, locker_id, waiting=False)
                if targets:
                    session, statement = self.rng.choice(targets)
                    cursor.execute(f"KILL {what} {session}")
                    self.kills[f"{what} {statement if stall else 'any'}"] += 1
            except MySQLdb.OperationalError as exc:
                # 1094: the session ended meanwhile; 1205: our LOCK TABLES waited out a transaction.
                if exc.args[0] not in (1094, 1205):
                    raise
            finally:
                if stall:
                    locker.execute("UNLOCK TABLES")

    def count(self, what: str) -> int:
        return sum(n for kind, n in list(self.kills.items()) if kind.startswith(what))  # read while the killer counts


def test_a_short_chaos_soak_of_kills(start_worker, tmp_path):
    """Three workers run a mix of workflows (activities in sequence and fanned out, timers,
    children, signals, task tokens, retries) while KILL QUERY and KILL CONNECTION hit their
    sessions for 20 s or more; then the kills stop, everything must finish, and the checker pass."""
    rng = random.Random(18)
    workers = [start_worker(concurrency=concurrency) for concurrency in (2, 4, 4)]
    wait_ready(*workers)
    killer = Killer(seed=18, spared=own_session())
    mixes: list[Mix] = []
    killer.start()
    try:
        # 20 s at least; then on until the kills counted below happened (the killer's
        # chances depend on the machine's speed), within a generous bound.
        start = time.monotonic()

        def soaked() -> bool:
            elapsed = time.monotonic() - start
            enough = killer.count("CONNECTION") >= 8 and killer.count("QUERY") >= 5
            return elapsed >= UPPER or (elapsed >= 20 and enough)

        while not soaked() and killer.is_alive():
            mixes.append(Mix(rng, 3, tmp_path / "tokens", f"s{len(mixes)}-"))
            for mix in mixes:
                mix.tend(rng)
            killer.halt.wait(0.5)  # pacing: a few new workflows a second
    finally:
        killer.halt.set()
        killer.join(UPPER)
    assert killer.error is None, repr(killer.error)

    def settled() -> bool:
        for mix in mixes:
            mix.tend()
        return all_closed()

    wait_for(settled, timeout=2 * UPPER, what="every workflow to close")
    stop(*workers)
    expected = {wid: outcome for mix in mixes for wid, outcome in mix.expected.items()}
    result = verdict(expected)
    assert result.ok, f"{result.summary()}\nkills: {dict(killer.kills)}"
    logs = "".join(worker.log() for worker in workers)
    assert killer.count("CONNECTION") >= 8 and killer.count("QUERY") >= 5, killer.kills
    # The kills reached the workers (mid-statement), which saw only database errors.
    assert INTERRUPTED in logs and any(code in logs for code in LOST), killer.kills
    assert "Unexpected error" not in logs, logs
    assert result.counts["workflows"] >= 45 and result.counts["activities"] >= 45, result.counts
    assert result.counts["children"] >= 2 and result.counts["signals"] >= 1 and result.counts["timers"] >= 2
