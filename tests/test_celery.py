"""The Celery activity executor, end to end: a real durable_worker sends activities
to real ``celery worker`` subprocesses over real Redis and RabbitMQ brokers.

A broker that cannot be reached skips its tests locally and fails them in CI
(CI=true, or DURABLE_REQUIRE_BROKERS=1).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from django.db import connection

import django_durable as durable
from django_durable.models import WorkItem
from tests.conftest import REPO, WorkerProcess, wait_for
from tests.testapp import workflows as wf
from tests.testapp.models import ActivityRun

pytest.importorskip("celery")
from celery import Celery
from kombu import Connection

pytestmark = pytest.mark.workers

REDIS_URL = os.environ.get("DURABLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
RABBITMQ_URL = os.environ.get("DURABLE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
TIMEOUT = 60
REQUIRED = any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in ("CI", "DURABLE_REQUIRE_BROKERS"))


def require_broker(url: str) -> None:
    parsed = urlparse(url)
    default_port = 6379 if parsed.scheme == "redis" else 5672
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2).close()
    except OSError as exc:
        reason = f"broker {parsed.scheme}://{parsed.hostname}:{parsed.port} unreachable ({exc})"
        if REQUIRED:
            pytest.fail(f"{reason}, and brokers are required (CI)")
        pytest.skip(f"{reason}; CI runs it")


class CeleryWorker:
    """A ``celery worker`` subprocess in a process group of its own (prefork children die with it)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            args, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def close(self) -> None:
        self.kill()
        self._log.close()


@pytest.fixture
def queue() -> str:
    """A durable (and so Celery) queue of the test's own: no stale message from another test reaches it."""
    return f"celery-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def start_celery(transactional_db: None, tmp_path: Path, queue: str) -> Iterator[Callable[..., CeleryWorker]]:
    started: list[CeleryWorker] = []
    brokers: set[str] = set()

    def start(*, broker: str = REDIS_URL, pool: str = "threads", concurrency: int = 2) -> CeleryWorker:
        brokers.add(broker)
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.celery_app",
            "worker",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            "-Q",
            queue,
            "--loglevel=INFO",
            "-n",
            f"dd-{uuid.uuid4().hex[:8]}@%h",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ]
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DURABLE_DB_NAME": str(connection.settings_dict["NAME"]),
            "DURABLE_TEST_CELERY_BROKER": broker,
            "DURABLE_TEST_ACTIVITY_EXECUTOR": "celery",  # the same settings as the project's durable_worker
        }
        worker = CeleryWorker(command, env, tmp_path / f"celery-{len(started)}.log")
        started.append(worker)
        wait_for(
            lambda: " ready." in worker.log() or worker.proc.poll() is not None,
            timeout=TIMEOUT,
            what="the celery worker to be ready",
        )
        assert worker.proc.poll() is None, f"celery worker exited:\n{worker.log()}"
        return worker

    yield start
    for worker in started:
        worker.close()
    for broker in brokers:
        with Connection(broker) as conn:
            conn.default_channel.queue_delete(queue)


@pytest.fixture
def start_dispatcher(start_worker: Callable[..., WorkerProcess], queue: str) -> Callable[..., WorkerProcess]:
    """A durable_worker on the test's queue that sends activities to Celery."""

    def start(*, broker: str = REDIS_URL) -> WorkerProcess:
        return start_worker(
            queues=queue,
            env={"DURABLE_TEST_ACTIVITY_EXECUTOR": "celery", "DURABLE_TEST_CELERY_BROKER": broker},
        )

    return start


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name}-{uuid.uuid4().hex[:8]}"


def runs(prefix: str) -> list[ActivityRun]:
    return list(ActivityRun.objects.filter(key__startswith=prefix).exclude(key__endswith=":done").order_by("id"))


@pytest.mark.parametrize("broker", [REDIS_URL, RABBITMQ_URL], ids=["redis", "rabbitmq"])
def test_activities_run_in_the_celery_worker(start_celery, start_dispatcher, queue, key, broker) -> None:
    require_broker(broker)
    celery_worker = start_celery(broker=broker)
    dispatcher = start_dispatcher(broker=broker)
    handle = durable.start_workflow(wf.celery_sequence, key, queue=queue)
    try:
        result = handle.result(timeout=TIMEOUT)
    except durable.TimeoutError:
        pytest.fail(f"workflow did not finish.\ndurable_worker:\n{dispatcher.log()}\ncelery:\n{celery_worker.log()}")
    assert result == [celery_worker.pid, celery_worker.pid]
    assert {run.pid for run in runs(key)} == {celery_worker.pid}
    assert dispatcher.pid != celery_worker.pid
    assert [run.attempt for run in runs(key)] == [1, 1]


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads parent pids from /proc")
def test_fan_out_overlaps_across_celery_concurrency(start_celery, start_dispatcher, queue, key) -> None:
    require_broker(REDIS_URL)
    celery_worker = start_celery(pool="prefork", concurrency=4)
    start_dispatcher()
    handle = durable.start_workflow(wf.celery_fan_out, key, 4, 1.5, queue=queue)
    pids = handle.result(timeout=TIMEOUT)
    assert len(pids) == 4
    # Prefork: each activity ran in a child of the celery worker, and they ran side by side.
    assert all(_parent_pid(pid) == celery_worker.pid for pid in set(pids)), (pids, celery_worker.pid)
    assert len(set(pids)) > 1
    rows = list(ActivityRun.objects.filter(key__startswith=f"{key}:").order_by("id"))
    starts = [row.created_at for row in rows if not row.key.endswith(":done")]
    ends = [row.created_at for row in rows if row.key.endswith(":done")]
    assert len(starts) == len(ends) == 4
    assert max(starts) < min(ends), "the activities did not overlap"


def test_killed_celery_worker_activity_is_retried_on_a_new_worker(
    start_celery, start_dispatcher, queue, key, tmp_path
) -> None:
    require_broker(REDIS_URL)
    first = start_celery()
    dispatcher = start_dispatcher()
    flag = tmp_path / "blocking"
    handle = durable.start_workflow(wf.celery_survives_kill, key, str(flag), queue=queue)
    wait_for(flag.exists, timeout=TIMEOUT, what="the first attempt to start")
    assert int(flag.read_text()) == first.pid
    first.kill()
    second = start_celery()
    try:
        result = handle.result(timeout=TIMEOUT)
    except durable.TimeoutError:
        pytest.fail(f"workflow did not finish.\ndurable_worker:\n{dispatcher.log()}\ncelery:\n{second.log()}")
    assert result == second.pid
    assert [(run.attempt, run.pid) for run in runs(key)] == [(1, first.pid), (2, second.pid)]
    assert "lease of celery:" in dispatcher.log()  # reaped by durable_worker, not redelivered by the broker


def test_duplicated_message_runs_the_activity_once(start_celery, start_dispatcher, queue, key) -> None:
    require_broker(REDIS_URL)
    dispatcher = start_dispatcher()
    handle = durable.start_workflow(wf.celery_fan_out, key, 1, 1.0, queue=queue)
    # No Celery worker yet: the dispatcher's message waits in the broker; add two copies.
    item_id = wait_for(
        lambda: (
            WorkItem.objects.filter(kind="activity", dispatched_at__isnull=False).values_list("id", flat=True).first()
        ),
        timeout=TIMEOUT,
        what="the activity to be dispatched",
    )
    sender = Celery(broker=REDIS_URL)
    for _ in range(2):
        sender.send_task("django_durable.run_activity", args=[item_id], queue=queue)
    celery_worker = start_celery(concurrency=4)
    try:
        assert len(handle.result(timeout=TIMEOUT)) == 1
    except durable.TimeoutError:
        pytest.fail(f"workflow did not finish.\ndurable_worker:\n{dispatcher.log()}\ncelery:\n{celery_worker.log()}")
    wait_for(
        lambda: celery_worker.log().count("not claimable") >= 2, timeout=TIMEOUT, what="the duplicates to be skipped"
    )
    assert [(run.attempt, run.pid) for run in runs(key)] == [(1, celery_worker.pid)]


def test_lost_message_is_sent_again_after_dispatch_timeout(start_celery, start_dispatcher, queue, key) -> None:
    require_broker(REDIS_URL)
    dispatcher = start_dispatcher()
    handle = durable.start_workflow(wf.celery_fan_out, key, 1, 0.0, queue=queue)
    wait_for(
        lambda: WorkItem.objects.filter(kind="activity", dispatched_at__isnull=False).exists(),
        timeout=TIMEOUT,
        what="the activity to be dispatched",
    )
    with Connection(REDIS_URL) as conn:  # the message is lost before any worker gets it
        wait_for(lambda: conn.default_channel.queue_purge(queue), timeout=TIMEOUT, what="the message to arrive")
    celery_worker = start_celery()
    try:
        assert handle.result(timeout=TIMEOUT) == [celery_worker.pid]
    except durable.TimeoutError:
        pytest.fail(f"workflow did not finish.\ndurable_worker:\n{dispatcher.log()}\ncelery:\n{celery_worker.log()}")


def test_workflow_tasks_run_in_the_celery_worker_with_celery_workflow_tasks(
    start_celery, start_worker, queue, key
) -> None:
    require_broker(REDIS_URL)
    celery_worker = start_celery()
    dispatcher = start_worker(
        queues=queue,
        env={
            "DURABLE_TEST_ACTIVITY_EXECUTOR": "celery",
            "DURABLE_TEST_CELERY_BROKER": REDIS_URL,
            "DURABLE_TEST_CELERY_WORKFLOW_TASKS": "1",
        },
    )
    handle = durable.start_workflow(wf.celery_sequence, key, queue=queue)
    try:
        result = handle.result(timeout=TIMEOUT)
    except durable.TimeoutError:
        pytest.fail(f"workflow did not finish.\ndurable_worker:\n{dispatcher.log()}\ncelery:\n{celery_worker.log()}")
    assert result == [celery_worker.pid, celery_worker.pid]
    workflow_id = handle.workflow_id
    completed = f"Workflow {workflow_id} (celery_sequence): completed"
    wait_for(lambda: completed in celery_worker.log(), timeout=TIMEOUT, what="the celery worker's log line")
    assert f"Workflow {workflow_id} (" not in dispatcher.log(), dispatcher.log()

    # Each workflow task (start, after each activity) was one Celery task of its own. Celery
    # logs "succeeded" after the task returns, i.e. after the run's "completed" line.
    def succeeded() -> list[str]:
        return re.findall(r"Task django_durable\.run_workflow_task\[[^]]+\] succeeded", celery_worker.log())

    wait_for(lambda: len(succeeded()) >= 3, timeout=TIMEOUT, what="the third workflow task to return")
    assert len(succeeded()) == 3, celery_worker.log()


@pytest.mark.database
def test_a_workflow_task_is_dispatched_again_whenever_it_becomes_claimable_again(db, monkeypatch, queue, key) -> None:
    """Each path that hands a sent workflow task back clears its sending: it goes out
    again at once, not after DISPATCH_TIMEOUT."""
    from django_durable import store
    from django_durable.executors.workflow_tasks import execute_workflow_task

    def dispatch() -> list[int]:
        sent = store.dispatch(kind="workflow", queues=[queue], limit=10, dispatch_timeout=3600)
        return [item_id for item_id, _ in sent]

    def claim(item_id: int, lease_seconds: float = 30) -> store.Claim:
        item = store.claim_item(item_id, owner="test", lease_seconds=lease_seconds, kind="workflow")
        assert item is not None
        return item

    handle = durable.start_workflow(wf.celery_sequence, key, queue=queue)
    [item_id] = dispatch()
    assert dispatch() == []  # sent, not yet claimed
    assert store.claim_item(item_id, owner="test", lease_seconds=30) is None  # not an activity item

    # Backoff after an engine-level failure.
    store.fail_workflow_task(claim(item_id), {"message": "boom"}, max_failures=10, backoff=0, backoff_max=0)
    assert dispatch() == [item_id]
    # Parked after too many failures, then retried by hand.
    store.fail_workflow_task(claim(item_id), {"message": "boom"}, max_failures=1, backoff=0, backoff_max=0)
    assert dispatch() == []
    assert handle.retry()
    assert dispatch() == [item_id]
    # Reaped after its claimer's lease expired.
    claim(item_id, lease_seconds=0)
    assert store.reap_expired_leases(limit=10, workflow_backoff=0, workflow_backoff_max=0, max_failures=10) == 1
    assert dispatch() == [item_id]
    # Suspended while sent, then resumed.
    handle.suspend()
    assert dispatch() == []
    handle.resume()
    assert dispatch() == [item_id]
    # Released by its commit because a signal arrived while it ran.
    load_workflow_task = store.load_workflow_task

    def load_then_signal(item: store.Claim, **options: Any) -> store.WorkflowTaskInput | None:
        task = load_workflow_task(item, **options)
        handle.signal("late")
        return task

    monkeypatch.setattr(
        store.workflow_tasks, "load_workflow_task", load_then_signal
    )  # where load_workflow_tasks looks it up
    execute_workflow_task(claim(item_id))
    assert dispatch() == [item_id]
    assert handle.status() == "running"


@pytest.mark.engine
def test_checks_reject_a_bad_executor(settings) -> None:
    from django_durable.checks import check_activity_executor

    settings.DURABLE = {"ACTIVITY_EXECUTOR": "celery", "CELERY_APP": "tests.no_such_module.app", "DISPATCH_TIMEOUT": 0}
    assert {error.id for error in check_activity_executor()} == {"django_durable.E030", "django_durable.E031"}
    settings.DURABLE = {"ACTIVITY_EXECUTOR": "celery", "CELERY_APP": "tests.celery_app.app"}
    assert check_activity_executor() == []
    settings.DURABLE = {"ACTIVITY_EXECUTOR": "no.such.Executor"}
    assert [error.id for error in check_activity_executor()] == ["django_durable.E031"]
