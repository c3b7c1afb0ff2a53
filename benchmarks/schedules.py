#!/usr/bin/env python3
"""Schedules benchmark (issue 19): N schedules ticking every minute, fired by W workers.

    .venv/bin/python benchmarks/schedules.py --db postgres                 # 1,000 schedules, 3 ticks each, 2 workers
    .venv/bin/python benchmarks/schedules.py --db mariadb --workers 3 --minutes 5
    .venv/bin/python benchmarks/schedules.py --db sqlite --virtual --minutes 10   # in-process, virtual time

Real time (the default), in order:

1. A fresh database (as ``run.py``: PostgreSQL or MariaDB ``durable_bench``, or an SQLite file
   under benchmarks/results/), migrated.
2. N schedules (``every=60``, ``overlap="allow_all"``, one transaction each, as
   ``create_schedule`` calls from the admin or the API would be) of ``bench_sequence(0)``, on a
   queue no worker serves: the runs are created, not run, so what is measured is the firing.
   Their first tick is the first whole minute at least ``--lead`` s away and they end after
   ``--minutes`` ticks, so exactly N x M ticks fall due, all N of a minute at the same second.
3. W ``durable_worker`` processes (this file run with ``--worker``: the management command
   with a counter of the statements it sends installed on each of its connections), with
   the product's default POLL_INTERVAL (1 s) unless ``--poll-interval``.
4. An idle window, from the workers' readiness to 2 s before the first tick: the cost of
   workers with N schedules not due. Then the firing window, from there to the last run
   created, 0.5 s after it.

Reported:

- **fire lag**: a run's ``created_at`` (the database's clock in the transaction that fired
  the tick) minus its tick (``ExecutionStarted``'s ``schedule.tick``): p50, p90, p99, max, over
  all the runs and per minute. All N ticks of a minute fall due at once, so the p99 is how long
  the workers take to get through a burst of N.
- **per tick**: statements the workers sent (counted in the workers, by verb, each
  ``SELECT ... FOR UPDATE`` apart; ``commits`` are the transactions committed, which are not
  statements here), the workers' CPU and the database server's CPU (as run.py reads them from
  /proc: the whole server, so run it on a quiet machine), over the firing window less the idle
  window's rate over as long, divided by N x M.
- **idle**: the same per second, the workers together, over the idle window.
- that each tick fired once: N x M runs, none skipped, none missed (the schedules' counters).

``--virtual``: no worker process. The test clock (``store.clock_override``) stands at each
tick in turn and this process calls ``store.schedules.fire_due_schedules`` as a worker's loop
does (``CLAIM_BATCH_SIZE`` schedules a pass, again while a pass is full), counting statements
with the same execute wrapper; the database's clock is not read (the test clock is), so a
real worker sends one statement more per pass and per tick. Fire lag is nil by construction.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import (  # after the path above
    RESULTS_DIR,
    busy_cpus,
    cpu_model,
    database_server_cpu_seconds,
    database_version,
    display_path,
    drop_database,
    fresh_database,
    git_revision,
    loadavg,
    proc_cpu_seconds,
    product_poll_interval,
    scan_logs,
    stop_workers,
    summary_ms,
    wait_for_workers_ready,
)

PREFIX = "bsched-"
QUEUE = "bench-scheduled"  # no worker serves it: the runs are created, never run
EVERY = 60
SAMPLE_S = 0.25  # how often a worker writes its counts


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=["sqlite", "postgres", "mariadb"], default="sqlite")
    p.add_argument("--schedules", "-n", type=int, default=1000, help="N: schedules, each every 60 s")
    p.add_argument("--minutes", "-m", type=int, default=3, help="M: ticks per schedule (one a minute)")
    p.add_argument("--workers", "-w", type=int, default=2, help="W: worker processes (real time)")
    p.add_argument("--poll-interval", type=float, default=None, help="POLL_INTERVAL (default: the product's, 1 s)")
    p.add_argument("--lead", type=float, default=45.0, help="at least this many s from creation to the first tick")
    p.add_argument("--virtual", action="store_true", help="in-process, in virtual time: statements per tick only")
    p.add_argument("--db-name", default=None, help="database (default durable_bench) or SQLite file")
    p.add_argument("--keep-db", action="store_true", help="do not drop the database afterwards")
    p.add_argument("--json", default=None, help="where the JSON goes (default benchmarks/results/schedules-*.json)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one worker, this name
    p.add_argument("--counts", default=None, help=argparse.SUPPRESS)  # internal: the worker's counts file
    return p.parse_args()


# -- counting statements ------------------------------------------------------------


class StatementCounter:
    """The statements this process sends through Django's connections, by verb, and the
    transactions it commits. An execute wrapper: install it on every connection."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        words = sql.lstrip().split(None, 1)
        verb = words[0].upper() if words else "?"
        if verb == "SELECT" and "FOR UPDATE" in sql.upper():
            verb = "SELECT FOR UPDATE"
        with self._lock:
            self.counts[verb] += 1
        return execute(sql, params, many, context)

    def install(self, sender: Any = None, connection: Any = None, **kwargs: Any) -> None:
        """A ``connection_created`` receiver (also callable with a connection)."""
        if self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)
        if getattr(connection, "_bench_commits_counted", False):
            return
        commit = connection.commit

        def counted_commit() -> None:
            commit()
            with self._lock:
                self.counts["commits"] += 1

        connection.commit = counted_commit
        connection._bench_commits_counted = True

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def worker_main(args: argparse.Namespace) -> int:
    """A ``durable_worker`` whose statements are counted, written to ``--counts`` as JSON
    lines (time, counts) every SAMPLE_S s and once more when it stops."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db.backends.signals import connection_created

    counter = StatementCounter()
    connection_created.connect(counter.install, weak=False)
    stop = threading.Event()

    def write_samples() -> None:
        with open(args.counts, "a") as out:
            while True:
                out.write(json.dumps({"t": time.time(), **counter.snapshot()}) + "\n")
                out.flush()
                if stop.wait(SAMPLE_S):
                    break
            out.write(json.dumps({"t": time.time(), **counter.snapshot()}) + "\n")

    sampler = threading.Thread(target=write_samples, daemon=True)
    sampler.start()
    try:
        call_command("durable_worker", name=args.worker, verbosity=0)
    finally:
        stop.set()
        sampler.join(5)
    return 0


def counts_at(samples: list[dict[str, Any]], moment: float) -> dict[str, int]:
    """A worker's counts at ``moment``: its last sample before it (SAMPLE_S coarse)."""
    before = [sample for sample in samples if sample["t"] <= moment]
    return {k: v for k, v in (before[-1] if before else {}).items() if k != "t"}


def counts_between(series: list[list[dict[str, Any]]], start: float, end: float) -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter()
    for samples in series:
        total.update(counts_at(samples, end))
        total.subtract(counts_at(samples, start))
    return dict(total)


# -- the load -----------------------------------------------------------------------


def next_minute(after: datetime.datetime) -> datetime.datetime:
    return (after + datetime.timedelta(minutes=1)).replace(second=0, microsecond=0)


def create_schedules(n: int, minutes: int, first_tick: datetime.datetime) -> float:
    """N schedules of M ticks from ``first_tick``; seconds taken (one transaction each)."""
    import django_durable as durable
    from benchmarks.workflows import bench_sequence

    # end_at after start_at (it must be), before the tick after the last.
    end_at = first_tick + datetime.timedelta(seconds=EVERY * (minutes - 1) + 1)
    started = time.perf_counter()
    for i in range(n):
        durable.create_schedule(
            f"{PREFIX}{i:05d}",
            bench_sequence,
            args=[0],
            every=EVERY,
            overlap="allow_all",
            queue=QUEUE,
            start_at=first_tick,
            end_at=end_at,
        )
    return time.perf_counter() - started


def fire_lags() -> tuple[list[float], dict[str, list[float]]]:
    """Each run's created_at minus its tick (seconds), overall and by tick."""
    from django_durable.models import HistoryEvent

    overall: list[float] = []
    by_tick: dict[str, list[float]] = collections.defaultdict(list)
    rows = HistoryEvent.objects.filter(kind="ExecutionStarted", instance__workflow_id__startswith=PREFIX)
    for created_at, payload in rows.values_list("instance__created_at", "payload"):
        tick = datetime.datetime.fromisoformat(payload["schedule"]["tick"])
        lag = (created_at - tick).total_seconds()
        overall.append(lag)
        by_tick[tick.isoformat()].append(lag)
    return overall, dict(sorted(by_tick.items()))


def fired_once(n: int, minutes: int) -> dict[str, Any]:
    """That each of the N x M ticks started one run: the runs (their workflow ids are unique,
    one per tick) and the schedules' counters."""
    from django.db.models import Sum

    from django_durable.models import Schedule, WorkflowInstance

    runs = WorkflowInstance.objects.filter(workflow_id__startswith=PREFIX).count()
    counters = Schedule.objects.aggregate(
        runs_started=Sum("runs_started"), ticks_skipped=Sum("ticks_skipped"), ticks_missed=Sum("ticks_missed")
    )
    return {
        "expected_ticks": n * minutes,
        "runs": runs,
        **counters,
        "ok": runs == n * minutes == counters["runs_started"]
        and not counters["ticks_skipped"]
        and not counters["ticks_missed"],
    }


def per_unit(value: float | None, units: float, scale: float = 1.0, digits: int = 3) -> float | None:
    return None if value is None or not units else round(value * scale / units, digits)


# -- real time ------------------------------------------------------------------------


def spawn(
    args: argparse.Namespace, env: dict[str, str], stamp: str
) -> tuple[list[subprocess.Popen], list[Path], list[Path]]:
    procs, logs, counts = [], [], []
    for i in range(args.workers):
        log, count = RESULTS_DIR / f"{stamp}-worker{i}.log", RESULTS_DIR / f"{stamp}-worker{i}.counts.jsonl"
        command = [sys.executable, __file__, "--worker", f"bench-sched-{i}", "--counts", str(count)]
        with open(log, "w") as out:
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
        logs.append(log)
        counts.append(count)
    return procs, logs, counts


def cpu_now(pids: list[int], db: str) -> dict[str, Any]:
    return {
        "t": time.time(),
        "workers": sum(proc_cpu_seconds(pid) or 0.0 for pid in pids),
        "server": database_server_cpu_seconds(db),
    }


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def main_real(args: argparse.Namespace, report: dict[str, Any], env: dict[str, str], stamp: str) -> bool:
    from django.db import connection

    from django_durable.models import WorkflowInstance

    n, minutes = args.schedules, args.minutes
    first_tick = next_minute(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=args.lead))
    create_s = create_schedules(n, minutes, first_tick)
    tick0 = first_tick.timestamp()
    last_tick = tick0 + EVERY * (minutes - 1)
    procs: list[subprocess.Popen] = []
    try:
        procs, logs, count_files = spawn(args, env, stamp)
        ready = wait_for_workers_ready([f"bench-sched-{i}" for i in range(args.workers)], procs, 60.0)
        connection.close()  # the harness stays off the database until the last tick
        pids = [proc.pid for proc in procs]
        idle_start = time.time() + 2.0
        fire_start = tick0 - 2.0
        if fire_start - idle_start < 5.0:
            raise SystemExit(f"only {fire_start - idle_start:.1f} s before the first tick: raise --lead")
        sleep_until(idle_start)
        cpu = {"idle_start": cpu_now(pids, args.db)}
        sleep_until(fire_start)
        cpu["fire_start"] = cpu_now(pids, args.db)
        sleep_until(last_tick + 0.5)
        deadline = time.time() + 120.0
        while WorkflowInstance.objects.filter(workflow_id__startswith=PREFIX).count() < n * minutes:
            if time.time() > deadline or all(proc.poll() is not None for proc in procs):
                break
            time.sleep(0.5)
        connection.close()
        time.sleep(0.5)
        cpu["fire_end"] = cpu_now(pids, args.db)
        stopped = stop_workers(procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    series = [[json.loads(line) for line in path.read_text().splitlines() if line] for path in count_files]
    idle_s = cpu["fire_start"]["t"] - cpu["idle_start"]["t"]
    fire_s = cpu["fire_end"]["t"] - cpu["fire_start"]["t"]
    idle_counts = counts_between(series, cpu["idle_start"]["t"], cpu["fire_start"]["t"])
    fire_counts = counts_between(series, cpu["fire_start"]["t"], cpu["fire_end"]["t"])
    ticks = n * minutes

    def net(fire: float | None, idle: float | None) -> float | None:
        """The firing window's amount less the idle rate over as long."""
        return None if fire is None or idle is None else fire - idle * fire_s / idle_s

    def cpu_delta(key: str, a: str, b: str) -> float | None:
        x, y = cpu[a][key], cpu[b][key]
        return None if x is None or y is None else y - x

    statements = {verb: net(fire_counts.get(verb, 0), idle_counts.get(verb, 0)) for verb in fire_counts}
    lags, by_tick = fire_lags()
    worker_cpu = net(cpu_delta("workers", "fire_start", "fire_end"), cpu_delta("workers", "idle_start", "fire_start"))
    server_cpu = net(cpu_delta("server", "fire_start", "fire_end"), cpu_delta("server", "idle_start", "fire_start"))
    fired_statements = sum(v or 0.0 for k, v in statements.items() if k != "commits")
    report["results"] = {
        "create": {"seconds": round(create_s, 3), "ms_per_schedule": round(create_s * 1000 / n, 3)},
        "first_tick": first_tick.isoformat(),
        "workers_ready": ready,
        "fired_once": fired_once(n, minutes),
        "fire_lag": summary_ms(lags),
        "fire_lag_by_tick": {tick: summary_ms(values) for tick, values in by_tick.items()},
        "per_tick": {
            "statements": per_unit(fired_statements, ticks, digits=2),
            "statements_by_verb": {k: per_unit(v, ticks, digits=2) for k, v in sorted(statements.items()) if v},
            "commits": per_unit(statements.get("commits"), ticks, digits=2),
            "worker_cpu_ms": per_unit(worker_cpu, ticks, 1000.0),
            "database_server_cpu_ms": per_unit(server_cpu, ticks, 1000.0),
        },
        "idle": {
            "seconds": round(idle_s, 2),
            "statements_per_s": per_unit(sum(v for k, v in idle_counts.items() if k != "commits"), idle_s, digits=2),
            "statements_by_verb_per_s": {k: per_unit(v, idle_s, digits=2) for k, v in sorted(idle_counts.items()) if v},
            "worker_cpu_ms_per_s": per_unit(cpu_delta("workers", "idle_start", "fire_start"), idle_s, 1000.0),
            "database_server_cpu_ms_per_s": per_unit(cpu_delta("server", "idle_start", "fire_start"), idle_s, 1000.0),
        },
        "firing_window": {
            "seconds": round(fire_s, 2),
            "statements_raw": fire_counts,
            "worker_cpu_s_raw": cpu_delta("workers", "fire_start", "fire_end"),
            "database_server_cpu_s_raw": cpu_delta("server", "fire_start", "fire_end"),
        },
        "per_worker_statements_firing": [
            sum(
                v
                for k, v in counts_between([s], cpu["fire_start"]["t"], cpu["fire_end"]["t"]).items()
                if k != "commits"
            )
            for s in series
        ],
        "workers_stopped": stopped,
        "worker_logs": scan_logs(logs),
    }
    return bool(report["results"]["fired_once"]["ok"])


# -- virtual time ----------------------------------------------------------------------


def main_virtual(args: argparse.Namespace, report: dict[str, Any]) -> bool:
    from django.db import connection

    from django_durable import store
    from django_durable.conf import durable_settings
    from django_durable.store import schedules as schedule_store

    n, minutes = args.schedules, args.minutes
    now = [datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc) - datetime.timedelta(seconds=30)]
    store.clock_override = lambda: now[0]
    limit = durable_settings.CLAIM_BATCH_SIZE
    counter = StatementCounter()
    counter.install(connection=connection)
    try:
        create_s = create_schedules(n, minutes, next_minute(now[0]))

        def passes() -> int:
            count = 0
            while True:
                count += 1
                if schedule_store.fire_due_schedules(limit=limit).processed < limit:
                    return count

        before = counter.snapshot()
        idle_passes = passes()
        idle = collections.Counter(counter.snapshot())
        idle.subtract(before)
        fired: collections.Counter[str] = collections.Counter()
        cpu = wall = 0.0
        total_passes = 0
        wall_by_tick: dict[str, float] = {}
        for minute in range(1, minutes + 1):
            now[0] = next_minute(now[0]) if minute == 1 else now[0] + datetime.timedelta(seconds=EVERY)
            before = counter.snapshot()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            total_passes += passes()
            cpu += time.process_time() - cpu0
            wall += time.perf_counter() - wall0
            wall_by_tick[now[0].isoformat()] = round((time.perf_counter() - wall0) * 1000 / n, 3)
            fired.update(counter.snapshot())
            fired.subtract(before)
    finally:
        store.clock_override = None
        connection.execute_wrappers.remove(counter)
    ticks = n * minutes
    report["results"] = {
        "create": {"seconds": round(create_s, 3), "ms_per_schedule": round(create_s * 1000 / n, 3)},
        "fired_once": fired_once(n, minutes),
        "passes": total_passes,
        "per_tick": {
            "statements": per_unit(sum(v for k, v in fired.items() if k != "commits"), ticks, digits=2),
            "statements_by_verb": {k: per_unit(v, ticks, digits=2) for k, v in sorted(fired.items()) if v},
            "commits": per_unit(fired.get("commits", 0), ticks, digits=2),
            "cpu_ms_this_process": per_unit(cpu, ticks, 1000.0),
            "wall_ms_one_process": per_unit(wall, ticks, 1000.0),
        },
        "wall_ms_per_tick_by_minute": wall_by_tick,
        "idle_pass": {"passes": idle_passes, "statements_by_verb": {k: v for k, v in idle.items() if v}},
    }
    return bool(report["results"]["fired_once"]["ok"])


# -- output -----------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    cfg, res, m = report["config"], report["results"], report["machine"]
    tick = res["per_tick"]
    rows = [
        ("date (UTC), commit", f"{report['date']}, {report['git']['commit']} (dirty: {report['git']['dirty']})"),
        ("machine", f"{m['nproc']} CPUs ({m['cpu_model']}), busy before {m['busy_cpus_in_the_second_before']}"),
        ("database", m["database_version"]),
        ("load", f"{cfg['schedules']} schedules x {cfg['minutes']} ticks (every 60 s), {cfg['mode']}"),
        ("fired once", json.dumps(res["fired_once"])),
        ("create_schedule", f"{res['create']['ms_per_schedule']} ms each"),
    ]
    if "fire_lag" in res:
        lag = res["fire_lag"]
        rows.append(
            (
                "fire lag",
                f"min {lag.get('min_ms')} ms, p50 {lag.get('p50_ms')}, p90 {lag.get('p90_ms')}, p99 {lag.get('p99_ms')}, "
                f"max {lag.get('max_ms')}",
            )
        )
        for when, summary in res["fire_lag_by_tick"].items():
            rows.append(
                (
                    f"  tick {when[11:19]}",
                    f"p50 {summary.get('p50_ms')} ms, p99 {summary.get('p99_ms')}, max {summary.get('max_ms')}",
                )
            )
        idle = res["idle"]
        rows.append(
            (
                "idle (workers together)",
                f"{idle['statements_per_s']} statements/s {idle['statements_by_verb_per_s']}, worker CPU "
                f"{idle['worker_cpu_ms_per_s']} ms/s, server CPU {idle['database_server_cpu_ms_per_s']} ms/s",
            )
        )
    rows.append(("per tick", json.dumps(tick)))
    if "idle_pass" in res:
        rows.append(("an idle pass", json.dumps(res["idle_pass"])))
    width = max(len(key) for key, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    print()


def main() -> int:
    args = parse_args()
    if args.worker:
        return worker_main(args)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    mode = "virtual" if args.virtual else "real"
    stamp = now.strftime("%Y%m%dT%H%M%SZ") + f"-schedules-{args.db}-{mode}"
    server = args.db in ("postgres", "mariadb")
    if args.db_name:
        db_name = args.db_name if server else str(Path(args.db_name).resolve())
    else:
        db_name = "durable_bench" if server else str(RESULTS_DIR / f"{stamp}.sqlite3")
    poll_interval = args.poll_interval if args.poll_interval is not None else product_poll_interval()
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
            "BENCH_DB": args.db,
            "BENCH_DB_NAME": db_name,
            "BENCH_POLL_INTERVAL": str(poll_interval),
        }
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    fresh_database(args.db, db_name)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    report: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/schedules.py", *sys.argv[1:]]),
        "git": git_revision(),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "django": django.get_version(),
            "database_version": database_version(args.db),
            "loadavg_before": loadavg(),
            "busy_cpus_in_the_second_before": busy_cpus(),
        },
        "config": {
            "db": args.db,
            "database": db_name if server else display_path(db_name),
            "mode": "virtual time, in-process" if args.virtual else f"real time, {args.workers} workers",
            "schedules": args.schedules,
            "minutes": args.minutes,
            "workers": 0 if args.virtual else args.workers,
            "poll_interval": poll_interval,
            "overlap": "allow_all",
            "queue": f"{QUEUE} (served by no worker: runs are created, not run)",
        },
    }
    try:
        ok = main_virtual(args, report) if args.virtual else main_real(args, report, env, stamp)
    finally:
        report["machine"]["loadavg_after"] = loadavg()
        connection.close()
        if not args.keep_db:
            drop_database(args.db, db_name)
    out = Path(args.json) if args.json else RESULTS_DIR / f"{stamp}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_report(report)
    print(f"  JSON: {display_path(str(out))}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
