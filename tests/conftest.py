"""Fixtures for the suite: real ``durable_worker`` subprocesses on the test database."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class WorkerProcess:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # A worker that will not exit: its threads' stacks (tests/settings.py registers
            # faulthandler on SIGUSR1 in every worker) go to its log, shown with the failure.
            self.signal(signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2)  # the dump is written at once; the worker goes on
            raise AssertionError(
                f"worker {self.pid} still running after {timeout}s; its log:\n{self.log()[-20000:]}"
            ) from None
        finally:
            self._log.flush()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
            self.proc.wait(30)
        self._log.close()


@pytest.fixture
def start_worker(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``manage.py durable_worker`` subprocesses on this test's database.

    ``start_worker(batch=True, concurrency=4, queues="a,b", env={...}, args=[...])``.
    All are killed at teardown, before the database is flushed.
    """
    started: list[WorkerProcess] = []

    def start(
        *,
        batch: bool = False,
        concurrency: int = 4,
        queues: str | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> WorkerProcess:
        command = [
            sys.executable,
            "-m",
            "django",
            "durable_worker",
            "--settings",
            "tests.settings",
            "-v",
            "2",
            "--concurrency",
            str(concurrency),
        ]
        if batch:
            command.append("--batch")
        if queues:
            command += ["--queues", queues]
        command += args or []
        worker_env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DURABLE_DB_NAME": str(connection.settings_dict["NAME"]),
            **(env or {}),
        }
        worker = WorkerProcess(command, worker_env, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.fixture
def db_vendor() -> str:
    return connection.vendor


def has_row_locks() -> bool:
    """Whether the test database locks rows (PostgreSQL, and MariaDB's InnoDB), where SQLite
    serialises writers instead (one write lock, taken at BEGIN)."""
    return connection.vendor in ("postgresql", "mysql")


# The model permissions of WorkflowInstance that the API and the admin's actions check.
WORKFLOW_PERMISSIONS = (
    "view_workflowinstance",
    "add_workflowinstance",
    "operate_workflowinstance",
    "delete_workflowinstance",
)


def grant(user: Any, *codenames: str) -> Any:
    """Give ``user`` these permissions of django_durable (all of ``WORKFLOW_PERMISSIONS`` if none)."""
    from django.contrib.auth.models import Permission

    wanted = codenames or WORKFLOW_PERMISSIONS
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="django_durable", codename__in=wanted))
    return user


# The tiers, cheapest first (setup.cfg registers them); each test carries exactly one.
TIERS = ("engine", "database", "workers", "http", "browser")
# Fixtures a test cannot request below a tier: the tier it needs at least.
TIER_OF_FIXTURE = {
    "db": "database",
    "transactional_db": "database",
    "django_db_reset_sequences": "database",
    "django_db_serialized_rollback": "database",
    "start_worker": "workers",
    "live_server": "http",
}


def tier_of(item: pytest.Item) -> str:
    """The tier marker nearest to ``item``: its own, else its class's, else its module's ``pytestmark``."""
    for node in reversed(item.listchain()):
        tiers = [mark.name for mark in node.own_markers if mark.name in TIERS]
        if len(tiers) > 1:
            raise ValueError(f"has more than one tier marker ({', '.join(tiers)}) on {node.nodeid or 'its module'}")
        if tiers:
            return tiers[0]
    raise ValueError(f"has no tier marker: mark its module (pytestmark) or it with one of {', '.join(TIERS)}")


def tier_problem(item: pytest.Item, tier: str) -> str | None:
    """Why ``tier`` is too low for what ``item`` requests, or None."""
    from django.test import TransactionTestCase

    needs = {TIER_OF_FIXTURE[name]: name for name in getattr(item, "fixturenames", ()) if name in TIER_OF_FIXTURE}
    if item.get_closest_marker("django_db"):
        needs.setdefault("database", "the django_db marker")
    cls = getattr(item, "cls", None)
    if cls is not None and issubclass(cls, TransactionTestCase) and cls.databases:
        needs.setdefault("database", f"a {TransactionTestCase.__name__} with databases")
    for needed, why in needs.items():
        if TIERS.index(needed) > TIERS.index(tier):
            return f"is marked {tier} but uses {why}, which needs at least the {needed} tier"
    return None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the markers this moves
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems: list[str] = []
    tiers: dict[pytest.Item, str] = {}
    for item in items:
        try:
            tiers[item] = tier_of(item)
        except ValueError as error:
            problems.append(f"  {item.nodeid}: {error}")
            continue
        if problem := tier_problem(item, tiers[item]):
            problems.append(f"  {item.nodeid}: {problem}")
    if problems:
        raise pytest.UsageError("tests with a wrong tier marker (see tests/conftest.py):\n" + "\n".join(problems))
    # `-m` matches any marker up the chain: leave each test only its nearest tier, on itself.
    for item, tier in tiers.items():
        for node in item.listchain()[:-1]:
            node.own_markers[:] = [mark for mark in node.own_markers if mark.name not in TIERS]
        if not any(mark.name == tier for mark in item.own_markers):
            item.add_marker(tier)


def pytest_report_header(config: pytest.Config) -> str:
    engine = settings.DATABASES["default"]["ENGINE"]
    return f"django-durable database: {engine} ({os.environ.get('DURABLE_TEST_DB', 'sqlite')})"
