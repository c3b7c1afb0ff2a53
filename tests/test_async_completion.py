"""Activities finished later, from anywhere, by task token (the Python API)."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

import django_durable as durable
from django_durable.models import HistoryEvent, InboxEvent, WorkerHeartbeat, WorkflowInstance, WorkItem
from django_durable.store import db_now
from tests.conftest import wait_for
from tests.testapp.async_workflows import (
    HEARTBEAT_TIMEOUT,
    ac_approval,
    ac_approval_with_deadline,
    ac_approval_with_heartbeat,
    ac_long_work,
)

pytestmark = pytest.mark.workers


def handed_out(folder: Path, attempt: int = 1) -> dict:
    path = folder / f"token-{attempt}"
    wait_for(path.exists, what=f"attempt {attempt} to hand out its token")
    return json.loads(path.read_text())


def awaiting(handle) -> WorkItem:
    return wait_for(
        lambda: WorkItem.objects.filter(
            instance__run_id=handle.run_id, kind="activity", awaiting_completion=True
        ).first(),
        what="the attempt to await completion",
    )


def renewal_rounds(count: int) -> None:
    """Wait for ``count`` more rounds of the (one) worker's lease renewer: each round ends
    by updating the worker's row."""
    seen: set[datetime.datetime] = set()

    def rounds() -> bool:
        seen.update(WorkerHeartbeat.objects.filter(stopped_at__isnull=True).values_list("last_seen_at", flat=True))
        return len(seen) > count

    wait_for(rounds, timeout=60, what=f"{count} rounds of lease renewal")


def snapshot() -> tuple:
    return tuple(
        sorted(model.objects.values_list("pk", flat=True))
        for model in (WorkflowInstance, HistoryEvent, WorkItem, InboxEvent)
    ) + (list(WorkItem.objects.values_list("attempt", "lease_owner", "awaiting_completion", "heartbeat_details")),)


def test_complete_by_token(start_worker, tmp_path):
    handle = durable.start_workflow(ac_approval, str(tmp_path))
    start_worker()
    token = handed_out(tmp_path)["token"]
    item = awaiting(handle)
    assert item.attempt == 1 and item.lease_expires_at is None  # no timeout: waits as long as it takes

    durable.complete_activity(token, {"approved": True})
    assert handle.result(timeout=60) == {"result": {"approved": True}}
    completed = HistoryEvent.objects.get(instance__run_id=handle.run_id, kind="ActivityCompleted")
    assert completed.payload["result"] == {"approved": True}

    before = snapshot()
    with pytest.raises(durable.ActivityNotPending):
        durable.complete_activity(token, "again")
    assert snapshot() == before


def test_fail_by_token_retries_then_gives_up(start_worker, tmp_path):
    handle = durable.start_workflow(ac_approval, str(tmp_path))
    start_worker()
    first = handed_out(tmp_path, 1)["token"]
    awaiting(handle)
    durable.heartbeat_activity(first, {"progress": 40})
    durable.fail_activity(first, {"message": "mailbox full", "type": "MailError"})

    second = handed_out(tmp_path, 2)
    assert second["heartbeat_details"] == {"progress": 40}  # the previous attempt's last report
    with pytest.raises(durable.ActivityNotPending):
        durable.complete_activity(first, "stale")  # superseded by the retry

    durable.fail_activity(second["token"], "still full")
    third = handed_out(tmp_path, 3)["token"]
    durable.fail_activity(third, RuntimeError("gave up"))  # the policy allows 3 attempts
    outcome = handle.result(timeout=60)
    assert outcome["error"] == {"type": "RuntimeError", "message": "gave up", "attempt": 3}


def test_complete_by_workflow_and_activity_id(start_worker, tmp_path):
    handle = durable.start_workflow(ac_approval, str(tmp_path), workflow_id="approval-by-id")
    start_worker()
    activity_id = handed_out(tmp_path)["activity_id"]
    awaiting(handle)
    durable.complete_activity_by_id("approval-by-id", activity_id, "yes")
    assert handle.result(timeout=60) == {"result": "yes"}
    with pytest.raises(durable.ActivityNotPending):
        durable.complete_activity_by_id("approval-by-id", activity_id, "again")
    with pytest.raises(durable.WorkflowNotFound):
        durable.complete_activity_by_id("no-such-workflow", "1", "yes")


def test_by_id_names_the_attempt_without_a_token_so_no_age_limit_applies(start_worker, tmp_path):
    """By id, the attempt is looked up, not signed into a token and read back: with a
    TASK_TOKEN_MAX_AGE that any token has outlived by the time it is read, the worker's
    token is refused, while heartbeat, fail and complete by id all go through."""
    handle = durable.start_workflow(ac_approval, str(tmp_path), workflow_id="by-id-no-token")
    start_worker()
    first = handed_out(tmp_path, 1)
    awaiting(handle)
    with override_settings(DURABLE={**settings.DURABLE, "TASK_TOKEN_MAX_AGE": 1e-9}):
        with pytest.raises(durable.InvalidTaskToken, match="expired"):
            durable.complete_activity(first["token"], "by token")
        assert durable.heartbeat_activity_by_id("by-id-no-token", first["activity_id"], {"step": 1}) is False
        durable.fail_activity_by_id("by-id-no-token", first["activity_id"], "try again")
        second = handed_out(tmp_path, 2)
        assert second["heartbeat_details"] == {"step": 1}
        awaiting(handle)
        durable.complete_activity_by_id("by-id-no-token", second["activity_id"], "by id")
    assert handle.result(timeout=60) == {"result": "by id"}


@pytest.mark.database
@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a" * 5000, None, 42],
    ids=["empty", "garbled", "oversized", "none", "int"],
)
def test_invalid_tokens_are_rejected_without_touching_the_database(token, django_assert_num_queries, db):
    with django_assert_num_queries(0), pytest.raises(durable.InvalidTaskToken):
        durable.complete_activity(token, "x")


def test_forged_token_is_rejected_before_any_query(start_worker, tmp_path, django_assert_num_queries):
    handle = durable.start_workflow(ac_approval, str(tmp_path))
    start_worker()
    token = handed_out(tmp_path)["token"]
    awaiting(handle)
    payload, _, signature = token.rpartition(":")
    forged = payload + ":" + ("A" if signature[0] != "A" else "B") + signature[1:]
    with django_assert_num_queries(0), pytest.raises(durable.InvalidTaskToken):
        durable.complete_activity(forged, "x")
    before = snapshot()
    with pytest.raises(durable.InvalidTaskToken):
        durable.fail_activity(forged, "x")
    assert snapshot() == before
    durable.complete_activity(token, "real")
    assert handle.result(timeout=60) == {"result": "real"}


def test_start_to_close_timeout_applies_to_an_awaiting_attempt(start_worker, tmp_path):
    handle = durable.start_workflow(ac_approval_with_deadline, str(tmp_path))
    start_worker()
    first = handed_out(tmp_path, 1)["token"]
    handed_out(tmp_path, 2)  # attempt 1 timed out after 1 s and was retried
    with pytest.raises(durable.ActivityNotPending):
        durable.complete_activity(first, "too late")
    handed_out(tmp_path, 3)
    outcome = handle.result(timeout=60)
    assert outcome["error"]["attempt"] == 3
    assert "start_to_close_timeout" in outcome["error"]["message"]


def test_heartbeats_keep_an_awaiting_attempt_alive(start_worker, tmp_path):
    handle = durable.start_workflow(ac_approval_with_heartbeat, str(tmp_path))
    start_worker()
    token = handed_out(tmp_path, 1)["token"]
    item = awaiting(handle)
    # Heartbeat for well over the heartbeat timeout; the attempt stays live.
    began, step = time.monotonic(), 0
    while time.monotonic() - began < 2.5 * HEARTBEAT_TIMEOUT:
        assert durable.heartbeat_activity(token, {"step": step}) is False
        step += 1
        time.sleep(HEARTBEAT_TIMEOUT / 10)  # the point: time passing between heartbeats
    assert not (tmp_path / "token-2").exists()
    item.refresh_from_db()
    assert item.attempt == 1 and item.heartbeat_details == {"step": step - 1}
    durable.complete_activity(token, "done")
    assert handle.result(timeout=60) == {"result": "done"}


def test_a_missed_heartbeat_times_the_awaiting_attempt_out(start_worker, tmp_path):
    handle = durable.start_workflow(ac_approval_with_heartbeat, str(tmp_path))
    start_worker()
    first = handed_out(tmp_path, 1)["token"]
    second = handed_out(tmp_path, 2)["token"]
    with pytest.raises(durable.ActivityNotPending):
        durable.heartbeat_activity(first)
    durable.complete_activity(second, "second time lucky")
    assert handle.result(timeout=60) == {"result": "second time lucky"}


def test_running_activity_heartbeats_against_its_heartbeat_timeout(start_worker):
    beating = durable.start_workflow(ac_long_work, 2.5, True)
    # Silent for six of its 1 s heartbeat timeouts: each attempt is reaped long before it could finish.
    silent = durable.start_workflow(ac_long_work, 6.0, False)
    start_worker()
    assert beating.result(timeout=60) == {"result": "done"}
    outcome = silent.result(timeout=60)
    assert "heartbeat_timeout" in outcome["error"]["message"]
    assert outcome["error"]["attempt"] == 2


def test_terminate_closes_the_run_and_stales_its_tokens(start_worker, tmp_path):
    handle = durable.start_workflow(ac_approval, str(tmp_path))
    start_worker()
    token = handed_out(tmp_path)["token"]
    awaiting(handle)
    handle.terminate("customer left")
    assert handle.status() == "terminated"
    with pytest.raises(durable.WorkflowFailed) as failed:
        handle.result(timeout=5)
    assert failed.value.status == "terminated" and "customer left" in str(failed.value)
    history = handle.history()
    assert history[-1].kind == "WorkflowTerminated" and [e.seq for e in history] == list(range(1, len(history) + 1))
    assert not WorkItem.objects.filter(instance__run_id=handle.run_id).exists()

    before = snapshot()
    with pytest.raises(durable.ActivityNotPending):
        durable.complete_activity(token, "late")
    with pytest.raises(durable.WorkflowNotOpen):
        handle.terminate()
    assert snapshot() == before


def test_lease_renewal_leaves_an_awaiting_attempt_alone(start_worker, tmp_path):
    from tests.testapp.async_workflows import ac_approval_with_long_deadline

    handle = durable.start_workflow(ac_approval_with_long_deadline, str(tmp_path))
    start_worker()
    token = handed_out(tmp_path)["token"]
    item = awaiting(handle)
    deadline = item.claimed_at + datetime.timedelta(seconds=60)
    assert item.lease_expires_at == deadline
    # Several renewal rounds (every LEASE_SECONDS / 3) and a lease's length go by.
    renewal_rounds(3)
    wait_for(
        lambda: db_now() > item.claimed_at + datetime.timedelta(seconds=settings.DURABLE["LEASE_SECONDS"]),
        what="a lease's length",
    )
    item.refresh_from_db()
    assert (item.attempt, item.lease_expires_at) == (1, deadline)
    durable.complete_activity(token, "approved")
    assert handle.result(timeout=60) == {"result": "approved"}


def test_heartbeats_keep_a_short_heartbeat_timeout_from_expiring(start_worker):
    from tests.testapp.async_workflows import ac_quick_heartbeat_work

    # Its leases renewed every 10 s: for the 6 s it runs (three heartbeat timeouts) only its
    # heartbeats keep it alive. (A renewal falls in that time at most once, and extends the
    # lease at most one heartbeat timeout past itself.)
    handle = durable.start_workflow(ac_quick_heartbeat_work, 6.0)
    start_worker(env={"DURABLE_TEST_LEASE_SECONDS": "30"})
    assert handle.result(timeout=60) == {"result": 1}  # attempt 1 was never reaped
