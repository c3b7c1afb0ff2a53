"""Helpers shared by tests/faults/test_crash_points.py and tests/faults/test_scenarios.py.

Every wait awaits an event (a log line, a row, a process state) with a generous
upper bound; nothing sleeps a fixed time.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

import django_durable as durable
from django_durable.engine.events import EventKind
from django_durable.faults import DEFAULT_EXIT_CODE
from django_durable.models import OPEN_STATUSES, WorkflowInstance
from tests.conftest import WorkerProcess, wait_for
from tests.faults.invariants import Verdict, check
from tests.testapp.models import ActivityRun

LEASE = 2.0  # tests.settings DURABLE["LEASE_SECONDS"]
UPPER = 60.0  # an upper bound on any single wait, never an expected duration
ON_POSTGRES = os.environ.get("DURABLE_TEST_DB", "sqlite") == "postgres"
# CI (and dev.py --require-postgres) must fail, not skip, a scenario it cannot run.
REQUIRED = os.environ.get("CI", "").lower() in ("true", "1") or os.environ.get("DURABLE_REQUIRE_POSTGRES") == "1"


def cannot_run(reason: str) -> None:
    """Skip, or in CI fail, a scenario whose tools are missing."""
    if REQUIRED:
        pytest.fail(f"{reason} (required here: CI or --require-postgres)")
    pytest.skip(reason)


def runs(key: str) -> list[int]:
    """The attempts of every recorded execution of the activity keyed ``key``, in order."""
    return list(ActivityRun.objects.filter(key=key).order_by("id").values_list("attempt", flat=True))


def wait_log(worker: WorkerProcess, text: str, count: int = 1, timeout: float = UPPER) -> str:
    wait_for(
        lambda: worker.log().count(text) >= count,
        timeout=timeout,
        what=f"{text!r} x{count} in the log of worker {worker.pid}",
    )
    return worker.log()


def wait_ready(*workers: WorkerProcess) -> None:
    for worker in workers:
        wait_log(worker, " started on queues")


def stop(*workers: WorkerProcess) -> None:
    """The first SIGTERM to ready workers: each exits 0 (a signal before the handler is
    installed, while Django still boots, would kill the process with -15)."""
    wait_ready(*workers)
    for worker in workers:
        worker.terminate()
    for worker in workers:
        assert worker.wait(UPPER) == 0, worker.log()


def wait_file(path: Path, timeout: float = UPPER) -> str:
    wait_for(path.exists, timeout=timeout, what=f"{path} to exist")
    return path.read_text()


def crashed_at(worker: WorkerProcess, point: str) -> str:
    """Wait for ``worker`` to exit at crash point ``point``; its log."""
    code = worker.wait(UPPER)
    log = worker.log()
    assert code == DEFAULT_EXIT_CODE, f"exit code {code}, not the crash point's {DEFAULT_EXIT_CODE}:\n{log}"
    assert f"django-durable crash point {point} reached" in log, log
    return log


def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat: R, S, T (stopped), Z, ..."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def wait_stopped(worker: WorkerProcess, point: str) -> None:
    """Wait until ``worker`` stopped itself (SIGSTOP) at crash point ``point``."""
    wait_for(
        lambda: f"django-durable crash point {point} reached" in worker.log() and process_state(worker.pid) == "T",
        timeout=UPPER,
        what=f"worker {worker.pid} to stop at {point}",
    )


def held_file(folder: Path, worker: WorkerProcess, point: str) -> Path:
    """The file a worker armed with ``<point>=hold`` (and DURABLE_CRASH_DIR=folder) parks on."""
    return folder / f"held-{point}-{worker.pid}"


def wait_held(folder: Path, worker: WorkerProcess, point: str) -> Path:
    held = held_file(folder, worker, point)
    wait_for(held.exists, timeout=UPPER, what=f"worker {worker.pid} to hold at {point}")
    return held


def holds_transaction() -> bool:
    """Whether another process holds a write transaction (SQLite's one write lock) or any
    open transaction or running statement (PostgreSQL, MariaDB) on the test database."""
    if connection.vendor == "sqlite":
        probe = sqlite3.connect(connection.settings_dict["NAME"], timeout=0.05, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            probe.close()
    if connection.vendor == "mysql":
        # InnoDB serves INNODB_TRX from a copy it refreshes only when nobody read it for 0.1 s:
        # the second read, 0.15 s after the first, sees the other sessions' transactions as they are.
        for _ in range(2):
            time.sleep(0.15)
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM information_schema.PROCESSLIST p "
                    "LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID "
                    "WHERE p.DB = DATABASE() AND p.ID <> CONNECTION_ID() "
                    "AND (p.COMMAND = 'Query' OR t.trx_id IS NOT NULL)"
                )
                (count,) = cursor.fetchone()
        return bool(count)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')"
        )
        return bool(cursor.fetchone()[0])


def freeze(worker: WorkerProcess) -> None:
    """SIGSTOP ``worker`` at a moment it holds no transaction. (Frozen inside one it would
    stall every other worker: SQLite has one write lock, and PostgreSQL's reaper waits on
    the run's row lock. That is not what these scenarios are about.)"""
    deadline = time.monotonic() + UPPER
    while True:
        worker.signal(signal.SIGSTOP)
        wait_for(lambda: process_state(worker.pid) == "T", timeout=UPPER, what=f"worker {worker.pid} to stop")
        if not holds_transaction():
            return
        worker.signal(signal.SIGCONT)
        if time.monotonic() > deadline:
            pytest.fail(f"worker {worker.pid} never stopped outside a transaction")
        time.sleep(0.01)  # let it finish that transaction


def completions(handle: durable.WorkflowHandle) -> list[tuple[str, int]]:
    """The run's activity outcomes in history: (kind, attempt)."""
    return [
        (e.kind, e.payload.get("attempt"))
        for e in handle.history()
        if e.kind in (EventKind.ACTIVITY_COMPLETED, EventKind.ACTIVITY_FAILED)
    ]


def all_closed() -> bool:
    return not WorkflowInstance.objects.filter(status__in=OPEN_STATUSES).exists()


def verdict(expected: Mapping[str, Any] | None = None, **options: Any) -> Verdict:
    """The checker over the whole test database, with ActivityRun as the side effects."""
    return check(expected, side_effects=ActivityRun.objects.values_list("key", "attempt"), **options)


def assert_no_trouble(*workers: WorkerProcess) -> None:
    for worker in workers:
        log = worker.log()
        assert "Traceback" not in log and "Unexpected error" not in log, log
