#!/usr/bin/env python3
"""A seeded chaos soak: workflows under random worker kills, pauses, crash points,
dropped connections and PostgreSQL restarts; then the checker's verdict.

    .venv/bin/python benchmarks/chaos.py --seed 7 --duration 60 --workers 3
    .venv/bin/python benchmarks/chaos.py --seed 11 --duration 600 --workers 4 --rate 12 --log soak.jsonl

What one session does:

1. Starts a private PostgreSQL cluster (``initdb`` into a temporary directory, a free
   loopback port; never the shared server), creates ``--db-name`` and migrates it.
2. Starts ``--workers`` ``durable_worker`` processes (benchmarks/chaos_app/settings.py:
   2 s leases) and, for ``--duration`` seconds, starts workflows at ``--rate`` per second
   (at most ``--max-open`` open at once), a seeded mix of benchmarks/chaos_app/workflows.py:
   activities in sequence and fanned out, timers, signals (sent by the driver a little
   later), child workflows, activities finished by task token (by the driver, a few
   twice), retries and continue-as-new.
3. Meanwhile, every 1-3 s, a fault: SIGKILL a worker; SIGSTOP one for 1.2-2.5 leases,
   then SIGCONT (its late heartbeats and completions must be fenced); or
   ``pg_terminate_backend`` some of the workers' connections. Half the replacement
   workers are started with a crash point armed (django_durable/faults.py, e.g.
   ``before_task_commit@7``), so they die at that exact place. PostgreSQL is restarted
   once per started minute of the session, alternately ``pg_ctl restart -m fast`` and
   ``pg_ctl stop -m immediate`` + ``start``.
4. Then it stops the chaos, replaces dead workers with clean ones, waits until every
   workflow has closed (``--drain-timeout``), stops the workers with SIGTERM and runs
   the checker (tests/faults/invariants.py) over the whole database.

Every operation is a JSON line in ``--log`` (default benchmarks/results/chaos-<seed>-<time>.jsonl),
the last one ``{"op": "verdict", ...}`` with the counts. The exit code is 0 only if the
verdict passes (lost = 0, duplicated = 0, nothing wrong or stuck). Worker logs go to
``--workdir``. Needs PostgreSQL's server binaries (``initdb``, ``pg_ctl``; as root, the
``postgres`` user) and the project's virtualenv.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faults.pgcluster import PrivateCluster, unavailable

SETTINGS = "benchmarks.chaos_app.settings"
CRASH_EXIT_CODE = 86  # django_durable.faults.DEFAULT_EXIT_CODE
CRASH_POINTS = (
    "after_claim:workflow",
    "after_claim:activity",
    "before_task_commit",
    "after_task_commit",
    "before_activity_completion",
    "before_activity_commit",
    "after_activity_commit",
    "before_timer_commit",
)
# kind -> (weight, the argument's range)
MIX: dict[str, tuple[int, tuple[float, float] | None]] = {
    "chain": (5, (1, 5)),
    "fan": (3, (2, 6)),
    "timer": (2, (0.2, 2.0)),
    "signal": (2, None),
    "parent": (1, (1, 3)),
    "approval": (2, None),
    "retry": (2, (0, 3)),
    "rounds": (1, (2, 4)),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of chaos (default 60)")
    p.add_argument(
        "--workers",
        type=int,
        default=3,
        choices=range(1, 9),
        metavar="2-4",
        help="durable_worker processes kept running (default 3)",
    )
    p.add_argument("--db-name", default="durable_chaos", help="database on the private cluster")
    p.add_argument("--rate", type=float, default=8.0, help="workflows started per second (default 8)")
    p.add_argument("--max-open", type=int, default=150, help="no new starts while this many are open")
    p.add_argument(
        "--fault-every",
        type=float,
        nargs=2,
        default=(1.0, 3.0),
        metavar=("MIN", "MAX"),
        help="seconds between two faults, drawn uniformly (default 1 3)",
    )
    p.add_argument("--no-restart", action="store_true", help="never restart PostgreSQL")
    p.add_argument("--lease", type=float, default=2.0, help="the workers' LEASE_SECONDS (default 2)")
    p.add_argument("--drain-timeout", type=float, default=180.0, help="seconds for the last workflows to close")
    p.add_argument("--log", type=Path, help="the JSON-lines log (default benchmarks/results/chaos-<seed>-<time>.jsonl)")
    p.add_argument("--workdir", type=Path, help="where worker logs go (default: a temporary directory, kept)")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0:
        p.error("--duration and --rate must be positive")
    return args


class Log:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: TextIO = open(path, "w")
        self._began = time.monotonic()

    def __call__(self, op: str, **fields: Any) -> None:
        line = {"t": round(time.monotonic() - self._began, 3), "op": op, **fields}
        self._file.write(json.dumps(line, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class WorkerProc:
    def __init__(self, number: int, armed: str, env: dict[str, str], workdir: Path) -> None:
        self.number = number
        self.armed = armed
        self.log_path = workdir / f"worker-{number}.log"
        self._out = open(self.log_path, "wb")
        command = [
            sys.executable,
            "-m",
            "django",
            "durable_worker",
            "--settings",
            SETTINGS,
            "-v",
            "1",
            "--concurrency",
            "4",
        ]
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT)
        self.paused_until: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def ready(self) -> bool:
        """Whether the worker has installed its signal handlers (it logs that it started just after)."""
        return self.proc.poll() is not None or b" started on queues " in self.log_path.read_bytes()

    def close(self) -> None:
        self._out.close()


class Soak:
    def __init__(self, args: argparse.Namespace, cluster: PrivateCluster, log: Log, workdir: Path) -> None:
        self.args = args
        self.cluster = cluster
        self.log = log
        self.workdir = workdir
        self.rng = random.Random(args.seed)
        self.began = time.monotonic()
        self.workers: list[WorkerProc] = []
        self.spawned = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self.expected: dict[str, Any] = {}
        self.started: dict[str, tuple[str, str, Any]] = {}
        self.uncertain_starts: list[str] = []
        self.signals_due: dict[str, float] = {}
        self.uncertain_signals: set[str] = set()
        self.db_down_since: float | None = None
        self.next_fault = self.began + self.rng.uniform(*args.fault_every)
        restarts = 0 if args.no_restart else max(1, int(args.duration // 60) + (args.duration % 60 > 0))
        self.restart_at = sorted(self.began + args.duration * self.rng.uniform(0.25, 0.75) for _ in range(restarts))
        self.restart_mode = self.rng.choice(["fast", "immediate"])
        self._start_credit = 0.0
        self._last_tick = time.monotonic()

    # -- workers -----------------------------------------------------------------

    def spawn(self, *, chaos: bool) -> None:
        armed = ""
        if chaos and self.rng.random() < 0.5:
            armed = f"{self.rng.choice(CRASH_POINTS)}@{self.rng.randint(1, 25)}"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "CHAOS_APP_NAME": "chaos-worker",
            "DURABLE_CRASH_POINTS": armed,
            "DURABLE_CRASH_SEED": str(self.rng.randint(0, 2**31)),
        }
        self.spawned += 1
        worker = WorkerProc(self.spawned, armed, env, self.workdir)
        self.workers.append(worker)
        self.log("spawn", worker=worker.number, pid=worker.pid, crash_point=armed or None)

    def reap_workers(self, *, chaos: bool) -> None:
        for worker in list(self.workers):
            code = worker.proc.poll()
            if code is None:
                continue
            self.workers.remove(worker)
            worker.close()
            crashed = code == CRASH_EXIT_CODE
            self.log(
                "worker_exit",
                worker=worker.number,
                pid=worker.pid,
                code=code,
                crash_point=worker.armed if crashed else None,
            )
            if crashed:
                self.counts["crash_point_exits"] += 1
            elif code != -signal.SIGKILL:  # killed: counted by the kill
                self.problems.append(
                    f"worker {worker.number} (pid {worker.pid}) exited with {code}: see {worker.log_path}"
                )
        while len(self.workers) < self.args.workers:
            self.spawn(chaos=chaos)

    def resume_paused(self, *, all_of_them: bool = False) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.paused_until is not None and (all_of_them or now >= worker.paused_until):
                worker.signal(signal.SIGCONT)
                worker.paused_until = None
                self.log("resume", worker=worker.number, pid=worker.pid)

    # -- faults --------------------------------------------------------------------

    def maybe_fault(self) -> None:
        now = time.monotonic()
        if self.restart_at and now >= self.restart_at[0]:
            self.restart_at.pop(0)
            self.restart_database()
            return
        if now < self.next_fault:
            return
        self.next_fault = now + self.rng.uniform(*self.args.fault_every)
        running = [w for w in self.workers if w.paused_until is None and w.proc.poll() is None]
        fault = self.rng.choices(["kill", "pause", "terminate"], weights=[4, 3, 3])[0]
        if not running:
            return
        victim = self.rng.choice(running)
        if fault == "kill":
            victim.signal(signal.SIGKILL)
            victim.proc.wait()
            self.counts["kills"] += 1
            self.log("kill", worker=victim.number, pid=victim.pid)
        elif fault == "pause":
            seconds = self.args.lease * self.rng.uniform(1.2, 2.5)
            victim.signal(signal.SIGSTOP)
            victim.paused_until = now + seconds
            self.counts["pauses"] += 1
            self.log("pause", worker=victim.number, pid=victim.pid, seconds=round(seconds, 2))
        else:
            try:
                pids = self.cluster.terminate_backends(
                    self.args.db_name, where="application_name = 'chaos-worker' AND random() < 0.5"
                )
            except Exception as exc:  # noqa: BLE001 - chaos goes on whatever the terminate hit
                self.log("terminate_failed", error=str(exc))
                return
            self.counts["backend_terminations"] += len(pids)
            self.log("terminate_backends", pids=pids)

    def restart_database(self) -> None:
        mode, self.restart_mode = self.restart_mode, "immediate" if self.restart_mode == "fast" else "fast"
        began = time.monotonic()
        if mode == "fast":
            self.log("db_restart", mode="fast")
            self.cluster.restart("fast")
        else:
            self.log("db_stop", mode="immediate")
            self.cluster.stop("immediate")
            down = self.rng.uniform(0.5, 2.0)
            time.sleep(down)  # the outage itself: the workers must ride it out
            self.cluster.start()
        self.counts["db_restarts"] += 1
        self.log("db_up", mode=mode, seconds=round(time.monotonic() - began, 2))

    # -- the driver's own work ---------------------------------------------------------

    def start_workflows(self, limit: int) -> None:
        import django_durable as durable
        from benchmarks.chaos_app.workflows import WORKFLOWS, expected_result
        from django_durable.models import OPEN_STATUSES, WorkflowInstance

        for workflow_id in list(self.uncertain_starts):
            kind, key, arg = self.started[workflow_id]
            try:
                self._start(durable, WORKFLOWS[kind], kind, key, arg)
            except durable.WorkflowAlreadyExists:
                self._started(kind, key, arg, retried=True)  # the start that failed did commit
            self.uncertain_starts.remove(workflow_id)
        now = time.monotonic()
        self._start_credit = min(self._start_credit + (now - self._last_tick) * self.args.rate, 50.0)
        self._last_tick = now
        if limit <= 0 or self._start_credit < 1:
            return
        if WorkflowInstance.objects.filter(status__in=OPEN_STATUSES).count() >= self.args.max_open:
            return
        kinds = list(MIX)
        weights = [MIX[kind][0] for kind in kinds]
        while self._start_credit >= 1 and limit > 0:
            self._start_credit -= 1
            limit -= 1
            kind = self.rng.choices(kinds, weights=weights)[0]
            span = MIX[kind][1]
            arg: Any = None
            if span is not None:
                arg = round(self.rng.uniform(*span), 2) if kind == "timer" else self.rng.randint(*map(int, span))
            key = f"{kind}-{len(self.started)}"
            self.started[key] = (kind, key, arg)
            self.expected[key] = expected_result(kind, key, arg if arg is not None else 0)
            if kind == "parent":
                for i in range(arg):
                    self.expected[f"{key}/c{i}"] = expected_result("chain", f"{key}/c{i}", 2)
            try:
                self._start(durable, WORKFLOWS[kind], kind, key, arg)
            except Exception:
                self.uncertain_starts.append(key)
                raise

    def _start(self, durable: Any, workflow: Any, kind: str, key: str, arg: Any) -> None:
        args = (key,) if arg is None else (key, arg)
        durable.start_workflow(workflow, *args, workflow_id=key, id_reuse_policy="reject_duplicate")
        self._started(kind, key, arg)

    def _started(self, kind: str, key: str, arg: Any, *, retried: bool = False) -> None:
        self.counts["started"] += 1
        self.log("start", workflow=key, kind=kind, arg=arg, **({"committed_before": True} if retried else {}))
        if kind == "signal":
            self.signals_due[key] = time.monotonic() + self.rng.uniform(0.1, 3.0)

    def send_signals(self) -> None:
        import django_durable as durable
        from benchmarks.chaos_app.workflows import signal_payload
        from django_durable.engine.events import EventKind
        from django_durable.models import HistoryEvent, InboxEvent

        now = time.monotonic()
        for workflow_id, due in list(self.signals_due.items()):
            if due > now:
                continue
            if workflow_id in self.uncertain_signals and (
                InboxEvent.objects.filter(instance__workflow_id=workflow_id, kind=EventKind.EVENT_RAISED).exists()
                or HistoryEvent.objects.filter(instance__workflow_id=workflow_id, kind=EventKind.EVENT_RAISED).exists()
            ):
                self.uncertain_signals.discard(workflow_id)
                del self.signals_due[workflow_id]  # the send that failed did commit
                continue
            self.uncertain_signals.add(workflow_id)  # until it is known to have gone
            durable.get_workflow(workflow_id).signal("go", signal_payload(workflow_id))
            self.uncertain_signals.discard(workflow_id)
            del self.signals_due[workflow_id]
            self.counts["signals_sent"] += 1
            self.log("signal", workflow=workflow_id)

    def complete_tokens(self) -> None:
        import django_durable as durable
        from benchmarks.chaos_app.models import HandedOut
        from benchmarks.chaos_app.workflows import approval_result

        ripe = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=self.rng.uniform(0, 1))
        for row in HandedOut.objects.filter(outcome="", created_at__lte=ripe).order_by("id")[:20]:
            tries = 2 if self.rng.random() < 0.1 else 1
            outcomes = []
            for _ in range(tries):
                try:
                    durable.complete_activity(row.token, approval_result(row.key))
                    outcomes.append("completed")
                except durable.ActivityNotPending:
                    outcomes.append("not_pending")
                except durable.InvalidTaskToken as exc:
                    outcomes.append("invalid")
                    self.problems.append(f"token of {row.key} attempt {row.attempt} refused as invalid: {exc}")
            if outcomes.count("completed") > 1:
                self.problems.append(f"the token of {row.key} attempt {row.attempt} completed it twice")
            HandedOut.objects.filter(pk=row.pk).update(outcome=outcomes[0])
            self.counts[f"tokens_{outcomes[0]}"] += 1
            self.counts["tokens_repeated"] += tries - 1
            self.log("complete_token", workflow=row.key, attempt=row.attempt, outcomes=outcomes)

    def drive(self, *, starting: bool) -> None:
        """One round of the driver's own calls; a database outage only postpones them."""
        from django.db import Error, close_old_connections, connection

        close_old_connections()
        try:
            self.start_workflows(50 if starting else 0)
            self.send_signals()
            self.complete_tokens()
        except Error as exc:
            if self.db_down_since is None:
                self.db_down_since = time.monotonic()
                self.log("driver_db_error", error=" ".join(str(exc).split())[:300])
            connection.close()
            return
        if self.db_down_since is not None:
            self.log("driver_db_back", after=round(time.monotonic() - self.db_down_since, 2))
            self.db_down_since = None

    def open_runs(self) -> int | None:
        from django.db import Error, connection

        from django_durable.models import OPEN_STATUSES, WorkflowInstance

        try:
            return WorkflowInstance.objects.filter(status__in=OPEN_STATUSES).count()
        except Error:
            connection.close()
            return None

    # -- the session -----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        for _ in range(self.args.workers):
            self.spawn(chaos=True)
        end = self.began + self.args.duration
        self.log(
            "chaos_begins",
            seed=self.args.seed,
            duration=self.args.duration,
            workers=self.args.workers,
            rate=self.args.rate,
            restarts_at=[round(t - self.began, 2) for t in self.restart_at],
        )
        while time.monotonic() < end:
            self.reap_workers(chaos=True)
            self.resume_paused()
            self.maybe_fault()
            self.drive(starting=True)
            time.sleep(0.05)
        self.resume_paused(all_of_them=True)
        self.log("chaos_ends", started=self.counts["started"])

        drained_by = time.monotonic() + self.args.drain_timeout
        for worker in self.workers:
            if worker.armed:  # the drain is done by clean workers
                worker.signal(signal.SIGKILL)
                self.counts["kills"] += 1
                self.log("kill", worker=worker.number, pid=worker.pid, reason="armed, before the drain")
        drained = False
        while time.monotonic() < drained_by:
            self.reap_workers(chaos=False)
            self.drive(starting=False)
            if not self.uncertain_starts and not self.signals_due and self.open_runs() == 0:
                drained = True
                break
            time.sleep(0.1)
        self.log("drained" if drained else "drain_timeout", seconds=round(time.monotonic() - end, 2))
        if not drained:
            self.problems.append(f"workflows still open {self.args.drain_timeout:.0f}s after the chaos ended")
        # A worker spawned during the drain may still be importing Django: a SIGTERM then
        # kills it before its handlers exist, which says nothing about a graceful stop.
        ready_by = time.monotonic() + 60
        while not all(worker.ready() for worker in self.workers) and time.monotonic() < ready_by:
            time.sleep(0.1)
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                code = worker.proc.wait(60)
            except subprocess.TimeoutExpired:
                worker.signal(signal.SIGKILL)
                code = worker.proc.wait()
                self.problems.append(f"worker {worker.number} did not stop within 60s of SIGTERM")
            worker.close()
            self.log("worker_stopped", worker=worker.number, pid=worker.pid, code=code)
            if code != 0:
                self.problems.append(f"worker {worker.number} exited {code} on SIGTERM: see {worker.log_path}")
        return self.verdict()

    def verdict(self) -> dict[str, Any]:
        from benchmarks.chaos_app.models import Effect
        from tests.faults.invariants import check

        verdict = check(self.expected, side_effects=Effect.objects.values_list("key", "attempt"))
        logs = "".join(path.read_text(errors="replace") for path in sorted(self.workdir.glob("worker-*.log")))
        observed = {
            "fenced_outcomes": logs.count("Activity outcome discarded") + logs.count("Workflow task discarded"),
            "reaped": logs.count("Reaped "),
            "lost_leases_logged": logs.count("Lost the lease"),
            "db_errors_logged": logs.count("Database error") + logs.count("Database still failing"),
        }
        problems = [*self.problems, *verdict.problems]
        counts = {
            "workflows": verdict.counts["workflows"],
            "runs": verdict.counts["runs"],
            "activities": verdict.counts["activities"],
            "executions": verdict.counts["executions"],
            "timers": verdict.counts["timers"],
            "children": verdict.counts["children"],
            "signals": verdict.counts["signals"],
            "tokens_completed": self.counts["tokens_completed"],
            "kills": self.counts["kills"],
            "pauses": self.counts["pauses"],
            "crash_point_exits": self.counts["crash_point_exits"],
            "backend_terminations": self.counts["backend_terminations"],
            "db_restarts": self.counts["db_restarts"],
            "lost": verdict.counts["lost"],
            "duplicated": verdict.counts["duplicated"],
            "wrong": verdict.counts["wrong"],
            "stuck": verdict.counts["stuck"],
            **observed,
        }
        result = {
            "verdict": "PASS" if not problems else "FAIL",
            "counts": counts,
            "problems": problems[:100],
            "seconds": round(time.monotonic() - self.began, 1),
        }
        self.log("verdict", **result)
        return result


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    reason = unavailable()
    if reason:
        print(f"chaos: cannot run: {reason}", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_path = args.log or ROOT / "benchmarks" / "results" / f"chaos-{args.seed}-{stamp}.jsonl"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="durable-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log = Log(log_path)
    cluster = PrivateCluster()
    try:
        cluster.start()
        cluster.create_database(args.db_name)
        log("cluster", port=cluster.port, data=str(cluster.data), db=args.db_name)
        os.environ.pop("DURABLE_CRASH_POINTS", None)  # never the driver
        os.environ.update(
            DJANGO_SETTINGS_MODULE=SETTINGS,
            CHAOS_DB_NAME=args.db_name,
            CHAOS_PG_HOST=cluster.host,
            CHAOS_PG_PORT=str(cluster.port),
            CHAOS_LEASE_SECONDS=str(args.lease),
            CHAOS_APP_NAME="chaos-driver",
        )
        import django
        from django.core.management import call_command

        django.setup()
        # The driver's own state lines (each start, signal and completion) would bury the
        # verdict; the workers log at INFO to their files, which the checker reads.
        logging.getLogger("django_durable").setLevel(logging.WARNING)
        call_command("migrate", verbosity=0)
        result = Soak(args, cluster, log, workdir).run()
    finally:
        log.close()
        cluster.destroy()
    counts = ", ".join(f"{name}={value}" for name, value in result["counts"].items())
    print(
        f"chaos seed={args.seed} duration={args.duration:g}s workers={args.workers}: "
        f"{result['verdict']} in {result['seconds']}s\n  {counts}"
    )
    for problem in result["problems"]:
        print(f"  - {problem}")
    print(f"  log: {log_path}\n  worker logs: {workdir}")
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
