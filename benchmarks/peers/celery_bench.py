#!/usr/bin/env python3
"""Celery chains on the same workload as benchmarks/run.py (a benchmark, not a test).

    python benchmarks/peers/celery_bench.py --workflows 200 --steps 10 --processes 2 [--fanout]

What one run does:

1. Empties the Redis database of the broker (``redis://127.0.0.1:6379/7`` by default;
   database 0 is refused) with ``FLUSHDB``.
2. Sends the N workflows before any worker runs: each is ``chain(step, ..., step)`` of K
   no-op tasks (benchmarks/peers/celery_app.py), or with ``--fanout`` a chord of K
   no-ops whose body counts the workflow as done (Redis result backend).
3. Spawns P ``celery worker`` processes (default: 2 workers, ``--pool prefork
   --concurrency 1`` each: two processes run tasks, as two durable_workers do), with
   ``--without-gossip --without-mingle --without-heartbeat``.
4. Polls the completion counter in Redis until it reaches N, stops the workers with
   SIGTERM (warm shutdown), and computes: wall time (worker spawn, and first task start,
   to the last chain's end), steps/s, the hand-off latency between consecutive tasks of a
   chain (a task's start minus the previous task's end: one trip through the broker)
   and CPU per step of the worker process trees, the PostgreSQL server (idle here; for
   comparison) and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.peers.common import ROOT, CpuWindow, spawn, stop, summary_ms, throughput, write_json


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workflows", "-n", type=int, default=100)
    p.add_argument("--steps", "-k", type=int, default=10)
    p.add_argument("--processes", "-p", type=int, default=2, help="celery worker instances")
    p.add_argument("--concurrency", "-c", type=int, default=1, help="celery worker --concurrency")
    p.add_argument("--pool", default="prefork", help="celery worker --pool")
    p.add_argument("--fanout", action="store_true", help="a chord of K no-ops per workflow")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", default=None)
    p.add_argument("--log-dir", default=str(ROOT / "benchmarks" / "results"), help="where the workers' logs go")
    return p.parse_args()


def send_workflows(args: argparse.Namespace) -> float:
    from celery import chain, chord

    from benchmarks.peers.celery_app import fan_done, fan_step, step

    t0 = time.perf_counter()
    for _ in range(args.workflows):
        if args.fanout:
            chord(fan_step.s() for _ in range(args.steps))(fan_done.s())
        elif args.steps == 1:
            step.delay(None, last=True)
        else:
            middle = [step.s() for _ in range(args.steps - 2)]
            chain(step.s(None), *middle, step.s(last=True)).apply_async()
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    import celery
    import redis

    db_number = int(args.redis_url.rsplit("/", 1)[-1] or 0)
    if db_number == 0:
        raise SystemExit("refusing to FLUSHDB Redis database 0: give --redis-url .../<n>, n > 0")
    os.environ["BENCH_CELERY_BROKER"] = args.redis_url
    os.environ["BENCH_CELERY_BACKEND"] = args.redis_url if args.fanout else ""
    from benchmarks.peers import celery_app as bench_app

    r = redis.Redis.from_url(args.redis_url)
    r.flushdb()
    send_s = send_workflows(args)
    queued = r.llen(bench_app.QUEUE)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    logs = [Path(args.log_dir) / f"{stamp}-celery-worker{i}.log" for i in range(args.processes)]
    cmd = [
        sys.executable, "-m", "celery", "-A", "benchmarks.peers.celery_app", "worker",
        "--pool", args.pool, "--concurrency", str(args.concurrency), "-Q", bench_app.QUEUE,
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING",
    ]  # fmt: skip
    env = {
        "BENCH_CELERY_BROKER": args.redis_url,
        "BENCH_CELERY_BACKEND": os.environ["BENCH_CELERY_BACKEND"],
    }
    result: dict[str, Any] = {
        "system": "celery",
        "celery_version": celery.__version__,
        "config": {
            "workflows": args.workflows,
            "steps": args.steps,
            "fanout": args.fanout,
            "processes": args.processes,
            "pool": args.pool,
            "concurrency": args.concurrency,
            "broker": args.redis_url,
            "result_backend": args.redis_url if args.fanout else None,
        },
        "how": (
            f"Celery {celery.__version__}, Redis broker {args.redis_url} (FLUSHDB first): "
            f"{args.workflows} "
            + (
                f"chords of {args.steps} no-op tasks (group + body; Redis result backend, needed by chords)"
                if args.fanout
                else f"chains of {args.steps} no-op tasks (no result backend; each task passes its finish "
                "time to the next in the chain message; the last one INCRs a counter in Redis)"
            )
            + f" sent before any worker ran; {args.processes} x `celery worker --pool {args.pool} "
            f"--concurrency {args.concurrency} --without-gossip --without-mingle --without-heartbeat` "
            "(default prefetch multiplier 4, early acks)"
        ),
        "send": {
            "seconds": round(send_s, 4),
            "ms_per_start": round(send_s * 1000 / args.workflows, 3) if args.workflows else None,
            "messages_queued": queued,
        },
    }
    procs: list[subprocess.Popen] = []
    try:
        spawned_at = time.time()
        procs = [spawn([*cmd, "-n", f"bench{i}@%h"], logs[i], env) for i in range(args.processes)]
        window = CpuWindow([p.pid for p in procs])
        snaps: dict[str, Any] = {"spawn": window.snapshot()}
        completion = wait_for_completion(args, r, bench_app, queued, procs, snaps, window)
        snaps["done"] = window.snapshot()
        result["completion"] = completion
        result["workers_stopped"] = stop(procs)
        ends = [float(x) for x in r.lrange(bench_app.ENDS_KEY, 0, -1)]
        handoffs: list[float] = []
        if args.fanout:
            starts = [s for row in r.lrange(bench_app.STARTS_KEY, 0, -1) for s in json.loads(row)]
            first_start = min(starts) if starts else None
        else:
            raw_first = r.get(bench_app.FIRST_START_KEY)
            first_start = float(raw_first) if raw_first else None
            handoffs = [g for row in r.lrange(bench_app.GAPS_KEY, 0, -1) for g in json.loads(row)]
        last = max(ends) if ends else None
        elapsed = last - spawned_at if last else None
        steady = last - first_start if last and first_start else None
        result.update(throughput(args.workflows, args.steps, elapsed, steady))
        result["cpu_per_step_ms"] = CpuWindow.per_unit_ms(
            snaps.get("first", snaps["spawn"]), snaps["done"], args.workflows * args.steps
        )
        result["history"] = {
            "chains_finished": len(ends),
            # The first task of a chain waited in the queue since the start: not a hand-off.
            "step_handoff": summary_ms(handoffs) if not args.fanout else {"count": 0},
        }
        result["logs"] = [str(p) for p in logs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        r.flushdb()
    return result


def wait_for_completion(
    args: argparse.Namespace,
    r: Any,
    bench_app: Any,
    queued: int,
    procs: list[subprocess.Popen],
    snaps: dict[str, Any],
    window: CpuWindow,
) -> dict[str, Any]:
    deadline = time.monotonic() + args.timeout
    while True:
        if "first" not in snaps and r.llen(bench_app.QUEUE) < queued:
            snaps["first"] = window.snapshot()  # a worker has fetched its first message
        done = int(r.get(bench_app.DONE_KEY) or 0)
        if done >= args.workflows:
            return {"finished": True, "done": done}
        if all(p.poll() is not None for p in procs):
            return {"finished": False, "reason": "all workers exited", "done": done}
        if time.monotonic() > deadline:
            return {"finished": False, "reason": f"timeout after {args.timeout} s", "done": done}
        time.sleep(0.02 if "first" not in snaps else 0.05)


def main() -> int:
    args = parse_args()
    result = run(args)
    if args.json:
        write_json(args.json, result)
    print(
        f"Celery: {result.get('steady_steps_per_s')} steps/s from first task start "
        f"({result.get('steps_per_s')} from spawn), finished={result['completion']['finished']}, "
        f"hand-off p50 {result['history']['step_handoff'].get('p50_ms')} ms, "
        f"CPU per step {result['cpu_per_step_ms']}"
    )
    return 0 if result["completion"]["finished"] else 1


if __name__ == "__main__":
    sys.exit(main())
