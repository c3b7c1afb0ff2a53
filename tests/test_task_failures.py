"""Engine-level workflow task failures back off and are parked, not retried forever."""

import pytest
from django.db import connection

import django_durable as durable
from django_durable.models import WorkItem
from tests.conftest import wait_for
from tests.testapp.workflows import (
    blocks_without_a_durable_call,
    crasher,
    queries_the_database,
    retrying,
)

pytestmark = pytest.mark.workers


def test_a_failing_workflow_task_backs_off_and_is_parked(start_worker):
    handle = durable.start_workflow(crasher)
    worker = start_worker(env={"DURABLE_TEST_MAX_FAILURES": "3"})

    item = wait_for(
        lambda: WorkItem.objects.filter(kind="workflow", parked_at__isnull=False).first(),
        what="the workflow task to be parked",
    )
    assert item.failures == 3
    assert "workflow code called sys.exit()" in item.last_error["message"]
    assert item.lease_owner is None
    description = handle.describe()
    assert description.status in ("pending", "running")
    assert "sys.exit()" in description.task_error["message"]
    assert description.history_length == 1  # nothing of the failed tasks was written

    log = worker.log()
    assert log.count("workflow code called sys.exit()") >= 3
    assert "parked after too many failures" in log
    worker.terminate()
    assert worker.wait() == 0
    # Parked means parked: a fresh worker does not pick it up again.
    batch = start_worker(batch=True)
    assert batch.wait() == 0
    assert WorkItem.objects.get(pk=item.pk).failures == 3

    # retry() (after a fix, say) makes it claimable at once, with a fresh failure count.
    assert handle.retry() is True
    item.refresh_from_db()
    assert (item.parked_at, item.failures, item.lease_owner) == (None, 0, None)


@pytest.mark.parametrize("swallow", [False, True], ids=["raises", "catches-exception"])
def test_workflow_code_that_queries_the_database_fails_its_task_and_is_parked(start_worker, swallow):
    handle = durable.start_workflow(queries_the_database, swallow)
    worker = start_worker(env={"DURABLE_TEST_MAX_FAILURES": "2"})
    item = wait_for(
        lambda: WorkItem.objects.filter(instance__run_id=handle.run_id, parked_at__isnull=False).first(),
        what="the workflow task to be parked",
    )
    assert item.last_error["type"] == "django_durable.exceptions.DatabaseAccessInWorkflow"
    queries = ["SELECT COUNT(*)"]
    if connection.vendor == "mysql":
        # A thread's first query there may be Django's own probe of the server, on the ORM's behalf.
        queries.append("SELECT VERSION(), @@sql_mode")
    message = item.last_error["message"]
    assert any(f"Workflow code ran a database query ({query}" in message for query in queries), message
    assert "query the database in an activity" in item.last_error["message"]
    description = handle.describe()
    assert description.status in ("pending", "running") and description.history_length == 1
    # The worker is unharmed: it goes on with other work.
    other = durable.start_workflow(retrying, f"after-orm-{swallow}", 0)
    assert other.result(timeout=60) == 1
    worker.terminate()
    assert worker.wait() == 0


def test_workflow_code_that_blocks_past_the_task_timeout_fails_its_task_and_is_parked(start_worker):
    handle = durable.start_workflow(blocks_without_a_durable_call, 30.0)
    worker = start_worker(env={"DURABLE_TEST_MAX_FAILURES": "1", "DURABLE_TEST_WORKFLOW_TASK_TIMEOUT": "0.5"})
    item = wait_for(
        lambda: WorkItem.objects.filter(instance__run_id=handle.run_id, parked_at__isnull=False).first(),
        what="the workflow task to be parked",
    )
    message = item.last_error["message"]
    assert "Workflow code ran for more than 0.5s without reaching a durable call" in message
    assert "blocks_without_a_durable_call" in message and "time.sleep(seconds)" in message  # where it was
    assert handle.describe().history_length == 1  # nothing of the task was written
    # The worker is unharmed (the stuck thread is left behind): other runs go on.
    assert durable.start_workflow(retrying, "after-a-blocked-task", 0).result(timeout=60) == 1
    worker.terminate()
    assert worker.wait() == 0
