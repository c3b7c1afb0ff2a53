"""A private, throw-away PostgreSQL cluster for the fault tests and the chaos soak.

Scenarios that restart or crash PostgreSQL must never touch the shared server
other test runs use: they ``initdb`` a cluster of their own into a temporary
directory, start it on a free loopback port and stop it (``-m fast`` or
``-m immediate``) as they please. As root (CI), every PostgreSQL binary runs as
the ``postgres`` user through ``runuser``. ``DURABLE_PG_BIN`` names the binaries'
directory; by default the newest ``/usr/lib/postgresql/<version>/bin``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

SUPERUSER = "postgres"


def bin_dir() -> Path | None:
    named = os.environ.get("DURABLE_PG_BIN")
    if named:
        return Path(named)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def unavailable() -> str | None:
    """Why a private cluster cannot run here, or None."""
    binaries = bin_dir()
    if binaries is None or not (binaries / "initdb").exists() or not (binaries / "pg_ctl").exists():
        return "no PostgreSQL server binaries (initdb, pg_ctl); install postgresql or set DURABLE_PG_BIN"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser: cannot run initdb as the postgres user"
        try:
            import pwd

            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root and there is no 'postgres' user to run initdb as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateCluster:
    """``initdb`` + ``pg_ctl`` on a temporary directory; ``with PrivateCluster() as pg: ...``."""

    def __init__(self, *, root: Path | None = None, port: int | None = None) -> None:
        reason = unavailable()
        if reason:
            raise RuntimeError(f"cannot start a private PostgreSQL cluster: {reason}")
        self.bin = bin_dir()
        self.root = Path(root or tempfile.mkdtemp(prefix="durable-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgresql.log"
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            import pwd

            entry = pwd.getpwnam(SUPERUSER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\nmax_connections = 200\n"
                "shared_buffers = 32MB\nlog_min_messages = warning\n"
            )

    def __enter__(self) -> PrivateCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- control -------------------------------------------------------------------

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", SUPERUSER, "--", *command]
        proc = subprocess.run(command, check=False, capture_output=True, text=True, cwd=self.root, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}{self.log_tail()}"
            )
        return proc

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """``mode``: smart, fast (roll back sessions, checkpoint) or immediate (a crash: recovery at start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w", "-t", "60", "restart")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- SQL -----------------------------------------------------------------------

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        import psycopg

        return psycopg.connect(
            host=self.host, port=self.port, user=SUPERUSER, dbname=dbname, autocommit=True, connect_timeout=10, **kwargs
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect().close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def execute(self, sql: str, params: Any = None, *, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def create_database(self, name: str, *, template: str | None = None) -> None:
        from psycopg import sql

        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        with self.connect() as conn:
            conn.execute(statement)

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def terminate_backends(self, dbname: str, *, where: str = "TRUE", params: Any = None) -> list[int]:
        """``pg_terminate_backend`` every other session on ``dbname`` matching ``where`` (SQL on
        pg_stat_activity); the pids it ended."""
        rows = self.execute(
            f"SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = %(db)s AND pid <> pg_backend_pid() AND ({where})",
            {"db": dbname, **(params or {})},
        )
        return [pid for pid, ended in rows if ended]
