#!/usr/bin/env python3
"""django-durable side by side with its peers, on PostgreSQL and MariaDB (a benchmark, not a test).

    .venv/bin/pip install -e .[bench]        # once: DBOS Transact, Celery + Redis, psycopg
    .venv/bin/python benchmarks/compare.py --quick     # about 7 minutes
    .venv/bin/python benchmarks/compare.py --full      # about 20 minutes
    .venv/bin/python benchmarks/compare.py --smoke --only durable,idle,skiplocked,mariadb   # seconds: does it run?

Every measurement is a subprocess of this one, run one after another (never two at
once) against the same PostgreSQL server (127.0.0.1:5432, user postgres; BENCH_PG_*
override), the MariaDB server for its rows and, for Celery, the same Redis server
(database 7, flushed first):

- django-durable (benchmarks/run.py --json): N workflows x K=10 sequential no-op
  activities with W=2 durable_worker processes; the fan-out variant; per-step cost as
  history grows (K = 10, 100, 1000, the same N at every K so that as many workflows are
  in flight and only the history length changes); schedule-to-start latency with idle
  workers (run.py --idle, the product's default POLL_INTERVAL), and the database load of
  one idle worker (run.py --idle-load).
- DBOS Transact (benchmarks/peers/dbos_bench.py): the same N x K workflows of
  @DBOS.step no-ops, enqueued before 2 executor processes dequeue them.
- Celery (benchmarks/peers/celery_bench.py): N chains of K no-op tasks, Redis broker, 2
  ``celery worker --pool prefork --concurrency 1`` processes.
- The raw ``FOR UPDATE SKIP LOCKED`` limit (benchmarks/peers/skip_locked.py): 4 processes,
  1 and 32 items per claim.
- MariaDB (the ``mariadb`` part; 127.0.0.1:3306, user root, BENCH_MARIADB_* override),
  in the same run: django-durable's sequential and fan-out runs on MariaDB (run.py --db
  mariadb) next to the PostgreSQL ones in each round, the bare SKIP LOCKED queue on
  MariaDB next to PostgreSQL's, and the idle runs: as on PostgreSQL (0.1 s apart: a
  worker recently busy), and ``idle_long``, starts 3 to 4 s apart, so that a worker
  without LISTEN/NOTIFY has backed off to polling every POLL_INTERVAL. Every idle run
  also measures the database load of one idle worker (run.py --idle-load).

It prints a table, the ratios and the issue's targets as pass/fail lines, and writes
everything (machine, versions, parameters, how each system was measured, every run's
own JSON) to benchmarks/results/compare-<timestamp>.json. If a peer's package is
missing it stops and says to install the ``bench`` extra; it installs nothing itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import (
    busy_cpus,
    cpu_model,
    git_revision,
    idle_load_line,
    loadavg,
    mariadb_connect,
    mariadb_params,
    pg_params,
)

RESULTS_DIR = ROOT / "benchmarks" / "results"
PEERS = ROOT / "benchmarks" / "peers"
WORKERS = 2
STEPS = 10
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
TARGET_STEPS_PER_S = 1000.0
TARGET_IDLE_P50_MS = 10.0
TARGET_SCALING_RATIO = 2.0


@dataclass(frozen=True)
class Profile:
    """How big each measurement is; --quick and --full differ only here."""

    name: str
    workflows: int  # N of the sequential K=10 runs (all three systems)
    fanout_workflows: int
    scaling_workflows: int  # N at every K of the history-growth series
    scaling_steps: tuple[int, ...] = (10, 100, 1000)
    idle_workflows: int = 20
    idle_spacing_s: float = 0.1
    # MariaDB's long-idle run: gaps past the polling back-off (0.05 s doubling to POLL_INTERVAL,
    # 1 s), with a random part so that starts fall at every phase of the polls.
    idle_long_workflows: int = 20
    idle_long_spacing_s: float = 3.0
    idle_long_jitter_s: float = 1.0
    idle_load_s: float = 20.0  # per idle run: one idle worker's database load, and a baseline as long
    skip_locked_items: dict[int, int] = field(default_factory=dict)  # batch -> items
    dbos_worker_concurrency: int = 16
    repeats: int = 1  # of each comparison run; the table shows the median one
    timeout_s: float = 900.0  # per run: a run that hangs is reported as failed, the rest go on


PROFILES = {
    "quick": Profile(
        name="quick",
        workflows=100,
        fanout_workflows=50,
        scaling_workflows=4,
        idle_workflows=20,
        skip_locked_items={1: 5000, 32: 50000},
        timeout_s=240.0,
    ),
    "full": Profile(
        name="full",
        workflows=200,
        fanout_workflows=100,
        scaling_workflows=8,
        idle_workflows=50,
        skip_locked_items={1: 10000, 32: 200000},
        repeats=3,
    ),
    # Only proves that every part runs (seconds, not minutes): its numbers mean nothing.
    "smoke": Profile(
        name="smoke",
        workflows=20,
        fanout_workflows=10,
        scaling_workflows=2,
        scaling_steps=(3, 6, 12),
        idle_workflows=5,
        idle_long_workflows=4,
        idle_load_s=5.0,
        skip_locked_items={1: 500, 32: 2000},
        timeout_s=120.0,
    ),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small runs, about 7 minutes (default)")
    size.add_argument("--full", action="store_true", help="bigger runs, about 20 minutes")
    size.add_argument("--smoke", action="store_true", help="tiny runs that only show every part works")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated subset of: durable, fanout, scaling, idle, dbos, celery, skiplocked, mariadb "
        "(mariadb: the MariaDB rows of the durable, fanout, idle and skiplocked parts chosen)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs of each comparison, in rounds; the table shows the median (default: 1 quick, 3 full)",
    )
    p.add_argument("--json", default=None, help="default benchmarks/results/compare-<timestamp>.json")
    return p.parse_args()


# -- preflight --------------------------------------------------------------------------


def dist_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def preflight(wanted: set[str]) -> None:
    """Stop early, with the fix, if a peer's package or a server is missing."""
    modules = {"psycopg": "psycopg"}
    if "dbos" in wanted:
        modules["dbos"] = "dbos"
    if "celery" in wanted:
        modules.update(celery="celery", redis="redis")
    if "mariadb" in wanted:
        modules["mysqlclient"] = "MySQLdb"
    missing = []
    for module in modules.values():
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        sys.exit(
            f"missing: {', '.join(missing)}. Install the benchmark extra first, from the repository "
            f"root:\n    {sys.executable} -m pip install -e '.[bench]'"
        )
    import psycopg

    try:
        psycopg.connect(dbname="postgres", connect_timeout=5, **pg_params()).close()
    except psycopg.Error as exc:
        sys.exit(f"PostgreSQL is not reachable at {pg_params()['host']}:{pg_params()['port']}: {exc}")
    if "celery" in wanted:
        import redis

        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
        except redis.RedisError as exc:
            sys.exit(f"Redis is not reachable at {REDIS_URL}: {exc}")
    if "mariadb" in wanted:
        import MySQLdb

        try:
            mariadb_connect().close()
        except MySQLdb.Error as exc:
            p = mariadb_params()
            sys.exit(
                f"MariaDB is not reachable at {p['host']}:{p['port']}: {exc}\n"
                "Start it, or leave its rows out: --only durable,fanout,scaling,idle,dbos,celery,skiplocked"
            )


def server_versions(wanted: set[str]) -> dict[str, str | None]:
    import psycopg

    with psycopg.connect(dbname="postgres", **pg_params()) as conn:
        postgres = conn.execute("SELECT version()").fetchone()[0]
    mariadb: str | None = None
    if "mariadb" in wanted:
        conn = mariadb_connect()
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT VERSION()")
            mariadb = cursor.fetchone()[0]
        finally:
            conn.close()
    redis_version: str | None = None
    try:
        import redis

        redis_version = redis.Redis.from_url(REDIS_URL).info("server").get("redis_version")
    except Exception as exc:  # noqa: BLE001 - Redis is only needed by the Celery runs
        redis_version = f"unknown ({exc})"
    return {"postgres": postgres, "mariadb": mariadb, "redis_server": redis_version}


# -- running one measurement ----------------------------------------------------------------


def run_json(label: str, cmd: list[str], out: Path, timeout: float) -> dict[str, Any]:
    """Run one benchmark subprocess that writes ``out``; its JSON, or why there is none."""
    print(f"- {label}: {' '.join(cmd[1:])}", flush=True)
    busy = busy_cpus(0.5)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "command": cmd}
    took = round(time.monotonic() - t0, 1)
    if not out.exists():
        return {
            "error": f"exit {proc.returncode}, no JSON",
            "command": cmd,
            "stderr_tail": proc.stderr[-3000:],
            "stdout_tail": proc.stdout[-3000:],
        }
    data = json.loads(out.read_text())
    data["_harness"] = {
        "command": cmd,
        "returncode": proc.returncode,
        "seconds": took,
        "busy_cpus_before": busy,
        "json": str(out.relative_to(ROOT)),
    }
    print(f"  done in {took} s (exit {proc.returncode})", flush=True)
    return data


def durable_run(
    label: str, out_dir: Path, timeout: float, *extra: str, db: str = "postgres", db_name: str = "durable_bench_compare"
) -> dict[str, Any]:
    out = out_dir / f"{label}.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "run.py"),
        "--db",
        db,
        "--db-name",
        db_name,
        "--workers",
        str(WORKERS),
        "--timeout",
        str(timeout),
        "--json",
        str(out),
        "--log-dir",
        str(out_dir),
        *extra,
    ]
    return run_json(label, cmd, out, timeout + 120)


def peer_run(label: str, script: str, out_dir: Path, timeout: float, *extra: str) -> dict[str, Any]:
    out = out_dir / f"{label}.json"
    cmd = [sys.executable, str(PEERS / script), "--json", str(out), *extra]
    return run_json(label, cmd, out, timeout)


# -- normalising every system to one row ----------------------------------------------------


def durable_row(data: dict[str, Any]) -> dict[str, Any]:
    """run.py's JSON in the shape the peers write."""
    if "error" in data:
        return {"error": data["error"]}
    run = data["results"].get("run") or {}
    completion = run.get("completion", {})
    if not completion.get("finished"):
        return unfinished(completion)
    history = run.get("history", {})
    return {
        "finished": run.get("completion", {}).get("finished"),
        "steps": run.get("steps"),
        "elapsed_s": run.get("elapsed_s"),
        "steady_elapsed_s": run.get("steady_elapsed_s"),
        "steps_per_s": run.get("steps_per_s"),
        "steady_steps_per_s": run.get("steady_steps_per_s"),
        "workflows_per_s": run.get("workflows_per_s"),
        "steady_workflows_per_s": run.get("steady_workflows_per_s"),
        "wall_ms_per_step": run.get("wall_ms_per_step"),
        "handoff": history.get("schedule_to_start", {}),
        "cpu_per_step_ms": run.get("cpu_per_step_ms", {}),
        "worker_transactions_per_step": (run.get("postgres") or {}).get("worker_transactions_per_step"),
        "worker_statements_per_step": (run.get("mariadb") or {}).get("worker_statements_per_step"),
        "worker_commits_per_step": (run.get("mariadb") or {}).get("worker_commits_per_step"),
    }


def unfinished(completion: dict[str, Any]) -> dict[str, Any]:
    """A run that did not finish has no rate to compare: partial counts would flatter it."""
    state = completion.get("by_status") or completion.get("done")
    return {"error": f"not finished: {completion.get('reason', 'unknown')} ({state})"}


def peer_row(data: dict[str, Any]) -> dict[str, Any]:
    if "error" in data:
        return {"error": data["error"]}
    if not data.get("completion", {}).get("finished"):
        return unfinished(data.get("completion", {}))
    return {
        "finished": data.get("completion", {}).get("finished"),
        "steps": data.get("steps"),
        "elapsed_s": data.get("elapsed_s"),
        "steady_elapsed_s": data.get("steady_elapsed_s"),
        "steps_per_s": data.get("steps_per_s"),
        "steady_steps_per_s": data.get("steady_steps_per_s"),
        "workflows_per_s": data.get("workflows_per_s"),
        "steady_workflows_per_s": data.get("steady_workflows_per_s"),
        "wall_ms_per_step": data.get("wall_ms_per_step"),
        "handoff": data.get("history", {}).get("step_handoff", {}),
        "cpu_per_step_ms": data.get("cpu_per_step_ms", {}),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


# -- the whole comparison ---------------------------------------------------------------


def measure(profile: Profile, wanted: set[str], out_dir: Path) -> dict[str, Any]:
    """Run every wanted measurement; {run label: its JSON}. With repeats, a label ends in
    -r1, -r2, ... and each round runs the systems back to back (django-durable, DBOS,
    Celery), so that what is compared is measured close together, under the same load."""
    t = profile.timeout_s
    n, nf, k = str(profile.workflows), str(profile.fanout_workflows), str(STEPS)
    logs = ["--log-dir", str(out_dir)]
    dbos_common = ["--processes", str(WORKERS), "--timeout", str(t), *logs]
    dbos_common += ["--worker-concurrency", str(profile.dbos_worker_concurrency)]
    celery_common = ["--processes", str(WORKERS), "--concurrency", "1", "--redis-url", REDIS_URL]
    celery_common += ["--timeout", str(t), *logs]

    def durable(*extra: str, db: str = "postgres") -> Any:
        return lambda label: durable_run(label, out_dir, t, *extra, db=db)

    mariadb = "mariadb" in wanted

    def peer(script: str, *extra: str) -> Any:
        return lambda label: peer_run(label, script, out_dir, t + 120, *extra)

    # Blocks of (group, how to run one); each block runs in rounds, one run per system a round.
    sequential: list[tuple[str, Any]] = []
    if "durable" in wanted:
        sequential.append(("durable_sequential", durable("-n", n, "-k", k)))
        sequential.append(("durable_threads64_sequential", durable("-n", n, "-k", k, "--concurrency", "64")))
        if mariadb:
            sequential.append(("durable_mariadb_sequential", durable("-n", n, "-k", k, db="mariadb")))
    if "dbos" in wanted:
        sequential.append(("dbos_sequential", peer("dbos_bench.py", "-n", n, "-k", k, *dbos_common)))
    if "celery" in wanted:
        sequential.append(("celery_sequential", peer("celery_bench.py", "-n", n, "-k", k, *celery_common)))
    fanout: list[tuple[str, Any]] = []
    if "fanout" in wanted:
        fanout.append(("durable_fanout", durable("-n", nf, "-k", k, "--fanout")))
        fanout.append(("durable_threads64_fanout", durable("-n", nf, "-k", k, "--fanout", "--concurrency", "64")))
        if mariadb:
            fanout.append(("durable_mariadb_fanout", durable("-n", nf, "-k", k, "--fanout", db="mariadb")))
        if "dbos" in wanted:
            fan = ("-n", nf, "-k", k, "--fanout", *dbos_common)
            fanout.append(("dbos_fanout", peer("dbos_bench.py", *fan)))
        if "celery" in wanted:
            fan = ("-n", nf, "-k", k, "--fanout", *celery_common)
            fanout.append(("celery_fanout", peer("celery_bench.py", *fan)))
    skip_locked: list[tuple[str, Any]] = []
    if "skiplocked" in wanted:
        for batch, items in profile.skip_locked_items.items():
            sl = ("--processes", "4", "--batch", str(batch), "--items", str(items))
            skip_locked.append((f"skip_locked_batch{batch}", peer("skip_locked.py", *sl)))
            if mariadb:
                skip_locked.append(
                    (f"skip_locked_mariadb_batch{batch}", peer("skip_locked.py", "--db", "mariadb", *sl))
                )
    once: list[tuple[str, Any]] = []
    if "idle" in wanted:
        idle = ("-n", str(profile.idle_workflows), "-k", "1", "--spacing", str(profile.idle_spacing_s))
        idle += ("--idle-load", str(profile.idle_load_s))
        once.append(("durable_idle", durable("--idle", *idle)))
        if mariadb:
            once.append(("durable_mariadb_idle", durable("--idle", *idle, db="mariadb")))
            idle_long = (
                "-n",
                str(profile.idle_long_workflows),
                "-k",
                "1",
                "--spacing",
                str(profile.idle_long_spacing_s),
            )
            idle_long += ("--spacing-jitter", str(profile.idle_long_jitter_s), "--idle-load", "0")
            once.append(("durable_mariadb_idle_long", durable("--idle", *idle_long, db="mariadb")))
    if "scaling" in wanted:
        for steps in profile.scaling_steps:
            scale = ("--warmup", "-n", str(profile.scaling_workflows), "-k", str(steps))
            once.append((f"durable_scaling_k{steps}", durable(*scale)))

    runs: dict[str, Any] = {}
    for block in (sequential, fanout, skip_locked):
        for round_no in range(1, profile.repeats + 1):
            for group, run_one in block:
                label = group if profile.repeats == 1 else f"{group}-r{round_no}"
                runs[label] = run_one(label)
    for group, run_one in once:
        runs[group] = run_one(group)
    return runs


def pick_median(runs: dict[str, Any], group: str, value: Any) -> tuple[str | None, list[Any]]:
    """The run of ``group`` with the median ``value`` (the lower middle one when even),
    and every repeat's value; failed runs sort last."""
    labels = [label for label in runs if label == group or label.startswith(f"{group}-r")]
    values = [(value(runs[label]), label) for label in labels]
    ok = sorted((v, label) for v, label in values if v is not None)
    if not ok:
        return (labels[0] if labels else None), [v for v, _ in values]
    return ok[(len(ok) - 1) // 2][1], [v for v, _ in values]


IDLE_RUNS = {
    "durable_idle": "PostgreSQL, LISTEN/NOTIFY",
    "durable_mariadb_idle": "MariaDB, polling, a recently busy worker",
    "durable_mariadb_idle_long": "MariaDB, polling, a worker idle for seconds",
}


def idle_of(data: dict[str, Any]) -> dict[str, Any]:
    """An idle run's latencies and idle-worker load, from run.py --idle's JSON."""
    idle = (data.get("results") or {}).get("idle", {}) if "error" not in data else {}
    config = data.get("config") or {}
    out: dict[str, Any] = {
        key: idle.get(key, {})
        for key in ("start_to_first_claim", "schedule_to_start", "start_to_first_activity_start", "start_to_close")
    }
    out |= {
        "poll_interval": config.get("poll_interval"),
        "db": config.get("db"),
        "workflows": config.get("workflows"),
        "spacing_s": config.get("spacing_s"),
        "spacing_jitter_s": config.get("spacing_jitter_s"),
        "idle_load": idle.get("idle_load"),
        "error": data.get("error") or (None if (idle.get("completion") or {}).get("finished") else "not finished"),
    }
    return out


def summarise(profile: Profile, runs: dict[str, Any]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    groups = [key for key, _, _ in SYSTEM_ROWS] + [f"durable_scaling_k{k}" for k in profile.scaling_steps]
    for group in groups:
        to_row = durable_row if group.startswith("durable_") else peer_row
        label, repeats = pick_median(runs, group, lambda d, f=to_row: f(d).get("steady_steps_per_s"))
        if label is not None:
            rows[group] = {
                **to_row(runs[label]),
                "run": label,
                "repeats_steady_steps_per_s": repeats,
            }

    def steady(key: str) -> float | None:
        return rows.get(key, {}).get("steady_steps_per_s")

    scaling: dict[str, Any] = {}
    for steps in profile.scaling_steps:
        row = rows.get(f"durable_scaling_k{steps}")
        if row is None:
            continue
        scaling[str(steps)] = {
            "workflows": profile.scaling_workflows,
            "wall_ms_per_step": row.get("wall_ms_per_step"),
            "worker_cpu_ms_per_step": (row.get("cpu_per_step_ms") or {}).get("workers"),
            "steady_steps_per_s": row.get("steady_steps_per_s"),
            "error": row.get("error"),
        }
    lo, hi = str(profile.scaling_steps[0]), str(profile.scaling_steps[-1])
    low, high = scaling.get(lo, {}), scaling.get(hi, {})
    scaling_ratio = {
        "wall": ratio(high.get("wall_ms_per_step"), low.get("wall_ms_per_step")),
        "worker_cpu": ratio(high.get("worker_cpu_ms_per_step"), low.get("worker_cpu_ms_per_step")),
    }
    # K=10's per-step figures also carry each run's fixed cost (its first and last workflow
    # tasks) over only 10 steps; between the two longest histories that share is small,
    # so this ratio shows history growth more purely (information, not a target).
    if len(profile.scaling_steps) >= 3:
        mid = scaling.get(str(profile.scaling_steps[-2]), {})
        scaling_ratio["wall_longest_two"] = ratio(high.get("wall_ms_per_step"), mid.get("wall_ms_per_step"))
        scaling_ratio["worker_cpu_longest_two"] = ratio(
            high.get("worker_cpu_ms_per_step"), mid.get("worker_cpu_ms_per_step")
        )

    idle_summary = idle_of(runs.get("durable_idle", {}))
    idle_runs = {key: idle_of(runs[key]) for key in IDLE_RUNS if key in runs}
    skip: dict[str, Any] = {}
    for db in ("", "mariadb_"):
        for batch in profile.skip_locked_items:
            group = f"skip_locked_{db}batch{batch}"
            label, repeats = pick_median(runs, group, lambda d: d.get("items_per_s"))
            if label is not None:
                data = runs[label]
                skip[group] = {
                    "items_per_s": data.get("items_per_s"),
                    "cpu_per_item_ms": data.get("cpu_per_item_ms"),
                    "error": data.get("error"),
                    "run": label,
                    "repeats_items_per_s": repeats,
                }

    ratios = {
        "durable_vs_dbos_sequential": ratio(steady("durable_sequential"), steady("dbos_sequential")),
        "durable_vs_celery_sequential": ratio(steady("durable_sequential"), steady("celery_sequential")),
        "durable_threads64_vs_dbos_sequential": ratio(
            steady("durable_threads64_sequential"), steady("dbos_sequential")
        ),
        "durable_threads64_vs_celery_sequential": ratio(
            steady("durable_threads64_sequential"), steady("celery_sequential")
        ),
        "durable_vs_dbos_fanout": ratio(steady("durable_fanout"), steady("dbos_fanout")),
        "durable_vs_celery_fanout": ratio(steady("durable_fanout"), steady("celery_fanout")),
        "durable_sequential_steps_vs_skip_locked_batch1_items": ratio(
            steady("durable_sequential"), skip.get("skip_locked_batch1", {}).get("items_per_s")
        ),
        "durable_sequential_steps_vs_skip_locked_batch32_items": ratio(
            steady("durable_sequential"), skip.get("skip_locked_batch32", {}).get("items_per_s")
        ),
        "durable_mariadb_vs_postgres_sequential": ratio(
            steady("durable_mariadb_sequential"), steady("durable_sequential")
        ),
        "durable_mariadb_vs_postgres_fanout": ratio(steady("durable_mariadb_fanout"), steady("durable_fanout")),
        "durable_mariadb_sequential_steps_vs_skip_locked_mariadb_batch1_items": ratio(
            steady("durable_mariadb_sequential"), skip.get("skip_locked_mariadb_batch1", {}).get("items_per_s")
        ),
        "durable_mariadb_sequential_steps_vs_skip_locked_mariadb_batch32_items": ratio(
            steady("durable_mariadb_sequential"), skip.get("skip_locked_mariadb_batch32", {}).get("items_per_s")
        ),
    }

    def verdict(name: str, value: float | None, ok: bool | None, detail: str) -> dict[str, Any]:
        return {"target": name, "value": value, "pass": ok, "detail": detail}

    def above(value: float | None, limit: float) -> bool | None:
        return None if value is None else value >= limit

    def below(value: float | None, limit: float) -> bool | None:
        return None if value is None else value < limit

    seq, dbos_seq, celery_seq = (
        steady("durable_sequential"),
        steady("dbos_sequential"),
        steady("celery_sequential"),
    )
    sched_p50 = idle_summary["schedule_to_start"].get("p50_ms")
    claim_p50 = idle_summary["start_to_first_claim"].get("p50_ms")
    targets = [
        verdict(
            f">= {TARGET_STEPS_PER_S:.0f} activity steps/s, K={STEPS} sequential, W={WORKERS} workers",
            seq,
            above(seq, TARGET_STEPS_PER_S),
            "steps/s from the first claim to the last completion",
        ),
        verdict(
            "ahead of DBOS Transact (same workload)",
            ratios["durable_vs_dbos_sequential"],
            None if seq is None or dbos_seq is None else seq > dbos_seq,
            f"django-durable {seq} vs DBOS {dbos_seq} steps/s",
        ),
        verdict(
            "ahead of Celery chains (same workload)",
            ratios["durable_vs_celery_sequential"],
            None if seq is None or celery_seq is None else seq > celery_seq,
            f"django-durable {seq} vs Celery {celery_seq} steps/s",
        ),
        verdict(
            f"idle p50 schedule-to-start < {TARGET_IDLE_P50_MS:.0f} ms (activity)",
            sched_p50,
            below(sched_p50, TARGET_IDLE_P50_MS),
            "activity start minus the claim of the workflow task that scheduled it",
        ),
        verdict(
            f"idle p50 start-to-first-claim < {TARGET_IDLE_P50_MS:.0f} ms (new run)",
            claim_p50,
            below(claim_p50, TARGET_IDLE_P50_MS),
            "first workflow-task claim minus the run's creation (stricter reading of the target)",
        ),
        verdict(
            f"per-step wall time K={hi} within {TARGET_SCALING_RATIO:.0f}x of K={lo}",
            scaling_ratio["wall"],
            None if scaling_ratio["wall"] is None else scaling_ratio["wall"] <= TARGET_SCALING_RATIO,
            f"same N={profile.scaling_workflows} at every K",
        ),
        verdict(
            f"per-step worker CPU K={hi} within {TARGET_SCALING_RATIO:.0f}x of K={lo}",
            scaling_ratio["worker_cpu"],
            None if scaling_ratio["worker_cpu"] is None else scaling_ratio["worker_cpu"] <= TARGET_SCALING_RATIO,
            f"same N={profile.scaling_workflows} at every K",
        ),
    ]
    return {
        "rows": rows,
        "scaling": scaling,
        "scaling_ratio": scaling_ratio,
        "idle": idle_summary,
        "idle_runs": idle_runs,
        "skip_locked": skip,
        "ratios": ratios,
        "targets": targets,
    }


# -- output -------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


SYSTEM_ROWS = [
    ("durable_sequential", "django-durable", "sequential"),
    ("durable_threads64_sequential", "django-durable, 64 thr", "sequential"),
    ("durable_mariadb_sequential", "django-durable, MariaDB", "sequential"),
    ("dbos_sequential", "DBOS Transact", "sequential"),
    ("celery_sequential", "Celery chains", "sequential"),
    ("durable_fanout", "django-durable", "fan-out"),
    ("durable_threads64_fanout", "django-durable, 64 thr", "fan-out"),
    ("durable_mariadb_fanout", "django-durable, MariaDB", "fan-out"),
    ("dbos_fanout", "DBOS Transact", "fan-out"),
    ("celery_fanout", "Celery chords", "fan-out"),
]


def print_report(report: dict[str, Any]) -> None:
    m, p, s = report["machine"], report["parameters"], report["summary"]
    print()
    print(f"django-durable vs peers -- {report['date']} -- profile {p['profile']}")
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), load average {m['loadavg_before']} before, "
        f"{m['loadavg_after']} after"
    )
    v = report["versions"]
    print(
        f"versions: Python {v['python']}, Django {v['django']}, DBOS {v['dbos']}, Celery {v['celery']}, "
        f"psycopg {v['psycopg']}, {(v['postgres'] or '').split(' on ')[0]}, Redis {v['redis_server']}"
        + (f", MariaDB {v['mariadb']} (mysqlclient {v['mysqlclient']})" if v.get("mariadb") else "")
    )
    print(f"workload: N x K={STEPS} no-op steps, started before the workers run; {WORKERS} worker processes per system")
    print()
    header = (
        f"  {'system':<24} {'workload':<16} {'steps/s':>9} {'(spawn)':>9} {'wf/s':>7} "
        f"{'hand-off p50/p99 ms':>21} {'CPU ms/step wrk/db/all':>24} {'busy':>5}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for key, system, shape in SYSTEM_ROWS:
        row = s["rows"].get(key)
        if row is None:
            continue
        data = report["runs"][row["run"]]
        n = (data.get("config") or {}).get("workflows")
        workload = f"{shape} N={n}" if n else shape
        busy = (data.get("_harness") or {}).get("busy_cpus_before")
        if "error" in row:
            print(f"  {system:<24} {workload:<16} FAILED: {row['error']}")
            continue
        handoff = row.get("handoff") or {}
        cpu = row.get("cpu_per_step_ms") or {}
        print(
            f"  {system:<24} {workload:<16} {fmt(row.get('steady_steps_per_s')):>9} "
            f"{fmt(row.get('steps_per_s')):>9} {fmt(row.get('steady_workflows_per_s')):>7} "
            f"{fmt(handoff.get('p50_ms')) + ' / ' + fmt(handoff.get('p99_ms')):>21} "
            f"{fmt(cpu.get('workers'), 2) + ' / ' + fmt(cpu.get('database_server'), 2) + ' / ' + fmt(cpu.get('machine'), 2):>24} "
            f"{fmt(busy, 2):>5}" + ("" if row.get("finished") else "  NOT FINISHED")
        )
    for key, data in s["skip_locked"].items():
        batch = key.rsplit("batch", 1)[1]
        system = "SKIP LOCKED, MariaDB" if "mariadb" in key else "SKIP LOCKED"
        if data.get("error"):
            print(f"  {system:<24} {'claim ' + batch:<16} FAILED: {data['error']}")
            continue
        cpu = data.get("cpu_per_item_ms") or {}
        busy = (report["runs"][data["run"]].get("_harness") or {}).get("busy_cpus_before")
        print(
            f"  {system:<24} {'4 procs, claim ' + batch:<16} {fmt(data.get('items_per_s')):>9} "
            f"{'items/s':>9} {'':>7} {'':>21} "
            f"{fmt(cpu.get('workers'), 3) + ' / ' + fmt(cpu.get('database_server'), 3) + ' / ' + fmt(cpu.get('machine'), 3):>24} "
            f"{fmt(busy, 2):>5}"
        )
    print()
    print("  steps/s: from the first claim/dequeue/task start to the last completion; (spawn): from worker spawn.")
    print("  hand-off: django-durable activity start - claim of the workflow task that scheduled it; DBOS step start -")
    print("  previous step end (fan-out: - workflow dequeue); Celery task start - previous task end (the broker hop).")
    print("  busy: CPUs other processes kept busy in the half second before the run (0 = quiet machine).")
    print("  CPU db: the row's database server, all of it (PostgreSQL's processes, or the one mariadbd process).")
    if p["repeats"] > 1:
        print(f"  each row: the median of {p['repeats']} runs by steps/s, in rounds; every run's steps/s:")
        for key, row in s["rows"].items():
            if not key.startswith("durable_scaling"):
                print(f"    {key:<26} {', '.join(fmt(v) for v in row['repeats_steady_steps_per_s'])}")
        for key, data in s["skip_locked"].items():
            print(f"    {key:<26} {', '.join(fmt(v) for v in data['repeats_items_per_s'])}")

    if s["scaling"]:
        print()
        print(f"  per-step cost as history grows (django-durable, N={p['scaling_workflows']} at every K, W={WORKERS})")
        print(f"  {'K':>6} {'wall ms/step':>14} {'worker CPU ms/step':>20} {'steps/s':>9}")
        for steps, row in s["scaling"].items():
            if row.get("error"):
                print(f"  {steps:>6} FAILED: {row['error']}")
                continue
            print(
                f"  {steps:>6} {fmt(row['wall_ms_per_step'], 3):>14} {fmt(row['worker_cpu_ms_per_step'], 3):>20} "
                f"{fmt(row['steady_steps_per_s']):>9}"
            )
        r, ks = s["scaling_ratio"], p["scaling_steps"]
        print(f"  ratio K={ks[-1]} / K={ks[0]}: wall {fmt(r['wall'], 2)}x, worker CPU {fmt(r['worker_cpu'], 2)}x")
        if "wall_longest_two" in r:
            print(
                f"  ratio K={ks[-1]} / K={ks[-2]}: wall {fmt(r['wall_longest_two'], 2)}x, worker CPU "
                f"{fmt(r['worker_cpu_longest_two'], 2)}x (K={ks[0]} also carries each run's fixed start "
                "and close cost)"
            )

    for run_key, idle in s.get("idle_runs", {}).items():
        print()
        spacing = f"{idle.get('spacing_s')} s" + (
            f" + 0..{idle['spacing_jitter_s']} s" if idle.get("spacing_jitter_s") else ""
        )
        print(
            f"  idle workers, {IDLE_RUNS[run_key]} ({run_key}: {idle.get('workflows')} one-step workflows "
            f"{spacing} apart, {WORKERS} workers, POLL_INTERVAL {idle.get('poll_interval')} s)"
        )
        if idle.get("error"):
            print(f"  FAILED: {idle['error']}")
            continue
        for key, label in (
            ("start_to_first_claim", "start -> first claim"),
            ("schedule_to_start", "activity schedule-to-start"),
            ("start_to_close", "start -> close"),
        ):
            st = idle.get(key) or {}
            print(
                f"  {label:<28} p50 {fmt(st.get('p50_ms'), 2)} ms, p90 {fmt(st.get('p90_ms'), 2)} ms, "
                f"p99 {fmt(st.get('p99_ms'), 2)} ms, max {fmt(st.get('max_ms'), 2)} ms"
            )
        load = idle.get("idle_load")
        if load:
            print(f"  {'one idle worker':<28} {idle_load_line(load)}")

    print()
    print("  ratios (steps/s from first claim)")
    for key, value in s["ratios"].items():
        print(f"  {key:<72} {fmt(value, 3)}")
    print()
    print("  targets (issue 7)")
    for t in s["targets"]:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[t["pass"]]
        print(f"  [{mark}] {t['target']}: {fmt(t['value'], 3)} ({t['detail']})")
    print()


def main() -> int:
    args = parse_args()
    profile = PROFILES["full" if args.full else "smoke" if args.smoke else "quick"]
    if args.repeats is not None:
        profile = dataclasses.replace(profile, repeats=max(1, args.repeats))
    everything = {"durable", "fanout", "scaling", "idle", "dbos", "celery", "skiplocked", "mariadb"}
    wanted = {w.strip() for w in args.only.split(",") if w.strip()} or everything
    unknown = wanted - everything
    if unknown:
        sys.exit(f"unknown --only parts: {', '.join(sorted(unknown))}")
    if "mariadb" in wanted and not wanted & {"durable", "fanout", "idle", "skiplocked"}:
        sys.exit("--only mariadb adds the MariaDB rows of durable, fanout, idle and skiplocked: name some of them")
    preflight(wanted)

    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    out_dir = RESULTS_DIR / f"compare-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    import django

    report: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/compare.py", *sys.argv[1:]]),
        "git": git_revision(),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "loadavg_before": loadavg(),
            "busy_cpus_in_the_second_before": busy_cpus(),
        },
        "versions": {
            "python": platform.python_version(),
            "django": django.get_version(),
            "dbos": dist_version("dbos"),
            "celery": dist_version("celery"),
            "kombu": dist_version("kombu"),
            "redis_py": dist_version("redis"),
            "psycopg": dist_version("psycopg"),
            "mysqlclient": dist_version("mysqlclient"),
            **server_versions(wanted),
        },
        "parameters": {
            "profile": profile.name,
            "parts": sorted(wanted),
            "workers": WORKERS,
            "steps": STEPS,
            "workflows": profile.workflows,
            "fanout_workflows": profile.fanout_workflows,
            "scaling_workflows": profile.scaling_workflows,
            "scaling_steps": list(profile.scaling_steps),
            "idle_workflows": profile.idle_workflows,
            "idle_spacing_s": profile.idle_spacing_s,
            "idle_long_workflows": profile.idle_long_workflows,
            "idle_long_spacing_s": profile.idle_long_spacing_s,
            "idle_long_jitter_s": profile.idle_long_jitter_s,
            "idle_load_s": profile.idle_load_s,
            "skip_locked_items": {str(b): n for b, n in profile.skip_locked_items.items()},
            "dbos_worker_concurrency": profile.dbos_worker_concurrency,
            "repeats": profile.repeats,
            "redis_url": REDIS_URL,
            "postgres": {k: v for k, v in pg_params().items() if k != "password"},
            "mariadb": {k: v for k, v in mariadb_params().items() if k != "password"} if "mariadb" in wanted else None,
        },
        "how": {
            "django-durable": (
                f"benchmarks/run.py --db postgres: N workflows started with start_workflow (one transaction each) "
                f"before {WORKERS} `durable_worker` processes start (POLL_INTERVAL 0.01 s, default concurrency); "
                "database durable_bench_compare, dropped and recreated per run. Idle run: run.py --idle, workers "
                "started and warmed up first, POLL_INTERVAL left at the product default; then one idle worker's "
                f"database load (run.py --idle-load {profile.idle_load_s}: transactions of the benchmark database "
                "with one idle worker, less a window as long without it)."
            ),
            "django-durable on MariaDB": (
                "benchmarks/run.py --db mariadb: the same runs on the MariaDB server (database durable_bench_compare, "
                "utf8mb4 / utf8mb4_bin, READ COMMITTED as Django's MySQL backend asks), run right after the "
                "PostgreSQL ones in each round. No LISTEN/NOTIFY: idle workers poll (0.05 s after work, doubling up "
                "to POLL_INTERVAL). Idle runs as on PostgreSQL, and durable_mariadb_idle_long with starts "
                f"{profile.idle_long_spacing_s} s + 0..{profile.idle_long_jitter_s} s apart (a worker backed off to "
                "POLL_INTERVAL). Each idle run also measures one idle worker's database load over "
                f"{profile.idle_load_s} s against a baseline as long without it (MariaDB: statements, SHOW GLOBAL "
                "STATUS Questions, server-wide; PostgreSQL: transactions of the benchmark database)"
            ),
            "scaling": (
                "benchmarks/run.py --warmup: the same N at every K, so that the number of workflows in flight "
                "(and so batching, idle polling and parallelism) stays the same and only the history length "
                "changes; workers warmed up (one purged 2-step run each) before the N runs start in one "
                "transaction, so that start-up cost does not land on the few steps of K=10"
            ),
        },
        "out_dir": str(out_dir.relative_to(ROOT)),
    }
    t0 = time.monotonic()
    runs = measure(profile, wanted, out_dir)
    report["machine"]["loadavg_after"] = loadavg()
    report["total_s"] = round(time.monotonic() - t0, 1)
    report["runs"] = runs
    for key, data in runs.items():
        if "how" in data:
            report["how"][key] = data["how"]
    report["summary"] = summarise(profile, runs)
    out = Path(args.json) if args.json else RESULTS_DIR / f"compare-{stamp}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_report(report)
    print(
        f"  JSON: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}  (each run's own JSON and logs: {report['out_dir']}/)"
    )
    print(f"  total {report['total_s']} s")
    failed = [key for key, data in runs.items() if "error" in data or (data.get("_harness") or {}).get("returncode")]
    if failed:
        print(f"  FAILED or unfinished: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
