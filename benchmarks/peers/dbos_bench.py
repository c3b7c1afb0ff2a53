#!/usr/bin/env python3
"""DBOS Transact on the same workload as benchmarks/run.py (a benchmark, not a test).

    python benchmarks/peers/dbos_bench.py --workflows 200 --steps 10 --processes 2 [--fanout]

What one run does:

1. Drops and creates the PostgreSQL database ``dbos_bench`` (same server as the
   django-durable runs) and creates DBOS's system tables with ``dbos migrate``.
2. With a ``DBOSClient`` (no executor running yet), registers the queue ``bench``
   (``worker_concurrency`` per process, ``polling_interval_sec``) and enqueues the N
   workflows, each its own transaction, as django-durable's ``start_workflow`` does.
3. Spawns P worker processes (this file with ``--worker``): each is a DBOS executor
   with its own executor id that dequeues from ``bench`` and runs the workflows in
   its thread pool. A workflow is K ``@DBOS.step()`` no-ops in sequence, or with
   ``--fanout`` an async workflow that runs K async no-op steps with
   ``asyncio.gather``.
4. Polls ``dbos.workflow_status`` until all N have succeeded, stops the workers and
   computes from DBOS's own tables: wall time (worker spawn, and first dequeue, to the
   last completion), steps/s, the step hand-off latency (a step's start minus the
   previous step's completion, the first step's minus the workflow's dequeue), and
   CPU per step of the worker processes, the PostgreSQL server and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dbos import DBOS, DBOSClient, DBOSConfig, EnqueueOptions

from benchmarks.peers.common import (
    ROOT,
    CpuWindow,
    drop_pg_database,
    fresh_pg_database,
    pg_url,
    spawn,
    stop,
    summary_ms,
    throughput,
    write_json,
)

APP_NAME = "dbos_bench"
APP_VERSION = "bench"  # fixed, so that the client's enqueues match the executors' version
QUEUE = "bench"
SEQUENCE = "bench_sequence"
FANOUT = "bench_fanout"


@DBOS.step(name="bench_noop")
def bench_noop() -> float:
    return time.time()


@DBOS.step(name="bench_noop_async")
async def bench_noop_async() -> float:
    return time.time()


@DBOS.workflow(name=SEQUENCE)
def bench_sequence(steps: int) -> int:
    for _ in range(steps):
        bench_noop()
    return steps


@DBOS.workflow(name=FANOUT)
async def bench_fanout(steps: int) -> int:
    await asyncio.gather(*(bench_noop_async() for _ in range(steps)))
    return steps


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workflows", "-n", type=int, default=100)
    p.add_argument("--steps", "-k", type=int, default=10)
    p.add_argument("--processes", "-p", type=int, default=2, help="DBOS executor processes")
    p.add_argument("--fanout", action="store_true", help="K steps in parallel (asyncio.gather)")
    p.add_argument(
        "--worker-concurrency",
        type=int,
        default=8,
        help="workflows one executor runs at once (the queue's worker_concurrency); with no limit "
        "the first executor to poll takes the whole backlog and the others stay idle",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.01,
        help="the queue's polling_interval_sec (django-durable's runs poll every 0.01 s too)",
    )
    p.add_argument("--db-name", default="dbos_bench")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--keep-db", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--log-dir", default=str(ROOT / "benchmarks" / "results"), help="where the workers' logs go")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def dbos_config(args: argparse.Namespace, index: int) -> DBOSConfig:
    return {
        "name": APP_NAME,
        "system_database_url": pg_url(args.db_name),
        "application_version": APP_VERSION,
        "executor_id": f"dbos-bench-{index}",
        "run_migrations": False,
        "log_level": "WARNING",
    }


def worker_main(args: argparse.Namespace) -> int:
    """One DBOS executor: dequeue from ``bench`` until SIGTERM."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    DBOS(config=dbos_config(args, args.worker))
    DBOS.launch()
    print(f"dbos executor {args.worker} launched", flush=True)
    stopping.wait()
    DBOS.destroy(workflow_completion_timeout_sec=5)
    return 0


# -- the harness ------------------------------------------------------------------------


def migrate(args: argparse.Namespace) -> None:
    cli = Path(sys.executable).with_name("dbos")
    subprocess.run(
        [str(cli), "migrate", "--sys-db-url", pg_url(args.db_name)],
        check=True,
        capture_output=True,
        text=True,
    )


def enqueue_all(args: argparse.Namespace, client: DBOSClient) -> float:
    client.register_queue(
        QUEUE,
        worker_concurrency=args.worker_concurrency,
        polling_interval_sec=args.poll_interval,
        application_name=APP_NAME,
    )
    options: EnqueueOptions = {
        "workflow_name": FANOUT if args.fanout else SEQUENCE,
        "queue_name": QUEUE,
        "app_version": APP_VERSION,
        "application_name": APP_NAME,
    }
    t0 = time.perf_counter()
    for i in range(args.workflows):
        client.enqueue({**options, "workflow_id": f"bench-{i}"}, args.steps)
    return time.perf_counter() - t0


def poll_status(conn: Any) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) FROM dbos.workflow_status GROUP BY status").fetchall()
    return {status: int(count) for status, count in rows}


def wait_for_completion(args: argparse.Namespace, procs: list[subprocess.Popen], on_first_start: Any) -> dict[str, Any]:
    import psycopg

    deadline = time.monotonic() + args.timeout
    first_seen = False
    with psycopg.connect(pg_url(args.db_name), autocommit=True) as conn:
        while True:
            by_status = poll_status(conn)
            if not first_seen and any(s != "ENQUEUED" for s in by_status):
                first_seen = True
                on_first_start()
            if by_status.get("SUCCESS", 0) >= args.workflows:
                return {"finished": True, "by_status": by_status}
            if all(p.poll() is not None for p in procs):
                return {"finished": False, "reason": "all executors exited", "by_status": by_status}
            if time.monotonic() > deadline:
                return {
                    "finished": False,
                    "reason": f"timeout after {args.timeout} s",
                    "by_status": by_status,
                }
            time.sleep(0.02 if not first_seen else 0.05)


def history_metrics(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(pg_url(args.db_name), autocommit=True) as conn:
        runs = {
            wid: (started, completed)
            for wid, started, completed in conn.execute(
                "SELECT workflow_uuid, started_at_epoch_ms, coalesce(completed_at, updated_at) "
                "FROM dbos.workflow_status WHERE queue_name = %s",
                [QUEUE],
            ).fetchall()
        }
        steps = conn.execute(
            "SELECT workflow_uuid, function_id, started_at_epoch_ms, completed_at_epoch_ms "
            "FROM dbos.operation_outputs ORDER BY workflow_uuid, function_id"
        ).fetchall()
    handoffs: list[float] = []
    previous_end: dict[str, float] = {}
    step_count = 0
    for wid, _, started, completed in steps:
        if wid not in runs or started is None:
            continue
        step_count += 1
        if args.fanout:
            # Every step of a fan-out starts from the workflow's start.
            base = runs[wid][0]
        else:
            base = previous_end.get(wid, runs[wid][0])
        if base is not None:
            handoffs.append((started - base) / 1000.0)
        if completed is not None:
            previous_end[wid] = completed
    starts = [s for s, _ in runs.values() if s is not None]
    ends = [e for _, e in runs.values() if e is not None]
    return {
        "steps_recorded": step_count,
        "first_start_ms": min(starts) if starts else None,
        "last_end_ms": max(ends) if ends else None,
        "step_handoff": summary_ms(handoffs),
        "workflow_run_time": summary_ms(
            [(e - s) / 1000.0 for s, e in runs.values() if s is not None and e is not None]
        ),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import dbos

    fresh_pg_database(args.db_name)
    migrate(args)
    client = DBOSClient(system_database_url=pg_url(args.db_name), application_name=APP_NAME)
    try:
        enqueue_s = enqueue_all(args, client)
    finally:
        client.destroy()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    procs: list[subprocess.Popen] = []
    result: dict[str, Any] = {
        "system": "dbos",
        "dbos_version": dbos.__version__ if hasattr(dbos, "__version__") else _dist_version("dbos"),
        "config": {
            "workflows": args.workflows,
            "steps": args.steps,
            "fanout": args.fanout,
            "processes": args.processes,
            "worker_concurrency": args.worker_concurrency,
            "poll_interval": args.poll_interval,
            "database": args.db_name,
        },
        "how": (
            f"DBOS Transact {_dist_version('dbos')}: {args.workflows} workflows enqueued with DBOSClient "
            f"on queue '{QUEUE}' before any executor ran (one transaction each), then {args.processes} "
            f"executor processes (DBOS.launch(), distinct executor ids) dequeue them "
            f"(worker_concurrency {args.worker_concurrency}, polling_interval_sec {args.poll_interval}); "
            + (
                f"each workflow is an async @DBOS.workflow that awaits asyncio.gather of {args.steps} "
                "async @DBOS.step no-ops"
                if args.fanout
                else f"each workflow calls {args.steps} @DBOS.step no-ops in sequence"
            )
            + f"; system database '{args.db_name}' on the same PostgreSQL server"
        ),
        "enqueue": {
            "seconds": round(enqueue_s, 4),
            "ms_per_start": round(enqueue_s * 1000 / args.workflows, 3) if args.workflows else None,
        },
    }
    try:
        spawned_at_ms = time.time() * 1000
        for i in range(args.processes):
            procs.append(
                spawn(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--worker",
                        str(i),
                        "--db-name",
                        args.db_name,
                    ],
                    Path(args.log_dir) / f"{stamp}-dbos-worker{i}.log",
                )
            )
        window = CpuWindow([p.pid for p in procs])
        snaps: dict[str, Any] = {"spawn": window.snapshot()}
        completion = wait_for_completion(args, procs, lambda: snaps.setdefault("first", window.snapshot()))
        snaps["done"] = window.snapshot()
        result["completion"] = completion
        result["executors_stopped"] = stop(procs)
        hist = history_metrics(args)
        first, last = hist.pop("first_start_ms"), hist.pop("last_end_ms")
        elapsed = (last - spawned_at_ms) / 1000.0 if last else None
        steady = (last - first) / 1000.0 if last and first else None
        result.update(throughput(args.workflows, args.steps, elapsed, steady))
        result["cpu_per_step_ms"] = CpuWindow.per_unit_ms(
            snaps.get("first", snaps["spawn"]), snaps["done"], args.workflows * args.steps
        )
        result["history"] = hist
        result["logs"] = [str(Path(args.log_dir) / f"{stamp}-dbos-worker{i}.log") for i in range(args.processes)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if not args.keep_db:
            drop_pg_database(args.db_name)
    return result


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main() -> int:
    args = parse_args()
    if args.worker is not None:
        return worker_main(args)
    result = run(args)
    if args.json:
        write_json(args.json, result)
    print(
        f"DBOS: {result.get('steady_steps_per_s')} steps/s from first dequeue "
        f"({result.get('steps_per_s')} from spawn), finished={result['completion']['finished']}, "
        f"hand-off p50 {result['history']['step_handoff'].get('p50_ms')} ms, "
        f"CPU per step {result['cpu_per_step_ms']}"
    )
    return 0 if result["completion"]["finished"] else 1


if __name__ == "__main__":
    os.environ.setdefault("DBOS__APPVERSION", APP_VERSION)
    sys.exit(main())
