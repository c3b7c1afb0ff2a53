"""start_workflow's id reuse policies (no worker needed: runs are closed by hand)."""

import pytest

import django_durable as durable
from django_durable.models import WorkflowInstance, WorkflowStatus
from tests.testapp.workflows import fan_out

pytestmark = [pytest.mark.django_db, pytest.mark.database]


def close(handle, status=WorkflowStatus.COMPLETED):
    WorkflowInstance.objects.filter(run_id=handle.run_id).update(status=status)


def test_default_allows_reuse_only_once_closed():
    first = durable.start_workflow(fan_out, 1, workflow_id="order-1")
    with pytest.raises(durable.WorkflowAlreadyExists):
        durable.start_workflow(fan_out, 1, workflow_id="order-1")
    close(first)
    second = durable.start_workflow(fan_out, 1, workflow_id="order-1")
    assert second.run_id != first.run_id
    assert durable.get_workflow("order-1").run_id == second.run_id


def test_reject_duplicate_never_reuses():
    first = durable.start_workflow(fan_out, 1, workflow_id="order-2")
    close(first)
    with pytest.raises(durable.WorkflowAlreadyExists, match="reject_duplicate"):
        durable.start_workflow(fan_out, 1, workflow_id="order-2", id_reuse_policy="reject_duplicate")
    assert WorkflowInstance.objects.filter(workflow_id="order-2").count() == 1


@pytest.mark.parametrize(
    ("previous", "allowed"),
    [(WorkflowStatus.COMPLETED, False), (WorkflowStatus.FAILED, True), (WorkflowStatus.TERMINATED, True)],
)
def test_allow_duplicate_failed_only(previous, allowed):
    close(durable.start_workflow(fan_out, 1, workflow_id="order-3"), previous)
    policy = durable.IdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY
    if allowed:
        durable.start_workflow(fan_out, 1, workflow_id="order-3", id_reuse_policy=policy)
        assert WorkflowInstance.objects.filter(workflow_id="order-3").count() == 2
    else:
        with pytest.raises(durable.WorkflowAlreadyExists):
            durable.start_workflow(fan_out, 1, workflow_id="order-3", id_reuse_policy=policy)


def test_terminate_if_running_replaces_the_running_run():
    first = durable.start_workflow(fan_out, 1, workflow_id="order-4")
    second = durable.start_workflow(fan_out, 2, workflow_id="order-4", id_reuse_policy="terminate_if_running")
    assert durable.WorkflowHandle("order-4", first.run_id).status() == "terminated"
    assert first.history()[-1].kind == "WorkflowTerminated"
    assert second.status() == "pending"


def test_unknown_policy_is_a_clear_error_and_starts_nothing():
    with pytest.raises(ValueError):
        durable.start_workflow(fan_out, 1, workflow_id="order-5", id_reuse_policy="sometimes")
    assert not WorkflowInstance.objects.filter(workflow_id="order-5").exists()


def test_the_api_takes_an_id_reuse_policy(admin_client):
    close(durable.start_workflow(fan_out, 1, workflow_id="order-6"))
    url = "/durable/api/workflows/"
    body = {"workflow": "fan_out", "args": [1], "workflow_id": "order-6", "id_reuse_policy": "reject_duplicate"}
    response = admin_client.post(url, body, content_type="application/json")
    assert response.status_code == 409 and response.json()["code"] == "workflow_already_exists"
    response = admin_client.post(url, {**body, "id_reuse_policy": "bogus"}, content_type="application/json")
    assert response.status_code == 400 and "id_reuse_policy" in response.json()["detail"]
    response = admin_client.post(url, {**body, "id_reuse_policy": "allow_duplicate"}, content_type="application/json")
    assert response.status_code == 201
