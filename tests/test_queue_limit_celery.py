"""Flow control under the Celery executor: a real durable_worker sends the activities of the
limited queue ``limited`` to real ``celery worker`` subprocesses over real Redis, and the
queue's limits (``DURABLE["QUEUES"]``, here from ``DURABLE_TEST_QUEUES``) hold across the
Celery worker's pool; an attempt a Celery worker may not lease for lack of a slot is sent
again and finishes.

Each attempt of ``limited_step`` records its span (start, end: this machine's clock) and its
lease's start (``claimed``: the database's clock) in a file of its own.

A broker that cannot be reached skips these tests locally and fails them in CI, as
tests/test_celery.py does.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings

import django_durable as durable
from django_durable import store
from django_durable.models import QueueState, WorkItem, WorkItemKind
from tests.conftest import REPO, WorkerProcess, wait_for
from tests.testapp import workflows as wf

pytest.importorskip("celery")
from kombu import Connection

from tests.test_celery import REDIS_URL, TIMEOUT, CeleryWorker, require_broker

pytestmark = pytest.mark.workers

LIMITED = "limited"  # limited_step's queue, and so the Celery queue its messages go to
Limits = dict[str, Any]


def _purge_limited() -> None:
    """Drop messages a previous test left in the broker's ``limited`` queue: they name work
    items of a database since flushed."""
    with Connection(REDIS_URL) as conn:
        conn.default_channel.queue_purge(LIMITED)


@pytest.fixture
def queue() -> str:
    """The workflows' own queue (their workflow tasks run in the durable_worker)."""
    return f"flow-celery-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def start_limited(
    transactional_db: None, start_worker: Callable[..., WorkerProcess], tmp_path: Path, queue: str
) -> Iterator[Callable[..., tuple[CeleryWorker, WorkerProcess]]]:
    """``start_limited(limits, pool=..., concurrency=...)``: a Celery worker consuming
    ``limited``, then a durable_worker of the test's queue and ``limited`` that sends to it,
    both with ``DURABLE["QUEUES"] = {"limited": limits}``."""
    started: list[CeleryWorker] = []

    def start(limits: Limits, *, pool: str = "threads", concurrency: int = 4) -> tuple[CeleryWorker, WorkerProcess]:
        require_broker(REDIS_URL)
        _purge_limited()
        env = {
            "DURABLE_TEST_ACTIVITY_EXECUTOR": "celery",
            "DURABLE_TEST_CELERY_BROKER": REDIS_URL,
            "DURABLE_TEST_QUEUES": json.dumps({LIMITED: limits}),
        }
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
            LIMITED,
            "--loglevel=INFO",
            "-n",
            f"dd-limited-{uuid.uuid4().hex[:8]}@%h",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ]
        celery_env = {
            **os.environ,
            **env,
            "PYTHONPATH": str(REPO),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DURABLE_DB_NAME": str(connection.settings_dict["NAME"]),
        }
        celery_worker = CeleryWorker(command, celery_env, tmp_path / f"celery-{len(started)}.log")
        started.append(celery_worker)
        wait_for(
            lambda: " ready." in celery_worker.log() or celery_worker.proc.poll() is not None,
            timeout=TIMEOUT,
            what="the celery worker to be ready",
        )
        assert celery_worker.proc.poll() is None, f"celery worker exited:\n{celery_worker.log()}"
        return celery_worker, start_worker(queues=f"{queue},{LIMITED}", env=env)

    yield start
    for celery_worker in started:
        celery_worker.close()
    if started:
        # Purged, not deleted: deleting would drop the queue's binding that a concurrent
        # session's producer (which declared it once) still publishes through.
        _purge_limited()


def run_fan_out(
    handles: list[durable.WorkflowHandle], celery_worker: CeleryWorker, dispatcher: WorkerProcess
) -> list[Any]:
    try:
        return [handle.result(timeout=TIMEOUT) for handle in handles]
    except durable.TimeoutError:
        pytest.fail(f"workflow did not finish.\ndurable_worker:\n{dispatcher.log()}\ncelery:\n{celery_worker.log()}")


def records(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in directory.glob("*.json")]


def max_overlap(spans: list[dict[str, Any]]) -> int:
    """The most attempts whose [start, end] spans ran at one moment (an end before a start at a tie)."""
    events = sorted([(span["start"], 1) for span in spans] + [(span["end"], -1) for span in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def assert_each_label_ran_once(spans: list[dict[str, Any]], labels: list[str]) -> None:
    """No attempt lost, none run twice: one first attempt per label."""
    assert sorted((span["label"], span["attempt"]) for span in spans) == sorted((label, 1) for label in labels)


def test_concurrency_holds_across_a_prefork_pool(start_limited, queue, tmp_path) -> None:
    celery_worker, dispatcher = start_limited({"concurrency": 2}, pool="prefork", concurrency=4)
    batches = [[f"w{workflow}-{n}" for n in range(4)] for workflow in range(2)]
    handles = [
        durable.start_workflow(wf.limited_fan_out, str(tmp_path), labels, 0.8, queue=queue) for labels in batches
    ]
    assert run_fan_out(handles, celery_worker, dispatcher) == batches
    spans = records(tmp_path)
    assert_each_label_ran_once(spans, [label for labels in batches for label in labels])
    assert max_overlap(spans) == 2, sorted((span["start"], span["end"]) for span in spans)
    assert len({span["pid"] for span in spans}) > 1  # the pool's children, not one process in turn
    # The durable_worker sent no more than the free slots: each attempt once, none refused.
    sent = re.findall(r"Sent activity item (\d+) \(queue limited\)", dispatcher.log())
    assert len(sent) == len(set(sent)) == len(spans), dispatcher.log()
    assert "not claimable" not in celery_worker.log(), celery_worker.log()


def test_key_concurrency_holds_per_key_and_keys_run_side_by_side(start_limited, queue, tmp_path) -> None:
    celery_worker, dispatcher = start_limited({"key_concurrency": 1})
    labels = [f"{key}/{n}" for n in range(3) for key in ("a", "b")]
    handle = durable.start_workflow(wf.limited_fan_out, str(tmp_path), labels, 0.6, queue=queue)
    assert run_fan_out([handle], celery_worker, dispatcher) == [labels]
    spans = records(tmp_path)
    assert_each_label_ran_once(spans, labels)
    for key in ("a", "b"):
        of_key = [span for span in spans if span["key"] == key]
        assert {span["concurrency_key"] for span in of_key} == {key}
        assert max_overlap(of_key) == 1, sorted((span["start"], span["end"]) for span in of_key)
    assert max_overlap(spans) == 2  # one of each key at once: the limit is per key, not the queue's


def test_rate_limit_spaces_the_starts(start_limited, queue, tmp_path) -> None:
    limit, period = 2, 1.5
    celery_worker, dispatcher = start_limited({"rate_limit": {"limit": limit, "period": period}})
    labels = [f"r{n}" for n in range(6)]
    handle = durable.start_workflow(wf.limited_fan_out, str(tmp_path), labels, 0.0, queue=queue)
    assert run_fan_out([handle], celery_worker, dispatcher) == [labels]
    spans = records(tmp_path)
    assert_each_label_ran_once(spans, labels)
    starts = sorted(span["claimed"] for span in spans)  # the database's clock, as the window is
    gaps = [later - earlier for earlier, later in zip(starts, starts[limit:], strict=False)]
    assert min(gaps) >= period - 0.001, starts  # never more than `limit` starts within a period
    assert any(later - earlier < period for earlier, later in itertools.pairwise(starts)), starts  # the limit is used


def test_an_attempt_refused_for_lack_of_a_slot_is_sent_again_and_finishes(start_limited, queue, tmp_path) -> None:
    # worker_concurrency counts per Celery worker process (the threads pool is one); the
    # durable_worker does not know which process a message reaches, so it sends every
    # waiting attempt, and the Celery worker leases one and refuses the others.
    celery_worker, dispatcher = start_limited({"worker_concurrency": 1}, pool="threads", concurrency=4)
    labels = [f"s{n}" for n in range(3)]
    handle = durable.start_workflow(wf.limited_fan_out, str(tmp_path), labels, 0.5, queue=queue)
    assert run_fan_out([handle], celery_worker, dispatcher) == [labels]
    spans = records(tmp_path)
    assert_each_label_ran_once(spans, labels)
    assert {span["pid"] for span in spans} == {celery_worker.pid}
    assert max_overlap(spans) == 1
    refused = {int(item) for item in re.findall(r"Work item (\d+) is not claimable", celery_worker.log())}
    assert refused, celery_worker.log()
    sent = re.findall(r"Sent activity item (\d+) \(queue limited\)", dispatcher.log())
    for item_id in refused:
        assert sent.count(str(item_id)) >= 2, f"item {item_id} was refused but not sent again:\n{dispatcher.log()}"
    assert not WorkItem.objects.filter(queue=LIMITED).exists()


def _run_workflow_tasks(queue: str) -> None:
    from django_durable.executors.workflow_tasks import execute_workflow_task

    for item in store.claim(owner="test", kind=WorkItemKind.WORKFLOW, queues=[queue], limit=10, lease_seconds=30):
        execute_workflow_task(item)


def _dispatch() -> list[int]:
    return [item_id for item_id, _ in store.dispatch_activities(queues=[LIMITED], limit=10, dispatch_timeout=3600)]


@pytest.mark.database
@pytest.mark.django_db(transaction=True)
def test_a_refused_message_clears_its_sending_and_goes_again_when_a_slot_frees(queue, tmp_path) -> None:
    """The Celery task's own code (run eagerly, no broker): an operator lowers the limit while
    two messages are in flight; the second finds no slot, is forgotten as sent, is not sent
    again while the slot is held, and is sent, leased and run once it frees."""
    from django_durable.executors.celery import run_activity
    from django_durable.executors.remote import run_activity_item

    with override_settings(DURABLE={"QUEUES": {LIMITED: {"concurrency": 2}}}):
        handle = durable.start_workflow(wf.limited_fan_out, str(tmp_path), ["a", "b", "c"], 0.0, queue=queue)
        _run_workflow_tasks(queue)
        first, second = _dispatch()
        assert _dispatch() == []  # both slots taken by messages in flight
        QueueState.objects.filter(queue=LIMITED).update(limits={"concurrency": 1})

        held = store.claim_item(first, owner="celery:h:1:task-1", lease_seconds=30, worker="celery:h:1:")
        assert held is not None
        run_activity.apply(args=[second], throw=True)  # refused: its queue is full
        refused = WorkItem.objects.get(id=second)
        assert (refused.lease_owner, refused.dispatched_at, refused.attempt) == (None, None, 0)
        # Due again after a back-off, so that a refusal is no loop of sends and refusals.
        assert refused.due_at > store.db_now()
        WorkItem.objects.filter(id=second).update(due_at=store.db_now())  # the back-off, passed
        assert _dispatch() == []  # forgotten as sent, yet no slot to send it into

        run_activity_item(held, lease_seconds=30)
        # One slot, free again: the refused attempt and the third go one at a time, in due order.
        for _ in range(2):
            [sent] = _dispatch()
            assert _dispatch() == []
            run_activity.apply(args=[sent], throw=True)
        _run_workflow_tasks(queue)
        assert handle.result(timeout=0) == ["a", "b", "c"]
    assert_each_label_ran_once(records(tmp_path), ["a", "b", "c"])
