#!/usr/bin/env python3
"""django-durable throughput and latency harness (a benchmark, not a test).

    python benchmarks/run.py --db postgres --workflows 200 --steps 10 --workers 2
    python benchmarks/run.py --db postgres --workflows 50 --steps 10 --workers 2 --fanout
    python benchmarks/run.py --db sqlite --workflows 100 --steps 10 --workers 1
    python benchmarks/run.py --db postgres --workflows 1000 --steps 10 --workers 0   # start only
    python benchmarks/run.py --db postgres --idle --workflows 20 --steps 1 --spacing 0.1 --workers 2
    python benchmarks/run.py --db mariadb --workflows 200 --steps 10 --workers 2
    python benchmarks/run.py --db mariadb --idle --workflows 20 --steps 1 --spacing 3 --spacing-jitter 1 --workers 2

Run it with the project's virtualenv (Django, psycopg; mysqlclient for MariaDB):
``.venv/bin/python benchmarks/run.py`` (``python3 dev.py test`` creates .venv). Options: ``--help``.

What one run does, in order:

1. Creates a fresh database: PostgreSQL ``durable_bench`` (dropped and created
   through psycopg on the ``postgres`` or ``test`` maintenance database), MariaDB
   ``durable_bench`` (utf8mb4, utf8mb4_bin, through MySQLdb; BENCH_MARIADB_* for the
   server) or a new SQLite file under benchmarks/results/; migrates it.
2. Starts N workflows with ``start_workflow`` before any worker runs (timed on
   its own; by default each start is its own transaction, as in a web request).
3. Spawns W ``python -m django durable_worker --settings benchmarks.settings``
   subprocesses (POLL_INTERVAL 0.01 s, LEASE_SECONDS 30), polls the database
   until all N runs are closed, then stops the workers with SIGTERM.
4. Computes from the database and /proc: wall time, workflows/s, activity
   steps/s, activity latencies from history, CPU per step; prints a table and
   writes JSON (default benchmarks/results/<timestamp>.json).

With ``--warmup`` the workers start first and each runs a short workflow (then
purged) before the N workflows are started, in one transaction; "spawn" below then
means that start. Use it when N x K is small and worker start-up would weigh on the
per-step figures (compare.py's history-growth series).

With ``--idle`` it measures latency with idle workers instead: it spawns the W
workers first, waits until each has written its heartbeat row, runs W warm-up
workflows to completion, lets the workers sit idle for ``--idle-settle`` s, then
starts the N workflows one at a time, ``--spacing`` s apart (each start its own
transaction, as in a web request), and reports per workflow: start to the first
workflow-task claim, the activities' schedule-to-start, and start to close. The
workers' POLL_INTERVAL is then the product's default unless ``--poll-interval``
is given, so the figure shows how fast an idle worker wakes up, not how often
the harness makes it poll. Without LISTEN/NOTIFY (MariaDB, SQLite) a worker polls,
waiting 0.05 s after work and doubling the wait up to POLL_INTERVAL: a short
``--spacing`` measures a recently busy worker, a spacing of a few POLL_INTERVALs with
``--spacing-jitter`` (a random extra per gap, so that starts fall at every phase of the
polls) one that has been idle long.

Then (``--idle-load``, 20 s by default) the database load of one idle worker: all
workers but the first are stopped and, with the harness's own connection closed, the
database's counters are read over the window with that worker idle, then over a window
as long with no worker at all (the baseline: whatever else uses the server); the
worker's figure is the difference. MariaDB: statements (SHOW GLOBAL STATUS
``Questions``, server-wide; the reading connection's own statements subtracted) and
the ``Com_*`` commands among them. PostgreSQL: transactions of the benchmark database
(pg_stat_database ``xact_commit + xact_rollback``; every autocommit statement is one,
so not the same unit; backends report at most once a second). Also the worker's and the
database server's CPU, and the connections the idle worker holds.

Definitions (also written into the JSON):

- ``elapsed_s``: from spawning the workers (harness wall clock) to the last
  ``closed_at`` (database clock; same machine). Includes worker start-up.
- ``steady_elapsed_s``: from the first ``WorkflowTaskStarted`` event (the first
  claim by any worker) to the last ``closed_at``.
- ``steps``: N * K activity executions; ``steps_per_s = steps / elapsed_s``.
- ``schedule_to_close``: ``ActivityCompleted.timestamp - ActivityScheduled.timestamp``.
  ``ActivityScheduled`` carries the time the *scheduling workflow task was
  claimed*, so this includes that task's replay and commit, the wait in the
  queue, the claim, the (no-op) activity and the commit of its result.
- ``schedule_to_start``: the no-op activity returns ``time.time()`` when it
  starts; minus ``ActivityScheduled.timestamp``. Same start point as above.
- CPU per step: CPU time (user + system, from /proc) of the worker processes,
  of the whole database server (PostgreSQL: every live ``postgres`` process plus
  the backends the postmaster reaped meanwhile, so short-lived connections count;
  MariaDB: the one ``mariadbd``/``mysqld`` process, whose /proc stat sums all its
  threads, exited ones included; either way other databases' load on the same
  server would count too), of the harness,
  and of the whole machine (/proc/stat; "other" is the rest), between the
  first observed workflow task claim (polled every 20 ms) and the last
  completion observed (polled every 50 ms), divided by N * K.
  The JSON also has /proc/stat's user/system/softirq/steal split of the machine's
  time and the busiest other processes, to show what else competed for the CPUs.
- ``postgres``: from pg_stat_database, between just before the workers are
  spawned and just after they exit: connections opened (``sessions``) and
  transactions committed by the workers (every autocommit query is one, read-only
  ones included; the harness's own polling queries are subtracted), per step.
- ``mariadb``: from SHOW GLOBAL STATUS, server-wide (other clients of the server
  count too), between the same two moments: connections opened (``Connections``),
  statements (``Questions``; the harness's own, read from its session's status,
  subtracted), commits (``Com_commit``: explicit COMMITs; autocommit statements are
  not counted there) and every ``Com_*`` command that moved, per step.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Expected on every run (the harness stops the workers with SIGTERM): counted apart.
SHUTDOWN_NOTICE = re.compile(r"SIGTERM received|Worker .* stopped")

LOG_PATTERNS = {
    "database_is_locked": re.compile(r"database is locked", re.IGNORECASE),
    "error_lines": re.compile(r"\bERROR\b"),
    "warning_lines": re.compile(r"\bWARNING\b"),
    "tracebacks": re.compile(r"^Traceback"),
    "lease_lost": re.compile(r"Lost the lease|no longer leased|discarded"),
    "reaped": re.compile(r"Reaped "),
    "serialization_failures": re.compile(r"could not serialize|deadlock detected", re.IGNORECASE),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=["sqlite", "postgres", "mariadb"], default="sqlite")
    p.add_argument("--workflows", "-n", type=int, default=100, help="N: workflows to start")
    p.add_argument("--steps", "-k", type=int, default=10, help="K: no-op activities per workflow")
    p.add_argument(
        "--workers",
        "-w",
        type=int,
        default=1,
        help="W: durable_worker processes (0: only time the start)",
    )
    p.add_argument(
        "--fanout",
        action="store_true",
        help="K activities in parallel (wait_all) instead of in sequence",
    )
    p.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=None,
        help="activity threads per worker (durable_worker --concurrency; default: the setting, 4)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="DURABLE POLL_INTERVAL for the workers (default 0.01 s; with --idle the product's default)",
    )
    p.add_argument(
        "--idle",
        action="store_true",
        help="latency with idle workers: start the N workflows one at a time, --spacing s apart, "
        "after the workers have started and gone idle",
    )
    p.add_argument("--spacing", type=float, default=0.1, help="--idle: seconds between two starts")
    p.add_argument(
        "--spacing-jitter",
        type=float,
        default=0.0,
        help="--idle: add a uniformly random 0..J s to each gap (seeded), so that the starts of a polling "
        "worker's run fall at every phase of its polls",
    )
    p.add_argument(
        "--idle-load",
        type=float,
        default=20.0,
        help="--idle: afterwards, seconds of the database-load window with one idle worker (and as many "
        "with none, the baseline); 0 skips it",
    )
    p.add_argument(
        "--idle-settle",
        type=float,
        default=1.0,
        help="--idle: seconds the workers sit idle after the warm-up, before the first start",
    )
    p.add_argument(
        "--warmup",
        action="store_true",
        help="spawn the workers first, run and purge one 2-step workflow per worker, then start "
        "the N workflows in one transaction (for runs with few steps, where start-up would count)",
    )
    p.add_argument(
        "--db-name",
        default=None,
        help="PostgreSQL or MariaDB database to create and drop (default durable_bench), or SQLite file path "
        "(default benchmarks/results/<timestamp>.sqlite3)",
    )
    p.add_argument("--lease-seconds", type=float, default=30.0, help="DURABLE LEASE_SECONDS for the workers")
    p.add_argument(
        "--conn-max-age",
        default="0",
        help="CONN_MAX_AGE of the database for the harness: seconds, or 'none' for persistent "
        "connections (default 0, Django's default). Workers keep theirs open regardless "
        "(DURABLE['WORKER_CONN_MAX_AGE'] defaults to None)",
    )
    p.add_argument(
        "--start-in-one-transaction",
        action="store_true",
        help="start all N workflows in one transaction (default: one transaction per start)",
    )
    p.add_argument(
        "--prepared",
        action="store_true",
        help="PostgreSQL: the workers' connections use server-side binding and prepared statements "
        "(OPTIONS server_side_binding=True, prepare_threshold=5; Django's default is neither)",
    )
    p.add_argument(
        "--worker-verbosity",
        type=int,
        default=0,
        help="durable_worker -v (0: warnings and errors only, 1: a line per task)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=170.0,
        help="give up waiting for completion after this many s",
    )
    p.add_argument("--keep-db", action="store_true", help="do not drop the database / delete the SQLite file")
    p.add_argument(
        "--json",
        default=None,
        help="write the JSON here (default: benchmarks/results/<timestamp>.json)",
    )
    p.add_argument(
        "--log-dir",
        default=str(RESULTS_DIR),
        help="where the workers' logs go (default: benchmarks/results/)",
    )
    return p.parse_args()


# -- the machine --------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> dict[str, Any]:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain")),
        }
    except OSError:
        return {"commit": None, "dirty": None}


def busy_cpus(seconds: float = 1.0) -> float:
    """How many CPUs' worth of work the machine did over ``seconds`` (before the run: others' load)."""
    before = machine_cpu_seconds()
    time.sleep(seconds)
    return round((machine_cpu_seconds() - before) / seconds, 2)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# -- CPU accounting from /proc ------------------------------------------------------


def proc_cpu_seconds(pid: int, *, with_children: bool = False) -> float | None:
    """utime + stime of one process, in seconds (None if it is gone); with_children adds
    cutime + cstime, the CPU of the children it has reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    own = int(fields[11]) + int(fields[12])
    children = int(fields[13]) + int(fields[14]) if with_children else 0
    return (own + children) / CLK_TCK


STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_cpu_breakdown() -> dict[str, float]:
    """/proc/stat's first line, in CPU seconds since boot (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return {name: value / CLK_TCK for name, value in zip(STAT_FIELDS, values, strict=True)}


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot: user, nice, system, irq, softirq
    (all cores; idle, iowait and steal, the hypervisor's, excluded)."""
    b = machine_cpu_breakdown()
    return b["user"] + b["nice"] + b["system"] + b["irq"] + b["softirq"]


def postgres_cpu_seconds() -> dict[str, float]:
    """CPU seconds of the whole PostgreSQL server on this machine, exited backends included.

    Live processes named ``postgres`` (postmaster, backends of every database,
    background processes) plus the CPU of children the postmaster has reaped
    (``cutime + cstime``): backends that connected and exited meanwhile count too.
    """
    live = 0.0
    reaped = 0.0
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        live += (int(fields[11]) + int(fields[12])) / CLK_TCK
        count += 1
        if _is_postmaster(entry):
            reaped += (int(fields[13]) + int(fields[14])) / CLK_TCK
    return {"live": live, "reaped": reaped, "processes": count}


def _is_postmaster(entry: Path) -> bool:
    try:
        return not (entry / "cmdline").read_bytes().startswith(b"postgres:")
    except OSError:
        return False


MARIADB_COMMANDS = ("mariadbd", "mysqld")


def mariadb_server_pid() -> int | None:
    """The MariaDB (or MySQL) server on this machine: the first process named mariadbd/mysqld."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() in MARIADB_COMMANDS:
                return int(entry.name)
        except OSError:
            continue
    return None


def database_server_cpu_seconds(db: str) -> float | None:
    """CPU seconds of the whole database server (every database on it): PostgreSQL's processes
    with the backends reaped meanwhile; MariaDB's one process, whose /proc stat sums all its
    threads (a connection is a thread), exited ones included. None for SQLite (in-process)
    or a server that is not on this machine."""
    if db == "postgres":
        pg = postgres_cpu_seconds()
        return pg["live"] + pg["reaped"] if pg["processes"] else None
    if db == "mariadb":
        pid = mariadb_server_pid()
        return None if pid is None else proc_cpu_seconds(pid)
    return None


def server_command_prefixes(db: str) -> tuple[str, ...]:
    """How the measured database server's processes' command lines start (kept out of 'other')."""
    if db == "postgres":
        return ("postgres", "/usr/lib/postgresql")
    if db == "mariadb":
        return (*MARIADB_COMMANDS, *(f"/usr/sbin/{c}" for c in MARIADB_COMMANDS))
    return ()


def all_processes_cpu() -> dict[int, tuple[str, float]]:
    """Every process on the machine: pid -> (command line, CPU seconds incl. reaped children)."""
    out: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        cpu = proc_cpu_seconds(int(entry.name), with_children=True)
        if cpu is None:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmdline = ""
        out[int(entry.name)] = (cmdline.strip()[:160] or f"[{entry.name}]", cpu)
    return out


def top_other_processes(
    a: dict[int, tuple[str, float]],
    b: dict[int, tuple[str, float]],
    exclude: set[int],
    server_commands: tuple[str, ...],
    n: int = 5,
) -> list[dict[str, Any]]:
    """The processes (not ours, not the measured database server's) that used the most CPU
    between two snapshots, counting the children they reaped meanwhile (e.g. a test run's
    short-lived workers)."""
    used = []
    for pid, (cmd, cpu) in b.items():
        if pid in exclude or (server_commands and cmd.startswith(server_commands)):
            continue
        delta = cpu - (a.get(pid, ("", 0.0))[1])
        if delta > 0:
            used.append({"pid": pid, "cpu_s": round(delta, 2), "cmd": cmd})
    return sorted(used, key=lambda row: -row["cpu_s"])[:n]


def pg_database_stats(dbname: str) -> dict[str, int] | None:
    """Counters of ``dbname`` from pg_stat_database: sessions (connections, PostgreSQL 14+),
    committed and rolled-back transactions. Backends report them at least once a second
    and at disconnect."""
    import psycopg

    try:
        with psycopg.connect(dbname="postgres", autocommit=True, **pg_params()) as conn:
            row = conn.execute(
                "SELECT sessions, xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s",
                [dbname],
            ).fetchone()
    except psycopg.Error:
        return None
    if row is None:
        return None
    return {"sessions": int(row[0]), "xact_commit": int(row[1]), "xact_rollback": int(row[2])}


def cpu_snapshot(worker_pids: list[int], db: str) -> dict[str, Any]:
    snap: dict[str, Any] = {
        "t": time.monotonic(),
        "machine": machine_cpu_seconds(),
        "machine_breakdown": machine_cpu_breakdown(),
        "harness": proc_cpu_seconds(os.getpid()),
        "workers": {pid: proc_cpu_seconds(pid) for pid in worker_pids},
        "all": all_processes_cpu(),
    }
    snap["database_server"] = database_server_cpu_seconds(db)
    return snap


def cpu_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
    def summed(before: dict[int, float | None], after: dict[int, float | None]) -> float:
        # A process that appeared meanwhile counts from zero.
        return sum((after[pid] or 0.0) - (before.get(pid) or 0.0) for pid in after if after[pid] is not None)

    delta: dict[str, float | None] = {
        "interval_s": b["t"] - a["t"],
        "machine_busy_s": b["machine"] - a["machine"],
        "workers_s": summed(a["workers"], b["workers"]),
        "database_server_s": None,
    }
    if a["database_server"] is not None and b["database_server"] is not None:
        delta["database_server_s"] = b["database_server"] - a["database_server"]
    delta.update(
        {
            f"machine_{name}_s": b["machine_breakdown"][name] - a["machine_breakdown"][name]
            for name in STAT_FIELDS
            if name != "idle"
        }
    )
    delta["harness_s"] = (b["harness"] or 0.0) - (a["harness"] or 0.0)
    # Whatever else ran on the machine meanwhile (other programs, the kernel).
    delta["other_s"] = delta["machine_busy_s"] - sum(
        delta[k] or 0.0 for k in ("workers_s", "database_server_s", "harness_s")
    )
    return delta


# -- the database -------------------------------------------------------------------


def pg_params() -> dict[str, str]:
    return {
        "host": os.environ.get("BENCH_PG_HOST", "127.0.0.1"),
        "port": os.environ.get("BENCH_PG_PORT", "5432"),
        "user": os.environ.get("BENCH_PG_USER", "postgres"),
        "password": os.environ.get("BENCH_PG_PASSWORD", ""),
    }


def pg_admin(sql: str) -> None:
    """Run one statement on a maintenance database (``postgres``, else ``test``), in autocommit."""
    import psycopg

    last: Exception | None = None
    for dbname in ("postgres", "test"):
        try:
            with psycopg.connect(dbname=dbname, autocommit=True, **pg_params()) as conn:
                conn.execute(sql)
                return
        except psycopg.OperationalError as exc:
            last = exc
    raise RuntimeError(f"cannot reach a PostgreSQL maintenance database: {last}")


def mariadb_params() -> dict[str, str]:
    return {
        "host": os.environ.get("BENCH_MARIADB_HOST", "127.0.0.1"),
        "port": os.environ.get("BENCH_MARIADB_PORT", "3306"),
        "user": os.environ.get("BENCH_MARIADB_USER", "root"),
        "password": os.environ.get("BENCH_MARIADB_PASSWORD", ""),
    }


def mariadb_connect(dbname: str | None = None) -> Any:
    """A MySQLdb connection in autocommit, utf8mb4, to ``dbname`` or to no database."""
    import MySQLdb

    p = mariadb_params()
    kwargs: dict[str, Any] = {
        "host": p["host"],
        "port": int(p["port"]),
        "user": p["user"],
        "passwd": p["password"],
        "charset": "utf8mb4",
        "autocommit": True,
    }
    if dbname:
        kwargs["db"] = dbname
    return MySQLdb.connect(**kwargs)


MARIADB_CHARSET = "utf8mb4"
MARIADB_COLLATION = "utf8mb4_bin"  # as the test settings: workflow ids compare case- and accent-sensitively


def mariadb_fresh_database(name: str, *, create: bool = True) -> None:
    """Drop ``name`` (first ending the connections still on it, as PostgreSQL's FORCE does)
    and, with ``create``, create it again."""
    import MySQLdb

    conn = mariadb_connect()
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()", [name])
        for (thread_id,) in cursor.fetchall():
            with contextlib.suppress(MySQLdb.OperationalError):  # it ended meanwhile
                cursor.execute(f"KILL {int(thread_id)}")
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        if create:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET {MARIADB_CHARSET} COLLATE {MARIADB_COLLATION}")
    finally:
        conn.close()


class MariaDBCounters:
    """SHOW GLOBAL STATUS read over one connection kept open, which counts what it sends itself:
    between two reads the server sees from it the second read and nothing else it does not know of.
    Counters are server-wide: every client of the server counts."""

    NAMES = ("Questions", "Connections", "Com_commit", "Com_rollback")

    def __init__(self) -> None:
        self.conn = mariadb_connect()
        self.thread_id = int(self.conn.thread_id())
        # Our own statements so far, by the Com_ counter each one moves.
        self.sent: dict[str, int] = {"Com_show_status": 0, "Com_select": 0}

    def read(self) -> dict[str, int]:
        cursor = self.conn.cursor()
        cursor.execute("SHOW GLOBAL STATUS")
        self.sent["Com_show_status"] += 1
        values = {
            str(name): int(value)
            for name, value in cursor.fetchall()
            if (name in self.NAMES or str(name).startswith("Com_")) and str(value).isdigit()
        }
        # Up to and including this one: Questions counts a statement as it starts.
        values |= {f"_sent_{k}": v for k, v in self.sent.items()}
        return values

    def connections(self, exclude_db: str | None = None) -> list[dict[str, Any]]:
        """The server's client connections besides this one (and, with exclude_db, besides those
        on that database): who else could be sending statements."""
        cursor = self.conn.cursor()
        cursor.execute(
            "SELECT ID, USER, HOST, DB, COMMAND FROM information_schema.PROCESSLIST "
            "WHERE ID <> %s AND COMMAND NOT IN ('Daemon', 'Binlog Dump') AND USER <> 'system user'",
            [self.thread_id],
        )
        self.sent["Com_select"] += 1
        return [
            {"id": int(i), "user": user, "host": host, "db": dbname, "command": command}
            for i, user, host, dbname, command in cursor.fetchall()
            if exclude_db is None or dbname != exclude_db
        ]

    def close(self) -> None:
        self.conn.close()

    @staticmethod
    def delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        """b - a, less this reader's own statements in between."""
        out = {name: b[name] - a.get(name, 0) for name in b if not name.startswith("_")}
        out["reader_statements"] = 0
        for name in ("Com_show_status", "Com_select"):
            own = b[f"_sent_{name}"] - a[f"_sent_{name}"]
            out[name] -= own
            out["reader_statements"] += own
        out["Questions"] -= out["reader_statements"]
        return out


def mariadb_session_status() -> dict[str, int]:
    """This process's own Django connection's counters (what the harness sent on it)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Questions', 'Com_commit', 'Com_rollback')")
        return {str(name): int(value) for name, value in cursor.fetchall()}


def mariadb_usage(before: dict[str, int], after: dict[str, int], harness: dict[str, int], steps: int) -> dict[str, Any]:
    """The workers' share of the server's counters between two reads."""
    d = MariaDBCounters.delta(before, after)
    worker_statements = d["Questions"] - harness.get("Questions", 0)
    worker_commits = d["Com_commit"] - harness.get("Com_commit", 0)
    return {
        "scope": "SHOW GLOBAL STATUS, server-wide: other clients of the server count too",
        "connections_opened": d["Connections"] - 1,  # less the harness's own reconnection
        "statements": d["Questions"],
        "harness_statements": harness.get("Questions", 0),
        "worker_statements": worker_statements,
        "worker_statements_per_step": round(worker_statements / steps, 2) if steps else None,
        "worker_commits": worker_commits,
        "worker_commits_per_step": round(worker_commits / steps, 2) if steps else None,
        "rollbacks": d["Com_rollback"] - harness.get("Com_rollback", 0),
        "commands": {k: v for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if k.startswith("Com_") and v > 0},
    }


def fresh_database(db: str, name: str) -> None:
    if db == "postgres":
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        pg_admin(f'CREATE DATABASE "{name}"')
    elif db == "mariadb":
        mariadb_fresh_database(name)
    else:
        drop_database(db, name)


def drop_database(db: str, name: str) -> None:
    if db == "postgres":
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    elif db == "mariadb":
        mariadb_fresh_database(name, create=False)
    else:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(name + suffix).unlink(missing_ok=True)


def database_version(db: str) -> str:
    from django.db import connection

    if db == "postgres":
        with connection.cursor() as cursor:
            cursor.execute("SELECT version()")
            return cursor.fetchone()[0]
    if db == "mariadb":
        with connection.cursor() as cursor:
            cursor.execute("SELECT VERSION(), @@version_comment")
            number, comment = cursor.fetchone()
        return f"{comment} {number}" if "mariadb" not in number.lower() else f"MariaDB {number}"
    return f"SQLite {sqlite3.sqlite_version}"


# -- statistics ---------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-q * len(sorted_values) // 100)))  # ceil(q/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary_ms(values_s: list[float]) -> dict[str, float | int | None]:
    values = sorted(v * 1000.0 for v in values_s)
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "min_ms": round(values[0], 3),
        "p50_ms": round(percentile(values, 50), 3),
        "p90_ms": round(percentile(values, 90), 3),
        "p99_ms": round(percentile(values, 99), 3),
        "max_ms": round(values[-1], 3),
        "mean_ms": round(statistics.fmean(values), 3),
    }


# -- phases -------------------------------------------------------------------------


def start_workflows(n: int, steps: int, fanout: bool, one_transaction: bool) -> float:
    from django.db import transaction

    import django_durable as durable
    from benchmarks.workflows import bench_fanout, bench_sequence

    workflow = bench_fanout if fanout else bench_sequence
    t0 = time.perf_counter()
    if one_transaction:
        with transaction.atomic():
            for i in range(n):
                durable.start_workflow(workflow, steps, workflow_id=f"bench-{i}")
    else:
        for i in range(n):
            durable.start_workflow(workflow, steps, workflow_id=f"bench-{i}")
    return time.perf_counter() - t0


def spawn_workers(
    args: argparse.Namespace, env: dict[str, str], stamp: str
) -> tuple[list[subprocess.Popen], list[Path]]:
    cmd = [
        sys.executable,
        "-m",
        "django",
        "durable_worker",
        "--settings",
        "benchmarks.settings",
        "-v",
        str(args.worker_verbosity),
    ]
    if args.concurrency:
        cmd += ["--concurrency", str(args.concurrency)]
    procs, logs = [], []
    for i in range(args.workers):
        log_path = Path(args.log_dir) / f"{stamp}-worker{i}.log"
        log = open(log_path, "w")
        procs.append(
            subprocess.Popen(
                [*cmd, "--name", f"bench-worker-{i}"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        logs.append(log_path)
    return procs, logs


def stop_workers(procs: list[subprocess.Popen]) -> list[dict[str, Any]]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    outcomes = []
    for proc in procs:
        t0 = time.monotonic()
        try:
            rc = proc.wait(timeout=30)
            how = "SIGTERM"
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            how = "SIGKILL after 30 s"
        outcomes.append(
            {
                "pid": proc.pid,
                "returncode": rc,
                "stopped_by": how,
                "stop_s": round(time.monotonic() - t0, 3),
            }
        )
    return outcomes


def scan_logs(paths: list[Path]) -> dict[str, Any]:
    counts = {key: 0 for key in LOG_PATTERNS}
    counts["shutdown_notices"] = 0
    samples: list[str] = []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            if SHUTDOWN_NOTICE.search(line):
                counts["shutdown_notices"] += 1
                continue
            hit = False
            for key, pattern in LOG_PATTERNS.items():
                if pattern.search(line):
                    counts[key] += 1
                    hit = True
            if hit and len(samples) < 10:
                samples.append(f"{path.name}: {line[:300]}")
    return {
        "files": [display_path(str(p)) for p in paths],
        "counts": counts,
        "samples": samples,
    }


def wait_for_completion(n: int, procs: list[subprocess.Popen], timeout: float, on_first_claim: Any) -> dict[str, Any]:
    from django.db.models import Count

    from django_durable.models import HistoryEvent, WorkflowInstance

    deadline = time.monotonic() + timeout
    first_claim_seen = False
    queries = 0  # each one an autocommit transaction, subtracted from the workers' count
    while True:
        queries += 1
        if not first_claim_seen:
            if HistoryEvent.objects.filter(kind="WorkflowTaskStarted").exists():
                first_claim_seen = True
                on_first_claim()
            else:
                time.sleep(0.02)
                continue
        by_status = dict(
            WorkflowInstance.objects.values_list("status").annotate(c=Count("id")).values_list("status", "c")
        )
        closed = sum(c for s, c in by_status.items() if s not in ("pending", "running"))
        if closed >= n:
            return {"finished": True, "by_status": by_status, "harness_queries": queries}
        dead = [p.pid for p in procs if p.poll() is not None]
        if dead and len(dead) == len(procs):
            return {
                "finished": False,
                "reason": f"all workers exited ({dead})",
                "by_status": by_status,
                "harness_queries": queries,
            }
        if time.monotonic() > deadline:
            return {
                "finished": False,
                "reason": f"timeout after {timeout} s",
                "by_status": by_status,
                "harness_queries": queries,
            }
        time.sleep(0.05)


def history_metrics() -> dict[str, Any]:
    from django.db.models import Max, Min

    from django_durable.models import HistoryEvent, WorkflowInstance

    scheduled = {
        (i, t): ts
        for i, t, ts in HistoryEvent.objects.filter(kind="ActivityScheduled").values_list(
            "instance_id", "task_id", "timestamp"
        )
    }
    to_close, to_start, retried, unmatched = [], [], 0, 0
    for i, t, ts, payload in HistoryEvent.objects.filter(kind="ActivityCompleted").values_list(
        "instance_id", "task_id", "timestamp", "payload"
    ):
        sched = scheduled.get((i, t))
        if sched is None:
            unmatched += 1
            continue
        to_close.append((ts - sched).total_seconds())
        started = payload.get("result")
        if isinstance(started, (int, float)):
            to_start.append(started - sched.timestamp())
        if (payload.get("attempt") or 1) > 1:
            retried += 1
    bounds = WorkflowInstance.objects.aggregate(
        first_created=Min("created_at"),
        last_created=Max("created_at"),
        last_closed=Max("closed_at"),
    )
    first_task = HistoryEvent.objects.filter(kind="WorkflowTaskStarted").aggregate(t=Min("timestamp"))["t"]
    runs = list(WorkflowInstance.objects.exclude(closed_at=None).values_list("started_at", "closed_at"))
    return {
        "activities_scheduled": len(scheduled),
        "activities_completed": len(to_close),
        "activities_failed": HistoryEvent.objects.filter(kind="ActivityFailed").count(),
        "activities_completed_after_retry": retried,
        "completions_without_schedule": unmatched,
        "workflow_tasks": HistoryEvent.objects.filter(kind="WorkflowTaskStarted").count(),
        "history_events": HistoryEvent.objects.count(),
        "schedule_to_close": summary_ms(to_close),
        "schedule_to_start": summary_ms(to_start),
        "workflow_run_time": summary_ms([(c - s).total_seconds() for s, c in runs if s and c]),
        "first_workflow_task_at": first_task,
        "last_closed_at": bounds["last_closed"],
    }


# -- idle latency (--idle) -----------------------------------------------------------


def warm_up(args: argparse.Namespace, procs: list[subprocess.Popen]) -> dict[str, Any]:
    """--warmup: wait for the workers' heartbeats, run one short workflow per worker, purge it.

    The measured runs then see workers past their imports and first connections, which
    matters when there are only a few steps to spread that cost over."""
    import django_durable as durable
    from benchmarks.workflows import bench_sequence

    ready = wait_for_workers_ready([f"bench-worker-{i}" for i in range(args.workers)], procs, 60.0)
    ids = [f"warmup-{i}" for i in range(args.workers)]
    for workflow_id in ids:
        durable.start_workflow(bench_sequence, 2, workflow_id=workflow_id)
    done = wait_for_prefix_closed("warmup-", len(ids), procs, args.timeout)
    for workflow_id in ids:
        durable.get_workflow(workflow_id).purge()
    return {"workers_ready": ready, "warmup_runs": done}


def wait_for_workers_ready(names: list[str], procs: list[subprocess.Popen], timeout: float) -> dict[str, Any]:
    """Until every worker has written its heartbeat row (it writes one when it starts)."""
    try:
        from django_durable.models import WorkerHeartbeat
    except ImportError:  # no heartbeat rows in this version: the warm-up alone shows readiness
        return {"heartbeats": None}
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        seen = WorkerHeartbeat.objects.filter(name__in=names, stopped_at=None).count()
        if seen >= len(names):
            return {"heartbeats": seen, "seconds": round(time.monotonic() - t0, 3)}
        if all(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    return {"heartbeats": WorkerHeartbeat.objects.filter(name__in=names).count(), "timed_out": True}


def wait_for_prefix_closed(prefix: str, n: int, procs: list[subprocess.Popen], timeout: float) -> dict[str, Any]:
    from django_durable.models import WorkflowInstance

    deadline = time.monotonic() + timeout
    while True:
        runs = WorkflowInstance.objects.filter(workflow_id__startswith=prefix)
        closed = runs.exclude(status__in=("pending", "running")).count()
        if closed >= n:
            return {"finished": True, "closed": closed}
        if all(p.poll() is not None for p in procs):
            return {"finished": False, "closed": closed, "reason": "all workers exited"}
        if time.monotonic() > deadline:
            return {"finished": False, "closed": closed, "reason": f"timeout after {timeout} s"}
        time.sleep(0.02)


def start_spaced(prefix: str, n: int, steps: int, spacing: float, jitter: float = 0.0) -> list[float]:
    """Start n sequential workflows one at a time, ``spacing`` s apart plus a random 0..``jitter`` s
    (the same sequence every run); each start's duration."""
    import django_durable as durable
    from benchmarks.workflows import bench_sequence

    gaps = random.Random(0)
    durations = []
    for i in range(n):
        t0 = time.perf_counter()
        durable.start_workflow(bench_sequence, steps, workflow_id=f"{prefix}{i}")
        durations.append(time.perf_counter() - t0)
        time.sleep(spacing + (gaps.uniform(0.0, jitter) if jitter > 0 else 0.0))
    return durations


def idle_metrics(prefix: str) -> dict[str, Any]:
    """Latencies of the runs whose workflow id starts with ``prefix``, from their history."""
    from django_durable.models import HistoryEvent, WorkflowInstance

    runs = {
        pk: (created, closed)
        for pk, created, closed in WorkflowInstance.objects.filter(workflow_id__startswith=prefix).values_list(
            "pk", "created_at", "closed_at"
        )
    }
    first_claim: dict[int, datetime.datetime] = {}
    scheduled: dict[tuple[int, int], datetime.datetime] = {}
    first_activity_start: dict[int, float] = {}
    to_start: list[float] = []
    events = HistoryEvent.objects.filter(instance_id__in=list(runs)).order_by("instance_id", "seq")
    for pk, kind, task_id, ts, payload in events.values_list("instance_id", "kind", "task_id", "timestamp", "payload"):
        if kind == "WorkflowTaskStarted":
            first_claim.setdefault(pk, ts)
        elif kind == "ActivityScheduled":
            scheduled[(pk, task_id)] = ts
        elif kind == "ActivityCompleted":
            started = payload.get("result")
            sched = scheduled.get((pk, task_id))
            if isinstance(started, (int, float)) and sched is not None:
                to_start.append(started - sched.timestamp())
                first_activity_start.setdefault(pk, started)
    return {
        "workflows": len(runs),
        "start_to_first_claim": summary_ms(
            [(first_claim[pk] - created).total_seconds() for pk, (created, _) in runs.items() if pk in first_claim]
        ),
        "schedule_to_start": summary_ms(to_start),
        "start_to_first_activity_start": summary_ms(
            [
                first_activity_start[pk] - created.timestamp()
                for pk, (created, _) in runs.items()
                if pk in first_activity_start
            ]
        ),
        "start_to_close": summary_ms(
            [(closed - created).total_seconds() for created, closed in runs.values() if closed]
        ),
    }


def pg_connections(dbname: str) -> dict[str, int] | None:
    """Client backends on ``dbname`` and on every other database (the reader's own excluded)."""
    import psycopg

    try:
        with psycopg.connect(dbname="postgres", autocommit=True, **pg_params()) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE datname = %s), count(*) FILTER (WHERE datname IS DISTINCT FROM %s) "
                "FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                [dbname, dbname],
            ).fetchone()
    except psycopg.Error:
        return None
    return {"on_benchmark_database": int(row[0]), "elsewhere": int(row[1])}


def load_window(db: str, db_name: str, seconds: float, worker_pids: list[int]) -> dict[str, Any]:
    """The database's counters, the workers' and the server's CPU over ``seconds`` of doing nothing."""
    counters = MariaDBCounters() if db == "mariadb" else None
    try:
        if counters is not None:
            others_before = counters.connections(exclude_db=db_name)
            ours_before = [c for c in counters.connections() if c["db"] == db_name]
            before: Any = counters.read()
        else:
            conns = pg_connections(db_name)
            others_before, ours_before = (conns or {}).get("elsewhere"), (conns or {}).get("on_benchmark_database")
            before = pg_database_stats(db_name) if db == "postgres" else None
        cpu_before = {pid: proc_cpu_seconds(pid) for pid in worker_pids}
        server_before = database_server_cpu_seconds(db)
        t0 = time.monotonic()
        time.sleep(seconds)
        if counters is not None:
            after: Any = counters.read()
        else:
            after = pg_database_stats(db_name) if db == "postgres" else None
        interval = time.monotonic() - t0
        cpu_after = {pid: proc_cpu_seconds(pid) for pid in worker_pids}
        server_after = database_server_cpu_seconds(db)
        if counters is not None:
            others_after = counters.connections(exclude_db=db_name)
        else:
            others_after = (pg_connections(db_name) or {}).get("elsewhere")
    finally:
        if counters is not None:
            counters.close()

    def per_s(value: float | None, scale: float = 1.0) -> float | None:
        return None if value is None else round(value * scale / interval, 3)

    out: dict[str, Any] = {"seconds": round(interval, 3)}
    if db == "mariadb":
        d = MariaDBCounters.delta(before, after)
        out |= {
            "statements": d["Questions"],
            "statements_per_s": per_s(d["Questions"]),
            "commands_per_s": {k: per_s(v) for k, v in sorted(d.items()) if k.startswith("Com_") and v > 0},
            "connections_opened": d["Connections"],
            "our_connections": len(ours_before),
            "other_connections": {"before": others_before, "after": others_after},
            "quiet": not others_before and not others_after,
        }
    elif db == "postgres" and before and after:
        transactions = (after["xact_commit"] + after["xact_rollback"]) - (
            before["xact_commit"] + before["xact_rollback"]
        )
        out |= {
            "transactions": transactions,
            "transactions_per_s": per_s(transactions),
            "connections_opened": after["sessions"] - before["sessions"],
            "our_connections": ours_before,
            "other_connections": {"before": others_before, "after": others_after},
            # The counters are the benchmark database's own: other clients do not count in them.
            "quiet": True,
        }
    worker_cpu = sum((cpu_after[p] or 0.0) - (cpu_before[p] or 0.0) for p in worker_pids if cpu_before[p] is not None)
    server_cpu = None if server_before is None or server_after is None else server_after - server_before
    out["worker_cpu_ms_per_s"] = per_s(worker_cpu, 1000.0) if worker_pids else None
    out["database_server_cpu_ms_per_s"] = per_s(server_cpu, 1000.0)
    return out


def idle_load(
    args: argparse.Namespace, worker: subprocess.Popen, db_name: str, seconds: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The load one idle worker puts on the database: a window with it idle, then one as long with no
    worker (the baseline), and the difference. The harness's own Django connection is closed first."""
    from django.db import connection

    connection.close()
    # Past the polling back-off (0.05 s doubling up to POLL_INTERVAL) and any statistics still pending.
    settle = max(3.0, 3 * args.poll_interval)
    time.sleep(settle)
    with_worker = load_window(args.db, db_name, seconds, [worker.pid])
    stopped = stop_workers([worker])
    time.sleep(1.5)  # PostgreSQL: the backend's statistics are flushed at its exit
    baseline = load_window(args.db, db_name, seconds, [])
    unit = {"mariadb": "statements", "postgres": "transactions"}.get(args.db)
    result: dict[str, Any] = {
        "unit": unit,
        "counted": {
            "mariadb": "SHOW GLOBAL STATUS Questions (statements the server received from clients, server-wide; "
            "the reading connection's own statements subtracted); health-check pings are not in Questions but in "
            "Com_admin_commands (worker_pings_per_s)",
            "postgres": "pg_stat_database xact_commit + xact_rollback of the benchmark database (every autocommit "
            "statement is a transaction, a transaction of several statements one; backends report at most "
            "once a second, so a window's edges are approximate)",
        }.get(args.db),
        "settle_s": settle,
        "poll_interval": args.poll_interval,
        "one_idle_worker": with_worker,
        "no_worker_baseline": baseline,
    }
    if unit:
        key = f"{unit}_per_s"
        if with_worker.get(key) is not None and baseline.get(key) is not None:
            result[f"worker_{key}"] = round(with_worker[key] - baseline[key], 3)
        result["quiet"] = bool(with_worker.get("quiet") and baseline.get("quiet"))
    if args.db == "mariadb":
        pings = [w.get("commands_per_s", {}).get("Com_admin_commands", 0.0) for w in (with_worker, baseline)]
        result["worker_pings_per_s"] = round(pings[0] - pings[1], 3)
    server = (with_worker["database_server_cpu_ms_per_s"], baseline["database_server_cpu_ms_per_s"])
    result["worker_database_server_cpu_ms_per_s"] = round(server[0] - server[1], 3) if None not in server else None
    result["worker_cpu_ms_per_s"] = with_worker["worker_cpu_ms_per_s"]
    result["worker_connections"] = with_worker.get("our_connections")
    return result, stopped


def main_idle(
    args: argparse.Namespace,
    report: dict[str, Any],
    worker_env: dict[str, str],
    stamp: str,
    db_name: str,
    t_total: float,
) -> int:
    from django.db import connection

    import django_durable as durable
    from benchmarks.workflows import bench_sequence

    timeout = args.timeout
    procs: list[subprocess.Popen] = []
    try:
        procs, logs = spawn_workers(args, worker_env, stamp)
        ready = wait_for_workers_ready([f"bench-worker-{i}" for i in range(args.workers)], procs, 60.0)
        # One warm-up run per worker, so that imports and first connections are behind us.
        for i in range(args.workers):
            durable.start_workflow(bench_sequence, args.steps, workflow_id=f"warmup-{i}")
        warmup = wait_for_prefix_closed("warmup-", args.workers, procs, timeout)
        time.sleep(args.idle_settle)
        starts = start_spaced("idle-", args.workflows, args.steps, args.spacing, args.spacing_jitter)
        completion = wait_for_prefix_closed("idle-", args.workflows, procs, timeout)
        metrics = idle_metrics("idle-")
        load: dict[str, Any] | None = None
        if args.idle_load > 0 and args.db != "sqlite" and procs:
            stopped = stop_workers(procs[1:])
            load, last = idle_load(args, procs[0], db_name, args.idle_load)
            stopped += last
        else:
            stopped = stop_workers(procs)
        report["results"]["idle"] = {
            "workers_ready": ready,
            "warmup": warmup,
            "completion": completion,
            "start_call": summary_ms(starts),
            **metrics,
            "idle_load": load,
            "workers_stopped": stopped,
            "worker_logs": scan_logs(logs),
        }
        report["definitions"] = {
            "start_to_first_claim": "first WorkflowTaskStarted.timestamp - WorkflowInstance.created_at (both the database clock): how long a new run waits for an idle worker",
            "schedule_to_start": "time.time() at the start of the no-op activity - ActivityScheduled.timestamp (the claim time of the workflow task that scheduled it)",
            "start_to_first_activity_start": "time.time() at the start of the first activity - WorkflowInstance.created_at",
            "start_to_close": "closed_at - created_at",
            "start_call": "harness wall time of one start_workflow call (its own transaction)",
            "idle_load": "after the latency runs: all workers but one stopped, the harness's connection closed; the database's counters, the worker's CPU and the database server's CPU over --idle-load s with that worker idle (one_idle_worker), then as long with no worker (no_worker_baseline); worker_<unit>_per_s is the difference. unit: MariaDB statements (SHOW GLOBAL STATUS Questions, server-wide), PostgreSQL transactions (pg_stat_database of the benchmark database)",
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        report["machine"]["loadavg_after"] = loadavg()
        connection.close()
        if not args.keep_db:
            drop_database(args.db, db_name)
    report["results"]["harness_total_s"] = round(time.perf_counter() - t_total, 3)
    out = write_report(report, args, stamp)
    print_idle_table(report)
    print(f"  JSON: {out}")
    return 0 if report["results"]["idle"]["completion"]["finished"] else 1


def print_idle_table(r: dict[str, Any]) -> None:
    cfg, m, idle = r["config"], r["machine"], r["results"]["idle"]

    def line(summary: dict[str, Any]) -> str:
        return (
            f"p50 {fmt(summary.get('p50_ms'), ' ms', 2)}, p90 {fmt(summary.get('p90_ms'), ' ms', 2)}, "
            f"p99 {fmt(summary.get('p99_ms'), ' ms', 2)}, max {fmt(summary.get('max_ms'), ' ms', 2)} "
            f"(n={summary.get('count', 0)})"
        )

    rows = [
        ("date (UTC)", r["date"]),
        (
            "machine",
            f"{m['nproc']} CPUs ({m['cpu_model']}), load average before {m['loadavg_before']}",
        ),
        ("database", m["database_version"]),
        (
            "workload",
            (
                f"{cfg['workflows']} workflows x K={cfg['steps']}, started one at a time "
                f"{cfg['spacing_s']} s apart"
                + (f" + 0..{cfg['spacing_jitter_s']} s random" if cfg.get("spacing_jitter_s") else "")
                + f" after {cfg['idle_settle_s']} s idle; "
                f"W={cfg['workers']} workers, POLL_INTERVAL {cfg['poll_interval']} s"
                + (", LISTEN/NOTIFY" if cfg["db"] == "postgres" else ", polling (no LISTEN/NOTIFY)")
            ),
        ),
        (
            "completed",
            f"{idle['completion']['closed']}"
            + ("" if idle["completion"]["finished"] else f"  NOT FINISHED: {idle['completion'].get('reason')}"),
        ),
        ("start to first claim", line(idle["start_to_first_claim"])),
        ("schedule-to-start", line(idle["schedule_to_start"])),
        ("start to 1st activity", line(idle["start_to_first_activity_start"])),
        ("start to close", line(idle["start_to_close"])),
        ("start_workflow call", line(idle["start_call"])),
    ]
    load = idle.get("idle_load")
    if load:
        rows.append(("idle worker's load", idle_load_line(load)))
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    print()


def idle_load_line(load: dict[str, Any]) -> str:
    unit = load.get("unit") or "?"
    w, b = load["one_idle_worker"], load["no_worker_baseline"]
    key = f"{unit}_per_s"
    text = (
        f"{fmt(load.get(f'worker_{key}'), '', 2)} {unit}/s (window {fmt(w.get(key), '', 2)} with the worker, "
        f"{fmt(b.get(key), '', 2)} without, {w['seconds']} s each), {load.get('worker_connections')} connections, "
        f"worker CPU {fmt(load.get('worker_cpu_ms_per_s'), ' ms/s', 2)}, "
        f"database server CPU {fmt(load.get('worker_database_server_cpu_ms_per_s'), ' ms/s', 2)}"
    )
    commands = w.get("commands_per_s")
    if "worker_pings_per_s" in load:
        text += f", pings {fmt(load['worker_pings_per_s'], '/s', 2)}"
    if commands:
        text += "; server-wide [" + ", ".join(f"{k.removeprefix('Com_')} {v}/s" for k, v in commands.items()) + "]"
    if not load.get("quiet"):
        text += "  NOT QUIET: other clients were connected to the server (see the JSON)"
    return text


# -- output -------------------------------------------------------------------------


def fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value}{unit}"


def print_table(r: dict[str, Any]) -> None:
    cfg, m, res = r["config"], r["machine"], r["results"]
    rows: list[tuple[str, str]] = [
        ("date (UTC)", r["date"]),
        (
            "machine",
            (
                f"{m['nproc']} CPUs ({m['cpu_model']}), load average before {m['loadavg_before']}, "
                f"{m['busy_cpus_in_the_second_before']} CPUs busy in the second before"
            ),
        ),
        ("python / Django", f"{m['python']} / {m['django']}"),
        ("database", m["database_version"]),
        (
            "workload",
            f"N={cfg['workflows']} workflows x K={cfg['steps']} no-op activities, "
            f"{'fan-out' if cfg['fanout'] else 'sequential'}; W={cfg['workers']} workers"
            + (f", concurrency {cfg['concurrency']}" if cfg["concurrency"] else ", concurrency default")
            + f", harness CONN_MAX_AGE {cfg['conn_max_age']} (workers: persistent)"
            + (", prepared statements" if cfg.get("prepared") else ""),
        ),
        (
            "start N workflows",
            (
                f"{fmt(res['start']['seconds'], ' s', 3)} = {fmt(res['start']['workflows_per_s'], ' starts/s')} "
                f"({'one transaction' if cfg['start_in_one_transaction'] else 'one transaction each'})"
            ),
        ),
    ]
    run = res.get("run")
    if run:
        cpu = run["cpu_per_step_ms"]
        rows += [
            (
                "completed",
                f"{run['completion']['by_status']}"
                + ("" if run["completion"]["finished"] else f"  NOT FINISHED: {run['completion'].get('reason')}"),
            ),
            (
                "wall time",
                (
                    f"{fmt(run['elapsed_s'], ' s', 3)} from worker spawn to last completion "
                    f"({fmt(run['steady_elapsed_s'], ' s', 3)} from first claim)"
                ),
            ),
            (
                "workflows/s",
                f"{fmt(run['workflows_per_s'])} ({fmt(run['steady_workflows_per_s'])} from first claim)",
            ),
            (
                "activity steps/s",
                f"{fmt(run['steps_per_s'])} ({fmt(run['steady_steps_per_s'])} from first claim)",
            ),
            (
                "schedule-to-close p50/p99",
                (
                    f"{fmt(run['history']['schedule_to_close'].get('p50_ms'), ' ms')} / "
                    f"{fmt(run['history']['schedule_to_close'].get('p99_ms'), ' ms')} "
                    f"(max {fmt(run['history']['schedule_to_close'].get('max_ms'), ' ms')})"
                ),
            ),
            (
                "schedule-to-start p50/p99",
                (
                    f"{fmt(run['history']['schedule_to_start'].get('p50_ms'), ' ms')} / "
                    f"{fmt(run['history']['schedule_to_start'].get('p99_ms'), ' ms')}"
                ),
            ),
            ("wall per step", f"{fmt(run['wall_ms_per_step'], ' ms', 3)} (steady window / steps)"),
            (
                "CPU per step",
                (
                    f"workers {fmt(cpu['workers'], ' ms', 2)}, {cfg['db']} server {fmt(cpu['database_server'], ' ms', 2)}, "
                    f"harness {fmt(cpu['harness'], ' ms', 2)}, "
                    f"other processes {fmt(cpu['other_processes'], ' ms', 2)}, whole machine {fmt(cpu['machine'], ' ms', 2)}"
                ),
            ),
            (
                "busiest other processes",
                "; ".join(
                    f"{row['cpu_s']} CPU-s {row['cmd'][:70]}" for row in run["top_other_processes_steady_window"][:2]
                )
                or "none",
            ),
            (
                "postgres",
                (
                    f"{run['postgres']['sessions_opened']} connections opened, "
                    f"{run['postgres']['worker_transactions_per_step']} worker transactions per step "
                    f"(incl. read-only autocommit queries), "
                    f"{run['postgres']['transactions_rolled_back']} rolled back"
                )
                if run["postgres"]
                else "n/a",
            )
            if cfg["db"] != "mariadb"
            else (
                "mariadb (server-wide)",
                (
                    f"{run['mariadb']['connections_opened']} connections opened, "
                    f"{run['mariadb']['worker_statements_per_step']} worker statements per step, "
                    f"{run['mariadb']['worker_commits_per_step']} COMMITs per step, "
                    f"{run['mariadb']['rollbacks']} rolled back"
                    + ("" if run["mariadb"]["quiet"] else "  NOT QUIET: other clients were connected (see the JSON)")
                )
                if run.get("mariadb")
                else "n/a",
            ),
            (
                "workflow tasks",
                (
                    f"{run['history']['workflow_tasks']} for {run['history']['activities_completed']} activities "
                    f"({run['history']['activities_completed_after_retry']} retried, {run['history']['activities_failed']} failed)"
                ),
            ),
            (
                "worker logs",
                ", ".join(f"{k}={v}" for k, v in run["worker_logs"]["counts"].items() if v and k != "shutdown_notices")
                or "no warnings or errors (besides the SIGTERM notices)",
            ),
        ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    print()


def product_poll_interval() -> float:
    """django-durable's own default POLL_INTERVAL (what a user who sets nothing gets)."""
    from django_durable.conf import DEFAULTS

    return float(DEFAULTS["POLL_INTERVAL"])


def display_path(path: str) -> str:
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return path


def write_report(report: dict[str, Any], args: argparse.Namespace, stamp: str) -> Path:
    out = Path(args.json) if args.json else RESULTS_DIR / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return out


def main() -> int:
    args = parse_args()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%SZ") + f"-{args.db}" + ("-idle" if args.idle else "")
    server = args.db in ("postgres", "mariadb")
    if args.db_name:
        db_name = args.db_name if server else str(Path(args.db_name).resolve())
    else:
        db_name = "durable_bench" if server else str(RESULTS_DIR / f"{stamp}.sqlite3")
    if args.poll_interval is None:
        args.poll_interval = product_poll_interval() if args.idle else 0.01

    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
            "BENCH_DB": args.db,
            "BENCH_DB_NAME": db_name,
            "BENCH_POLL_INTERVAL": str(args.poll_interval),
            "BENCH_LEASE_SECONDS": str(args.lease_seconds),
            "BENCH_CONN_MAX_AGE": str(args.conn_max_age),
            "BENCH_PREPARED": "1" if args.prepared else "0",
        }
    )
    sys.path.insert(0, str(ROOT))
    worker_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }

    t_total = time.perf_counter()
    fresh_database(args.db, db_name)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    t0 = time.perf_counter()
    call_command("migrate", verbosity=0)
    migrate_s = time.perf_counter() - t0

    from importlib.metadata import PackageNotFoundError, version

    def driver_version(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    report: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
        "git": git_revision(),
        "machine": {
            "nproc": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "django": django.get_version(),
            "psycopg": driver_version("psycopg") if args.db == "postgres" else None,
            "mysqlclient": driver_version("mysqlclient") if args.db == "mariadb" else None,
            "database_version": database_version(args.db),
            "loadavg_before": loadavg(),
            "busy_cpus_in_the_second_before": busy_cpus(),
        },
        "config": {
            "db": args.db,
            "database": db_name if server else display_path(db_name),
            "mariadb_charset": f"{MARIADB_CHARSET}, {MARIADB_COLLATION}" if args.db == "mariadb" else None,
            "mode": "idle latency" if args.idle else "throughput",
            "spacing_s": args.spacing if args.idle else None,
            "spacing_jitter_s": args.spacing_jitter if args.idle else None,
            "idle_settle_s": args.idle_settle if args.idle else None,
            "idle_load_s": args.idle_load if args.idle else None,
            "workflows": args.workflows,
            "steps": args.steps,
            "fanout": args.fanout,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "poll_interval": args.poll_interval,
            "lease_seconds": args.lease_seconds,
            "conn_max_age": args.conn_max_age,
            "prepared": args.prepared,
            "start_in_one_transaction": args.start_in_one_transaction or args.warmup,
            "warmup": args.warmup,
            "worker_verbosity": args.worker_verbosity,
        },
        "definitions": {
            k: v
            for k, v in (
                line.split(": ", 1)
                for line in [
                    "elapsed_s: worker spawn (harness clock) to the last closed_at (database clock, same machine); includes worker start-up",
                    "steady_elapsed_s: first WorkflowTaskStarted event to the last closed_at",
                    "steps: workflows * steps activity executions",
                    "schedule_to_close: ActivityCompleted.timestamp - ActivityScheduled.timestamp; ActivityScheduled carries the claim time of the workflow task that scheduled it",
                    "schedule_to_start: time.time() at the start of the no-op activity - ActivityScheduled.timestamp",
                    "cpu_per_step_ms: CPU seconds (user+system, /proc) between the first observed workflow-task claim (polled every 20 ms) and the last completion observed (polled every 50 ms), / steps; database_server = PostgreSQL: every postgres process incl. backends reaped meanwhile, MariaDB: the mariadbd process (all its threads, exited ones included), either way all databases of the server; machine = /proc/stat busy time of all processes; other_processes = machine minus the rest",
                    "postgres: pg_stat_database counters of the benchmark database from just before worker spawn to just after the workers exited: sessions_opened (connections), transactions committed by the workers (each autocommit query counts, read-only ones too; the harness's polling queries are subtracted) and per step",
                    "mariadb: SHOW GLOBAL STATUS from just before worker spawn to just after the workers exited, server-wide (other clients of the server count too): connections_opened (Connections, less the harness's reconnection), statements (Questions) less the harness's own (its session's Questions), commits (Com_commit: explicit COMMITs, autocommit statements not included) less the harness's, per step; commands: every Com_ counter that moved",
                    "wall_ms_per_step: steady_elapsed_s / steps",
                ]
            )
        },
        "results": {"migrate_s": round(migrate_s, 3)},
    }

    if args.idle:
        return main_idle(args, report, worker_env, stamp, db_name, t_total)

    warm = args.warmup and args.workers > 0

    def start_measured() -> None:
        start_s = start_workflows(args.workflows, args.steps, args.fanout, args.start_in_one_transaction or warm)
        report["results"]["start"] = {
            "seconds": round(start_s, 4),
            "workflows_per_s": round(args.workflows / start_s, 1) if start_s else None,
            "ms_per_start": round(start_s * 1000 / args.workflows, 3) if args.workflows else None,
        }

    if not warm:
        start_measured()

    procs: list[subprocess.Popen] = []
    try:
        if args.workers > 0:
            if warm:
                procs, logs = spawn_workers(args, worker_env, stamp)
                report["results"]["warmup"] = warm_up(args, procs)
            pg_before = None
            mariadb_counters: MariaDBCounters | None = None
            mariadb_before: dict[str, int] | None = None
            if args.db == "postgres":
                connection.close()  # flushes this backend's statistics
                time.sleep(1.1)
                pg_before = pg_database_stats(db_name)
            elif args.db == "mariadb":
                connection.close()  # the harness's next connection counts its own statements from zero
                mariadb_counters = MariaDBCounters()
                others_at_start = mariadb_counters.connections(exclude_db=db_name)
                mariadb_before = mariadb_counters.read()
            spawned_at = datetime.datetime.now(datetime.timezone.utc)
            if not warm:
                procs, logs = spawn_workers(args, worker_env, stamp)
            pids = [p.pid for p in procs]
            snaps: dict[str, Any] = {"spawn": cpu_snapshot(pids, args.db)}
            if warm:
                # The workers are up and idle: the window opens as the runs become claimable.
                snaps["first_claim"] = snaps["spawn"]
                start_measured()

            def on_first_claim() -> None:
                snaps.setdefault("first_claim", cpu_snapshot(pids, args.db))

            completion = wait_for_completion(args.workflows, procs, args.timeout, on_first_claim)
            snaps["done"] = cpu_snapshot(pids, args.db)
            stopped = stop_workers(procs)
            steps = args.workflows * args.steps
            pg_usage: dict[str, Any] | None = None
            mariadb_use: dict[str, Any] | None = None
            if mariadb_counters is not None and mariadb_before is not None:
                harness_status = mariadb_session_status()
                mariadb_use = mariadb_usage(mariadb_before, mariadb_counters.read(), harness_status, steps)
                others = {"start": others_at_start, "end": mariadb_counters.connections(exclude_db=db_name)}
                mariadb_use |= {"other_connections": others, "quiet": not others["start"] and not others["end"]}
                mariadb_counters.close()
            if args.db == "postgres":
                connection.close()
                time.sleep(1.1)
                pg_after = pg_database_stats(db_name)
                if pg_before and pg_after:
                    commits = pg_after["xact_commit"] - pg_before["xact_commit"]
                    worker_commits = commits - completion["harness_queries"]
                    pg_usage = {
                        "sessions_opened": pg_after["sessions"] - pg_before["sessions"],
                        "transactions_committed": commits,
                        "harness_queries": completion["harness_queries"],
                        "worker_transactions_committed": worker_commits,
                        "worker_transactions_per_step": round(worker_commits / steps, 2),
                        "transactions_rolled_back": pg_after["xact_rollback"] - pg_before["xact_rollback"],
                    }
            hist = history_metrics()
            last = hist.pop("last_closed_at")
            first = hist.pop("first_workflow_task_at")
            elapsed = (last - spawned_at).total_seconds() if last else None
            steady = (last - first).total_seconds() if last and first else None
            steady_cpu = cpu_delta(snaps.get("first_claim", snaps["spawn"]), snaps["done"])
            total_cpu = cpu_delta(snaps["spawn"], snaps["done"])

            def per_step(seconds: float | None) -> float | None:
                return round(seconds * 1000 / steps, 3) if seconds is not None and steps else None

            report["results"]["run"] = {
                "completion": completion,
                "elapsed_s": round(elapsed, 3) if elapsed else None,
                "steady_elapsed_s": round(steady, 3) if steady else None,
                "worker_spawn_to_first_claim_s": round((first - spawned_at).total_seconds(), 3) if first else None,
                "steps": steps,
                "workflows_per_s": round(args.workflows / elapsed, 1) if elapsed else None,
                "steps_per_s": round(steps / elapsed, 1) if elapsed else None,
                "steady_workflows_per_s": round(args.workflows / steady, 1) if steady else None,
                "steady_steps_per_s": round(steps / steady, 1) if steady else None,
                "wall_ms_per_step": per_step(steady),
                "cpu_per_step_ms": {
                    "workers": per_step(steady_cpu["workers_s"]),
                    "database_server": per_step(steady_cpu["database_server_s"]),
                    "harness": per_step(steady_cpu["harness_s"]),
                    "other_processes": per_step(steady_cpu["other_s"]),
                    "machine": per_step(steady_cpu["machine_busy_s"]),
                },
                "cpu_seconds_steady_window": {k: round(v, 3) if v is not None else None for k, v in steady_cpu.items()},
                "cpu_seconds_from_spawn": {k: round(v, 3) if v is not None else None for k, v in total_cpu.items()},
                "top_other_processes_steady_window": top_other_processes(
                    snaps.get("first_claim", snaps["spawn"])["all"],
                    snaps["done"]["all"],
                    exclude={os.getpid(), *pids},
                    server_commands=server_command_prefixes(args.db),
                ),
                "history": hist,
                "postgres": pg_usage,
                "mariadb": mariadb_use,
                "workers_stopped": stopped,
                "worker_logs": scan_logs(logs),
            }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        report["machine"]["loadavg_after"] = loadavg()
        connection.close()
        if not args.keep_db:
            drop_database(args.db, db_name)

    report["results"]["harness_total_s"] = round(time.perf_counter() - t_total, 3)
    out = write_report(report, args, stamp)
    print_table(report)
    print(f"  JSON: {out}")
    run = report["results"].get("run")
    return 0 if run is None or run["completion"]["finished"] else 1


if __name__ == "__main__":
    sys.exit(main())
