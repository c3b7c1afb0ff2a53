"""Flow control in the store: a limited queue's attempts are leased only within its limits,
on every lease path (claim, dispatch, claim by id), and unlimited queues are left alone."""

from __future__ import annotations

import datetime
import threading

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.test import override_settings

import django_durable as durable
from django_durable import store
from django_durable.executors.workflow_tasks import execute_workflow_task
from django_durable.models import QueueState, WorkflowInstance, WorkItem, WorkItemKind
from django_durable.queues import QueueLimits, RateLimit, configured_limits
from django_durable.store import queue_limits
from tests.testapp.flow_workflows import limited_fan_out

pytestmark = pytest.mark.database


def limits(**queues: dict) -> override_settings:
    return override_settings(DURABLE={"QUEUES": queues})


def waiting(n: int, *, queue: str = "limited", keys: list[str] | None = None) -> list[int]:
    run = WorkflowInstance.objects.create(workflow_id=f"flow-{queue}-{n}", workflow_name="fan_out", queue="default")
    now = store.db_now()
    items = WorkItem.objects.bulk_create(
        WorkItem(
            instance=run,
            kind=WorkItemKind.ACTIVITY,
            queue=queue,
            name="limited_step",
            task_id=i,
            due_at=now - datetime.timedelta(seconds=n - i),
            concurrency_key=(keys[i % len(keys)] if keys else ""),
        )
        for i in range(n)
    )
    return [item.pk for item in items]


def claim(owner: str, limit: int = 10, queues: tuple[str, ...] = ("limited",)) -> list[store.Claim]:
    return store.claim(owner=owner, kind=WorkItemKind.ACTIVITY, queues=list(queues), limit=limit, lease_seconds=60)


@pytest.mark.django_db(transaction=True)
def test_concurrency_holds_across_owners_and_frees_on_finish() -> None:
    with limits(limited={"concurrency": 2}):
        waiting(5)
        first = claim("worker-a")
        assert len(first) == 2
        assert claim("worker-b") == []
        store.discard(first[0])
        assert len(claim("worker-b")) == 1
        assert claim("worker-a") == []


@pytest.mark.django_db(transaction=True)
def test_an_unlimited_queue_never_touches_the_queue_state() -> None:
    with limits(limited={"concurrency": 1}):
        waiting(3, queue="free")
        assert len(claim("worker-a", queues=("free",))) == 3
        assert not QueueState.objects.filter(queue="free").exists()


@pytest.mark.django_db(transaction=True)
def test_worker_concurrency_and_key_concurrency() -> None:
    with limits(limited={"worker_concurrency": 1, "key_concurrency": 1}):
        waiting(6, keys=["a", "a", "b"])
        assert [item.id for item in claim("worker-a")] and len(claim("worker-a")) == 0
        second = claim("worker-b")
        assert len(second) == 1
        keys = set(WorkItem.objects.filter(lease_owner__isnull=False).values_list("concurrency_key", flat=True))
        assert keys == {"a", "b"}
        assert claim("worker-c") == []  # both keys at their limit


@pytest.mark.django_db(transaction=True)
def test_rate_limit_counts_starts_in_a_sliding_window() -> None:
    with limits(limited={"rate_limit": {"limit": 3, "period": datetime.timedelta(hours=1)}}):
        ids = waiting(5)
        taken = claim("worker-a")
        assert len(taken) == 3
        for item in taken:
            store.discard(item)
        assert claim("worker-a") == []  # finished, but started within the window
        assert len(QueueState.objects.get(queue="limited").recent_starts) == 3
        assert WorkItem.objects.filter(id__in=ids, lease_owner__isnull=True).count() == 2


@pytest.mark.django_db(transaction=True)
def test_dispatch_sends_no_more_than_the_free_slots_and_claim_item_refuses_beyond_them() -> None:
    with limits(limited={"concurrency": 2}):
        ids = waiting(4)
        sent = store.dispatch_activities(queues=["limited"], limit=10, dispatch_timeout=60)
        assert len(sent) == 2
        assert store.dispatch_activities(queues=["limited"], limit=10, dispatch_timeout=60) == []
        # A worker of the same queue takes the slots meanwhile: the messages find none.
        waiting(1)
        WorkItem.objects.filter(id__in=[i for i, _ in sent]).update(dispatched_at=None)
        assert len(claim("worker-a")) == 2
        refused = ids[3]
        WorkItem.objects.filter(id=refused).update(dispatched_at=store.db_now())
        assert store.claim_item(refused, owner="celery:h:1:x", lease_seconds=60, worker="celery:h:1:") is None
        assert WorkItem.objects.get(id=refused).dispatched_at is None  # sent again when a slot frees


@pytest.mark.django_db(transaction=True)
def test_an_override_in_the_database_replaces_the_settings() -> None:
    with limits(limited={"concurrency": 1}):
        waiting(4)
        QueueState.objects.create(queue="limited", limits={"concurrency": 3})
        queue_limits.forget()
        assert len(claim("worker-a")) == 3


def test_the_setting_is_validated() -> None:
    assert configured_limits({"q": {"rate_limit": {"limit": 5, "period": 2.5}}}) == {
        "q": QueueLimits(rate_limit=RateLimit(5, 2.5))
    }
    for bad in ({"q": {"concurrency": 0}}, {"q": {"speed": 1}}, {"q": {"rate_limit": {"limit": 1}}}, ["q"]):
        with pytest.raises(ImproperlyConfigured):
            configured_limits(bad)


def schedule_limited_attempts(tmp_path, labels: list[str]) -> store.Eager:
    """A workflow task that schedules one attempt of the queue ``limited`` per label, committed
    with room for ten attempts at once (a worker's eager leasing)."""
    durable.start_workflow(limited_fan_out, str(tmp_path), labels, 0.0, workflow_id="flow-eager")
    [task] = store.claim(owner="worker-w", kind=WorkItemKind.WORKFLOW, queues=["default"], limit=1, lease_seconds=60)
    eager = store.Eager(owner="worker-w", queues=["limited"], limit=10, lease_seconds=60)
    execute_workflow_task(task, None, eager)
    return eager


@pytest.mark.django_db(transaction=True)
def test_a_commit_leases_new_attempts_of_a_limited_queue_at_once_within_its_free_slots(tmp_path) -> None:
    with limits(limited={"concurrency": 3, "key_concurrency": 1}):
        waiting(1)
        assert len(claim("worker-a")) == 1  # one slot of three held elsewhere
        eager = schedule_limited_attempts(tmp_path, ["a/1", "a/2", "b/1", "c"])
        assert sorted(item.payload["args"][1] for item in eager.claims) == ["a/1", "b/1"]
        leased = WorkItem.objects.filter(lease_owner="worker-w", kind=WorkItemKind.ACTIVITY)
        assert sorted(leased.values_list("concurrency_key", flat=True)) == ["a", "b"]
        assert WorkItem.objects.filter(queue="limited", lease_owner__isnull=True).count() == 2
        assert claim("worker-b") == []  # the queue is full: 1 + 2 of 3


@pytest.mark.django_db(transaction=True)
def test_a_commit_counts_the_rate_limits_starts_and_leaves_an_unseen_queue_to_a_claim(tmp_path) -> None:
    with limits(limited={"rate_limit": {"limit": 2, "period": 3600}}):
        eager = schedule_limited_attempts(tmp_path, ["a", "b", "c"])
        assert eager.claims == []  # no claim of this process created the queue's row yet
        assert len(claim("worker-a")) == 2
        assert len(QueueState.objects.get(queue="limited").recent_starts) == 2


@pytest.mark.django_db(transaction=True)
def test_a_commit_leaves_free_slots_owed_to_attempts_already_waiting(tmp_path) -> None:
    with limits(limited={"concurrency": 2}):
        queue_limits.ensure_state("limited")
        [older] = waiting(1)
        eager = schedule_limited_attempts(tmp_path, ["a", "b", "c"])
        assert [item.payload["args"][1] for item in eager.claims] == ["a"]  # 2 free, 1 owed to the older
        [next_claim] = claim("worker-b")
        assert next_claim.id == older


@pytest.mark.django_db(transaction=True)
def test_a_limited_queue_is_claimed_first_beside_a_busy_unlimited_one() -> None:
    with limits(limited={"concurrency": 2}):
        waiting(20, queue="free")
        waiting(5)
        taken = claim("worker-a", limit=3, queues=("free", "limited"))
        assert sorted(item.queue for item in taken) == ["free", "limited", "limited"]
        sent = store.dispatch_activities(queues=["free", "limited"], limit=3, dispatch_timeout=60)
        assert sorted(queue for _, queue in sent) == ["free", "free", "free"]  # limited: no slot left


@pytest.mark.django_db(transaction=True)
def test_worker_concurrency_counts_one_worker_by_its_name_and_a_celery_process_by_its_prefix() -> None:
    with limits(limited={"worker_concurrency": 1}):
        waiting(4)
        assert len(claim("w1")) == 1
        assert len(claim("w10")) == 1  # not w1's: a name is no prefix of another's
        ids = list(WorkItem.objects.filter(lease_owner__isnull=True).values_list("id", flat=True))
        assert store.claim_item(ids[0], owner="celery:h:7:t1", lease_seconds=60, worker="celery:h:7:") is not None
        assert store.claim_item(ids[1], owner="celery:h:7:t2", lease_seconds=60, worker="celery:h:7:") is None


@pytest.mark.django_db(transaction=True)
def test_an_override_that_cannot_be_read_is_logged_and_the_settings_apply(caplog) -> None:
    with limits(limited={"concurrency": 1}):
        waiting(3)
        QueueState.objects.create(queue="limited", limits={"concurrency": 0})  # written by hand
        QueueState.objects.create(queue="other", limits={"speed": 9})
        queue_limits.forget()
        assert len(claim("worker-a")) == 1
        assert "its override of the limits is ignored" in caplog.text


def test_a_period_that_is_no_number_of_seconds_is_refused() -> None:
    for period in (float("nan"), float("inf"), 0, -1, True, "30"):
        with pytest.raises(ImproperlyConfigured):
            configured_limits({"q": {"rate_limit": {"limit": 1, "period": period}}})


@pytest.mark.django_db(transaction=True)
def test_a_commit_never_waits_for_a_queue_lock_another_transaction_holds(tmp_path) -> None:
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has no row locks: its writers take turns")
    with limits(limited={"concurrency": 5}):
        queue_limits.ensure_state("limited")
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            try:
                with transaction.atomic():
                    list(QueueState.objects.select_for_update().filter(queue="limited"))
                    holding.set()
                    release.wait(30)
            finally:
                connection.close()

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert holding.wait(30)
            eager = schedule_limited_attempts(tmp_path, ["a", "b"])
            assert eager.claims == []  # left to a claim rather than waited for
        finally:
            release.set()
            holder.join(30)
        assert len(claim("worker-a")) == 2


@pytest.mark.django_db(transaction=True)
def test_a_queue_row_deleted_by_hand_is_made_again() -> None:
    with limits(limited={"concurrency": 1}):
        waiting(3)
        [first] = claim("worker-a")
        QueueState.objects.all().delete()
        store.discard(first)
        taken = claim("worker-a") or claim("worker-a")  # the first look may find the row gone
        assert len(taken) == 1
        assert QueueState.objects.filter(queue="limited").exists()
