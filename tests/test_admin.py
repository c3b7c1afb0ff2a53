"""The admin's read-only view of a run (the debugger grows here in a later issue)."""

import pytest

import django_durable as durable
from django_durable.models import WorkflowInstance, WorkItem
from django_durable.tokens import make_task_token, read_task_token
from tests.testapp.workflows import fan_out

pytestmark = pytest.mark.django_db


def test_change_page_shows_history_work_and_the_token_of_an_awaiting_attempt(admin_client):
    handle = durable.start_workflow(fan_out, 2, workflow_id="admin-1")
    instance = WorkflowInstance.objects.get(run_id=handle.run_id)
    item = WorkItem.objects.create(
        kind="activity", instance=instance, queue="default", name="add", task_id=1, due_at=instance.created_at,
        attempt=1, lease_owner="worker", awaiting_completion=True,
    )
    WorkItem.objects.create(
        kind="activity", instance=instance, queue="default", name="add", task_id=2, due_at=instance.created_at,
    )
    response = admin_client.get(f"/admin/django_durable/workflowinstance/{instance.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    token = make_task_token(item_id=item.pk, run_id=handle.run_id, task_id=1, attempt=1)
    assert token in page and read_task_token(token).item_id == item.pk
    assert "ExecutionStarted" in page

    listing = admin_client.get("/admin/django_durable/workflowinstance/?q=admin-1")
    assert listing.status_code == 200 and "admin-1" in listing.content.decode()
