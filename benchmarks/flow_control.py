#!/usr/bin/env python3
"""Flow control (issue 20): an unlimited queue against the same queue limited to ``concurrency`` 16.

    .venv/bin/python benchmarks/flow_control.py --db postgres                        # 200 x 10, 2 workers, 3 rounds
    .venv/bin/python benchmarks/flow_control.py --db postgres --baseline-rev 1df42b1  # and the code before flow control
    .venv/bin/python benchmarks/flow_control.py --db mariadb --repeat 5 --workflows 500
    .venv/bin/python benchmarks/flow_control.py --db postgres --modes unlimited,limited,loose

Every run is ``benchmarks/run.py``'s throughput run, unchanged (a fresh database; N workflows of K
sequential no-op activities, ``--fanout`` for run.py's fan-out, started before W ``durable_worker``
processes, each with the default 16 activity threads, drain them), run as a subprocess, one after
another, on one database server (``--db``):

- ``unlimited``: the workload as it is, no ``DURABLE["QUEUES"]``.
- ``limited``: the activities' queue (``default``, where ``bench_noop`` runs) limited to
  ``{"concurrency": 16}`` (``--limit``), through benchmarks/settings.py's ``BENCH_QUEUES``, for the
  harness and the workers. With 2 workers of 16 threads the limit binds: half the threads idle.
- ``loose`` (only if ``--modes`` names it): the same queue limited to a concurrency no run reaches
  (10,000): every lease of an activity takes the queue's lock and none is eager, but the cap never
  binds. It tells the cost of the path from the cost of the cap.
- ``before`` (with ``--baseline-worktree`` or ``--baseline-rev``): the unlimited run on another
  checkout: its own run.py, settings and django_durable, harness and workers alike (its run.py puts
  its tree first on the path; checked before the first run). 1df42b1 is the code before flow control.
  ``--baseline-rev`` exports the revision with ``git archive`` to a temporary directory (the
  repository's state is not touched); ``--baseline-worktree`` takes a checkout already made
  (``git worktree add /tmp/dd-base 1df42b1``).

The modes run in rounds (``--repeat``, 3), in reverse order every other round (A B, B A, ...), so that
a drift of the machine falls on every mode alike. Per run: activities per second from the first
claim to the last close (run.py's ``steady_steps_per_s``), schedule-to-start p50/p99, CPU per activity
(workers, the whole database server, the whole machine), the workers' transactions (PostgreSQL) or
statements (MariaDB) per activity, and, read from the kept database after the run, the most
activities between their function's start and the commit of their result at once (``held``). A
slot is held from the lease to that commit, so this is a lower bound of the slots held at once:
under a limit it must not pass the limit. Summary: each mode's median and range over its runs, the
ratios of the medians, and each ratio within each round.

Writes benchmarks/results/flow-control-<timestamp>.json; every run's own JSON and the workers' logs
go to benchmarks/results/flow-control-<timestamp>/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.compare import durable_row, ratio, run_json  # after the path above
from benchmarks.run import RESULTS_DIR, busy_cpus, cpu_model, drop_database, git_revision, loadavg

QUEUE = "default"  # bench_noop's queue: no queue= on it, so DEFAULT_QUEUE
LOOSE_LIMIT = 10_000
MODES = ("before", "unlimited", "limited", "loose")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=["sqlite", "postgres", "mariadb"], default="postgres")
    p.add_argument("--workflows", "-n", type=int, default=200, help="N: workflows per run (run.py -n)")
    p.add_argument("--steps", "-k", type=int, default=10, help="K: no-op activities per workflow (run.py -k)")
    p.add_argument("--workers", "-w", type=int, default=2, help="W: durable_worker processes (run.py -w)")
    p.add_argument("--fanout", action="store_true", help="run.py --fanout: the K activities in parallel")
    p.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="the workers' POLL_INTERVAL (run.py --poll-interval; default run.py's 0.01 s)",
    )
    p.add_argument("--limit", type=int, default=16, help="the limited mode's concurrency (default 16)")
    p.add_argument("--repeat", type=int, default=3, help="rounds of every mode (default 3)")
    p.add_argument(
        "--modes",
        default="unlimited,limited",
        help="comma-separated, of: unlimited, limited, loose (before is added by a baseline option)",
    )
    base = p.add_mutually_exclusive_group()
    base.add_argument("--baseline-worktree", default=None, help="a checkout of the code to compare (mode before)")
    base.add_argument(
        "--baseline-rev", default=None, help="a revision to compare (mode before), exported with git archive"
    )
    p.add_argument("--db-name", default="durable_bench_flow", help="the server database, dropped and recreated")
    p.add_argument("--timeout", type=float, default=300.0, help="per run: give up after this many s")
    p.add_argument("--json", default=None, help="default benchmarks/results/flow-control-<timestamp>.json")
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES[1:])
    if unknown or not modes:
        p.error(f"--modes: {', '.join(sorted(unknown)) or 'none given'}; choose among unlimited, limited, loose")
    if args.baseline_worktree or args.baseline_rev:
        modes.insert(0, "before")
    args.mode_list = modes
    args.repeat = max(1, args.repeat)
    return args


# -- the code before -----------------------------------------------------------------


def export_revision(rev: str) -> tuple[Path, str]:
    """``rev``'s tree in a new temporary directory (git archive: no worktree, no checkout) and its sha."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    dest = Path(tempfile.mkdtemp(prefix=f"dd-baseline-{sha[:7]}-"))
    with subprocess.Popen(["git", "archive", "--format=tar", sha], cwd=ROOT, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(dest, filter="data")
    if proc.returncode:
        raise RuntimeError(f"git archive {sha} failed ({proc.returncode})")
    return dest, sha


def check_baseline(tree: Path) -> dict[str, Any]:
    """That ``tree`` has run.py and that its processes import its own django_durable, not this one
    (the project's editable install comes after PYTHONPATH and the script's tree on the path)."""
    if not (tree / "benchmarks" / "run.py").is_file():
        sys.exit(f"{tree} has no benchmarks/run.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    imported = subprocess.run(
        [sys.executable, "-c", "import django_durable; print(django_durable.__file__)"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(imported).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"the baseline's processes would import {imported}, not {tree}'s django_durable")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=False)
    return {"tree": str(tree), "imports": imported, "commit": head.stdout.strip() if head.returncode == 0 else None}


# -- one run -------------------------------------------------------------------------


def queues_setting(mode: str, limit: int) -> str:
    if mode == "limited":
        return json.dumps({QUEUE: {"concurrency": limit}})
    if mode == "loose":
        return json.dumps({QUEUE: {"concurrency": LOOSE_LIMIT}})
    return ""  # settings.py reads an empty BENCH_QUEUES as unset


def run_once(
    args: argparse.Namespace, mode: str, label: str, out_dir: Path, db_name: str, baseline: Path | None
) -> dict[str, Any]:
    tree = baseline if mode == "before" and baseline else ROOT
    out = out_dir / f"{label}.json"
    cmd = [
        "env",
        f"BENCH_QUEUES={queues_setting(mode, args.limit)}",
        sys.executable,
        str(tree / "benchmarks" / "run.py"),
        "--db",
        args.db,
        "--db-name",
        db_name,
        "--workflows",
        str(args.workflows),
        "--steps",
        str(args.steps),
        "--workers",
        str(args.workers),
        "--timeout",
        str(args.timeout),
        "--keep-db",  # read below, then dropped
        "--json",
        str(out),
        "--log-dir",
        str(out_dir),
        *(["--fanout"] if args.fanout else []),
        *(["--poll-interval", str(args.poll_interval)] if args.poll_interval is not None else []),
    ]
    try:
        data = run_json(label, cmd, out, args.timeout + 120)
        kept = inspect_database()
    finally:
        from django.db import connection

        connection.close()
        drop_database(args.db, db_name)
    row = durable_row(data)
    row |= kept
    row["busy_cpus_before"] = (data.get("_harness") or {}).get("busy_cpus_before")
    row["json"] = str(out.relative_to(ROOT))
    return row


def inspect_database() -> dict[str, Any]:
    """From the run's kept database: the slots the activities held (see ``slots_held``) and the
    queues that have a QueueState row (made by a limited queue's first lease)."""
    from django.db import DatabaseError

    from django_durable.models import HistoryEvent

    intervals: list[tuple[float, float]] = []
    try:
        for completed, payload in HistoryEvent.objects.filter(kind="ActivityCompleted").values_list(
            "timestamp", "payload"
        ):
            started = (payload or {}).get("result")
            if isinstance(started, (int, float)) and completed.timestamp() >= started:
                intervals.append((started, completed.timestamp()))
    except DatabaseError as exc:
        return {"held": None, "queue_states": None, "inspect_error": str(exc)}
    try:
        from django_durable.models import QueueState

        queue_states: list[str] | None = list(QueueState.objects.values_list("queue", flat=True))
    except (ImportError, DatabaseError):  # the code before flow control has no such table
        queue_states = None
    return {"held": slots_held(intervals), "queue_states": queue_states}


def slots_held(intervals: list[tuple[float, float]]) -> dict[str, float | int] | None:
    """Over the activities' ``[start, completion]`` intervals (the function's start to the commit of
    its result): the most that overlap (``peak``) and the mean interval. A slot is held from the
    lease to that commit, so ``peak`` is a lower bound of the slots held at once: under a limit it
    must not pass it. The time from the lease to the start is not in history."""
    if not intervals:
        return None
    # An end before a start at the same instant: the lower bound.
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return {
        "peak": peak,
        "start_to_commit_mean_ms": round(statistics.fmean(end - start for start, end in intervals) * 1000, 2),
    }


# -- the summary ---------------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def span(values: list[float | None]) -> list[float] | None:
    present = [v for v in values if v is not None]
    return [min(present), max(present)] if present else None


def summarise(args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    per_mode: dict[str, Any] = {}
    for mode in args.mode_list:
        rows = [r for r in runs.values() if r["mode"] == mode and "error" not in r]

        def col(*path: str, rows: list[dict[str, Any]] = rows) -> list[float | None]:
            out = []
            for r in rows:
                value: Any = r
                for key in path:
                    value = (value or {}).get(key)
                out.append(value)
            return out

        per_mode[mode] = {
            "runs": len(rows),
            "failed": sum(1 for r in runs.values() if r["mode"] == mode and "error" in r),
            "steady_steps_per_s": median(col("steady_steps_per_s")),
            "steady_steps_per_s_range": span(col("steady_steps_per_s")),
            "schedule_to_start_p50_ms": median(col("handoff", "p50_ms")),
            "schedule_to_start_p99_ms": median(col("handoff", "p99_ms")),
            "cpu_ms_per_step_workers": median(col("cpu_per_step_ms", "workers")),
            "cpu_ms_per_step_database_server": median(col("cpu_per_step_ms", "database_server")),
            "cpu_ms_per_step_machine": median(col("cpu_per_step_ms", "machine")),
            "worker_transactions_per_step": median(col("worker_transactions_per_step")),
            "worker_statements_per_step": median(col("worker_statements_per_step")),
            "held_peak": span(col("held", "peak")),
            "start_to_commit_ms": median(col("held", "start_to_commit_mean_ms")),
            "busy_cpus_before": span(col("busy_cpus_before")),
        }

    def rate(mode: str, round_no: int | None = None) -> float | None:
        if round_no is None:
            return (per_mode.get(mode) or {}).get("steady_steps_per_s")
        return (runs.get(f"{mode}-r{round_no}") or {}).get("steady_steps_per_s")

    ratios: dict[str, Any] = {}
    for num, den in (("limited", "unlimited"), ("loose", "unlimited"), ("unlimited", "before")):
        if num in args.mode_list and den in args.mode_list:
            ratios[f"{num}/{den}"] = {
                "of_the_medians": ratio(rate(num), rate(den)),
                "per_round": [ratio(rate(num, r), rate(den, r)) for r in range(1, args.repeat + 1)],
            }
    return {"modes": per_mode, "ratios": ratios}


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, list):
        return "–".join(fmt(v, digits) for v in value) if len(set(value)) > 1 else fmt(value[0], digits)
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def print_report(args: argparse.Namespace, runs: dict[str, dict[str, Any]], summary: dict[str, Any]) -> None:
    unit = "xact" if args.db == "postgres" else "stmt" if args.db == "mariadb" else None
    header: tuple[str, ...] = ("run", "act/s", "s2s p50", "p99 ms", "CPU ms/act: workers", "db", "machine")
    header += (f"{unit}/act",) if unit else ()
    header += ("held", "run+commit ms", "busy")
    lines: list[tuple[str, ...]] = [header]
    for label, r in runs.items():
        if "error" in r:
            lines.append((label, f"FAILED: {r['error']}", *("" for _ in header[2:])))
            continue
        cpu = r.get("cpu_per_step_ms") or {}
        held = r.get("held") or {}
        cells: tuple[str, ...] = (
            label,
            fmt(r.get("steady_steps_per_s")),
            fmt(r["handoff"].get("p50_ms")),
            fmt(r["handoff"].get("p99_ms")),
            fmt(cpu.get("workers"), 2),
            fmt(cpu.get("database_server"), 2),
            fmt(cpu.get("machine"), 2),
        )
        if unit:
            cells += (
                fmt(r.get("worker_transactions_per_step" if unit == "xact" else "worker_statements_per_step"), 2),
            )
        cells += (fmt(held.get("peak")), fmt(held.get("start_to_commit_mean_ms")), fmt(r.get("busy_cpus_before"), 2))
        lines.append(cells)
    lines.append(tuple("" for _ in header))
    for mode, m in summary["modes"].items():
        cells = (
            f"{mode} (median of {m['runs']})",
            f"{fmt(m['steady_steps_per_s'])} [{fmt(m['steady_steps_per_s_range'])}]",
            fmt(m["schedule_to_start_p50_ms"]),
            fmt(m["schedule_to_start_p99_ms"]),
            fmt(m["cpu_ms_per_step_workers"], 2),
            fmt(m["cpu_ms_per_step_database_server"], 2),
            fmt(m["cpu_ms_per_step_machine"], 2),
        )
        if unit:
            cells += (fmt(m["worker_transactions_per_step" if unit == "xact" else "worker_statements_per_step"], 2),)
        cells += (fmt(m["held_peak"]), fmt(m["start_to_commit_ms"]), fmt(m["busy_cpus_before"], 2))
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    print()
    kind = "fan-out" if args.fanout else "sequential"
    print(
        f"  {args.db}: {args.workflows} workflows x {args.steps} {kind} no-op activities, {args.workers} workers "
        f"(16 activity threads each), POLL_INTERVAL {args.poll_interval or 0.01} s; "
        f"limited: {{{QUEUE!r}: {{'concurrency': {args.limit}}}}}"
    )
    print("  act/s: activities per second, first claim to last close; s2s: schedule-to-start; CPU: /proc, per activity")
    if unit:
        print(f"  {unit}/act: the workers' {'transactions' if unit == 'xact' else 'statements'} per activity")
    print("  held: the most activities between their start and their result's commit at once (a lower bound of")
    print("  the slots held); run+commit: that interval's mean; busy: CPUs other processes used just before the run")
    print()
    for line in lines:
        print("  " + "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    print()
    for name, r in summary["ratios"].items():
        print(f"  {name}: {fmt(r['of_the_medians'], 3)} (medians); per round {fmt(r['per_round'], 3)}")
    print()


# -- main ----------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    out_dir = RESULTS_DIR / f"flow-control-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    db_name = str(out_dir / "flow.sqlite3") if args.db == "sqlite" else args.db_name

    # This process reads each run's kept database with the ORM: the same settings as run.py's.
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
            "BENCH_DB": args.db,
            "BENCH_DB_NAME": db_name,
            "BENCH_CONN_MAX_AGE": "0",
        }
    )
    os.environ.pop("BENCH_QUEUES", None)
    import django

    django.setup()

    exported: Path | None = None
    baseline: dict[str, Any] | None = None
    tree: Path | None = None
    if args.baseline_rev:
        exported, sha = export_revision(args.baseline_rev)
        tree = exported
        baseline = check_baseline(tree) | {"commit": sha, "exported_with": "git archive"}
    elif args.baseline_worktree:
        tree = Path(args.baseline_worktree).resolve()
        baseline = check_baseline(tree)

    report: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/flow_control.py", *sys.argv[1:]]),
        "git": git_revision(),
        "baseline": baseline,
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "django": django.get_version(),
            "loadavg_before": loadavg(),
            "busy_cpus_in_the_second_before": busy_cpus(),
        },
        "parameters": {
            "db": args.db,
            "workflows": args.workflows,
            "steps": args.steps,
            "fanout": args.fanout,
            "workers": args.workers,
            "poll_interval": args.poll_interval or 0.01,
            "modes": args.mode_list,
            "repeat": args.repeat,
            "limited": {QUEUE: {"concurrency": args.limit}},
            "loose": {QUEUE: {"concurrency": LOOSE_LIMIT}} if "loose" in args.mode_list else None,
        },
        "definitions": {
            "steady_steps_per_s": "activities / (last closed_at - first WorkflowTaskStarted), run.py's",
            "handoff": "run.py's schedule_to_start: the no-op's start - ActivityScheduled.timestamp",
            "cpu_per_step_ms": "run.py's: CPU (/proc) from the first claim to the last completion, / activities",
            "held": "over the [activity start, ActivityCompleted.timestamp] intervals: peak, the most overlapping "
            "(a slot is held from the lease to the commit of the result: a lower bound of the slots held at once); "
            "start_to_commit_mean_ms, the mean interval",
            "queue_states": "queues with a QueueState row after the run (a limited queue's lease makes it)",
        },
    }
    runs: dict[str, dict[str, Any]] = {}
    try:
        for round_no in range(1, args.repeat + 1):
            order = args.mode_list if round_no % 2 else list(reversed(args.mode_list))
            for mode in order:
                label = f"{mode}-r{round_no}"
                runs[label] = {"mode": mode, "round": round_no} | run_once(args, mode, label, out_dir, db_name, tree)
    finally:
        if exported is not None:
            shutil.rmtree(exported, ignore_errors=True)
    report["machine"]["loadavg_after"] = loadavg()
    report["runs"] = runs
    report["summary"] = summarise(args, runs)
    out = Path(args.json) if args.json else RESULTS_DIR / f"flow-control-{stamp}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_report(args, runs, report["summary"])
    print(f"  JSON: {out}")
    return 1 if any("error" in r for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
