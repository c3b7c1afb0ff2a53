"""What the peer benchmarks share: the database servers, process trees, CPU accounting, output.

The helpers for the machine, PostgreSQL and MariaDB come from benchmarks/run.py, so that
every system in a comparison is measured the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import (
    CLK_TCK,
    database_server_cpu_seconds,
    machine_cpu_seconds,
    mariadb_connect,
    mariadb_fresh_database,
    pg_admin,
    pg_params,
    summary_ms,
)

__all__ = [
    "ROOT",
    "CpuWindow",
    "drop_pg_database",
    "fresh_pg_database",
    "mariadb_connect",
    "mariadb_fresh_database",
    "pg_params",
    "pg_url",
    "spawn",
    "stop",
    "summary_ms",
    "throughput",
    "tree_cpu_seconds",
    "write_json",
]


def pg_url(dbname: str, driver: str = "postgresql") -> str:
    p = pg_params()
    auth = p["user"] + (f":{p['password']}" if p["password"] else "")
    return f"{driver}://{auth}@{p['host']}:{p['port']}/{dbname}"


def fresh_pg_database(name: str) -> None:
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    pg_admin(f'CREATE DATABASE "{name}"')


def drop_pg_database(name: str) -> None:
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- processes ------------------------------------------------------------------------


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a signal to the group reaches a worker's own children
    )


def stop(procs: list[subprocess.Popen], timeout: float = 30.0) -> list[dict[str, Any]]:
    """SIGTERM each process group, wait, SIGKILL what is left."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    outcomes = []
    for proc in procs:
        t0 = time.monotonic()
        try:
            rc = proc.wait(timeout=timeout)
            how = "SIGTERM"
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc = proc.wait()
            how = f"SIGKILL after {timeout} s"
        outcomes.append(
            {
                "pid": proc.pid,
                "returncode": rc,
                "stopped_by": how,
                "stop_s": round(time.monotonic() - t0, 3),
            }
        )
    return outcomes


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU seconds (user + system) of ``roots`` and all their live descendants, plus the
    children those have reaped: a prefork Celery worker's pool processes count too."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                parent_of[int(entry.name)] = int(fields[1])
    tree = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent_of.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    total = 0
    for pid in tree:
        fields = _stat_fields(pid)
        if fields:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


class CpuWindow:
    """CPU of the benchmarked workers, of the whole database server (``server``: postgres or
    mariadb) and of the machine between two snapshots (the same accounting as benchmarks/run.py)."""

    def __init__(self, worker_pids: list[int], server: str | None = "postgres") -> None:
        self.worker_pids = worker_pids
        self.server = server

    def snapshot(self) -> dict[str, float]:
        snap = {
            "t": time.monotonic(),
            "workers": tree_cpu_seconds(self.worker_pids),
            "machine": machine_cpu_seconds(),
            "harness": _own_cpu_seconds(),
        }
        if self.server is not None:
            server = database_server_cpu_seconds(self.server)
            if server is not None:
                snap["database_server"] = server
        return snap

    @staticmethod
    def per_unit_ms(a: dict[str, float], b: dict[str, float], units: int) -> dict[str, float | None]:
        def ms(key: str) -> float | None:
            if key not in a or key not in b or not units:
                return None
            return round((b[key] - a[key]) * 1000 / units, 3)

        return {
            "workers": ms("workers"),
            "database_server": ms("database_server"),
            "harness": ms("harness"),
            "machine": ms("machine"),
        }


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# -- results --------------------------------------------------------------------------


def throughput(workflows: int, steps: int, elapsed_s: float | None, steady_s: float | None) -> dict[str, Any]:
    """The figures every system reports, named as in benchmarks/run.py."""
    total = workflows * steps

    def rate(count: int, seconds: float | None) -> float | None:
        return round(count / seconds, 1) if seconds else None

    return {
        "steps": total,
        "elapsed_s": round(elapsed_s, 3) if elapsed_s else None,
        "steady_elapsed_s": round(steady_s, 3) if steady_s else None,
        "workflows_per_s": rate(workflows, elapsed_s),
        "steps_per_s": rate(total, elapsed_s),
        "steady_workflows_per_s": rate(workflows, steady_s),
        "steady_steps_per_s": rate(total, steady_s),
        "wall_ms_per_step": round(steady_s * 1000 / total, 3) if steady_s and total else None,
    }


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, default=str) + "\n")
