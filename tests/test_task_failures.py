"""Engine-level workflow task failures back off and are parked, not retried forever."""

import django_durable as durable
from django_durable.models import WorkItem
from tests.conftest import wait_for
from tests.testapp.workflows import crasher


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
