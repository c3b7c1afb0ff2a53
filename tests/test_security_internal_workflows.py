"""Issue 15, 1: the Tasks backend's internal workflow is no way to make a worker call a function.

``django_durable.run_task`` exists only while TASKS configures a DurableTaskBackend, runs only
Task objects of such a backend (checked at enqueue and again by the worker), and no internal
``django_durable.*`` workflow is ever started over HTTP or from the admin.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client, override_settings
from rest_framework.test import APIClient

import django_durable as durable
from django_durable import registry, store
from django_durable import tasks as durable_tasks
from django_durable.checks import check_api_startable_workflows
from django_durable.engine.events import EventKind
from django_durable.exceptions import NotRegistered, WorkflowFailed
from django_durable.executors.workflow_tasks import execute_workflow_task
from django_durable.models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem, WorkItemKind
from tests.conftest import wait_for
from tests.testapp.models import ActivityRun

if durable_tasks.TASKS_API is None:
    pytest.skip("neither django.tasks (Django 6) nor the django-tasks backport is installed", allow_module_level=True)

if durable_tasks.TASKS_API == "django_tasks":
    import django_tasks.signals  # noqa: F401  (resets the backends when TASKS changes; its AppConfig is not installed)

from tests.testapp.django_tasks import plain_record_task, record_run

pytestmark = pytest.mark.database

WORKFLOWS = "/durable/api/workflows/"
ADMIN = "/admin/django_durable/workflowinstance/"
RUN_TASK = "django_durable.run_task"
DURABLE_TASKS = {
    "default": {"BACKEND": "django_durable.tasks.DurableTaskBackend", "QUEUES": ["default", "reports", "elsewhere"]}
}
WITH_BACKEND = override_settings(TASKS=DURABLE_TASKS)
NO_BACKEND = override_settings(TASKS={})
OTHER_BACKEND = {"BACKEND": f"{durable_tasks.TASKS_API}.backends.dummy.DummyBackend"}
# What the security review posted: make a worker run os.system("touch pwned").
EXPLOIT = {"workflow": RUN_TASK, "args": ["os.system", ["touch pwned"], {}, {"retry": {}}]}
NOT_A_TASK = "tests.testapp.django_tasks.plain_record"
UPPER = 60.0


def post_json(client: Any, url: str, data: Any) -> Any:
    return client.generic("POST", url, json.dumps(data), content_type="application/json")


def assert_not_registered(response: Any, name: str) -> None:
    assert response.status_code == 400, (response.status_code, response.content[:500])
    assert json.loads(response.content) == {
        "code": "not_registered",
        "detail": f"No workflow is registered as {name!r}.",
    }


def superuser_api() -> APIClient:
    client = APIClient()
    client.force_login(get_user_model().objects.create_superuser("root", password="pw"))
    return client


def starter_api() -> APIClient:
    """Staff allowed to start workflows (by IsAdminUser, or by the add_ model permission)."""
    user = get_user_model().objects.create_user("starter", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="django_durable",
            codename__in=["view_workflowinstance", "add_workflowinstance"],
        )
    )
    client = APIClient()
    client.force_login(user)
    return client


def run_task_runs() -> int:
    return WorkflowInstance.objects.filter(workflow_name=RUN_TASK).count()


def activity_failures(handle: durable.WorkflowHandle) -> list[dict[str, Any]]:
    """The run's ActivityFailed events: in its history, or still in its inbox when no workflow
    task could take them (a worker without the backend cannot run run_task's code)."""
    return [
        *HistoryEvent.objects.filter(instance__run_id=handle.run_id, kind=EventKind.ACTIVITY_FAILED).values_list(
            "payload", flat=True
        ),
        *InboxEvent.objects.filter(instance__run_id=handle.run_id, kind=EventKind.ACTIVITY_FAILED).values_list(
            "payload", flat=True
        ),
    ]


# -- over HTTP and in the admin: never started, whoever asks -------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("tasks", [WITH_BACKEND, NO_BACKEND], ids=["backend-configured", "no-backend"])
@pytest.mark.parametrize("make_client", [superuser_api, starter_api], ids=["superuser", "staff-starter"])
def test_the_reproduction_is_refused_over_http_and_creates_nothing(tasks, make_client) -> None:
    client = make_client()
    with tasks:
        response = post_json(client, WORKFLOWS, EXPLOIT)
        assert_not_registered(response, RUN_TASK)
        # The same answer as for a name nobody registered.
        assert_not_registered(post_json(client, WORKFLOWS, {"workflow": "no_such_workflow"}), "no_such_workflow")
    assert not WorkflowInstance.objects.exists()


@pytest.mark.django_db
def test_rerunning_a_run_of_an_internal_workflow_is_refused_over_http() -> None:
    with WITH_BACKEND:
        handle = durable.start_workflow(RUN_TASK, "tests.testapp.django_tasks.record_run", ["rr"], {}, {"retry": {}})
        handle.terminate("closed for the test")
        response = post_json(superuser_api(), f"{WORKFLOWS}{handle.workflow_id}/rerun/", {"from_event": 2})
    assert_not_registered(response, RUN_TASK)
    assert run_task_runs() == 1


@pytest.mark.django_db
def test_the_admin_refuses_to_rerun_a_run_of_an_internal_workflow(admin_client: Client) -> None:
    with WITH_BACKEND:
        handle = durable.start_workflow(RUN_TASK, "tests.testapp.django_tasks.record_run", ["ar"], {}, {"retry": {}})
        handle.terminate("closed for the test")
        instance = WorkflowInstance.objects.get(run_id=handle.run_id)
        url = f"{ADMIN}{instance.pk}/actions/rerun/"
        response = admin_client.post(url, {"from_event": "2", "workflow_id": ""})
    assert response.status_code == 302 and response["Location"] == f"{ADMIN}{instance.pk}/change/"
    refusal = (
        f"Cannot rerun workflow {handle.workflow_id!r} (run {handle.run_id}): "
        f"no workflow is registered as {RUN_TASK!r}."
    )
    assert [str(message) for message in get_messages(response.wsgi_request)] == [refusal]
    assert run_task_runs() == 1
    with WITH_BACKEND:
        page = admin_client.get(f"{ADMIN}{instance.pk}/change/")
    assert page.status_code == 200 and url not in page.content.decode()  # not offered either


# -- the allow-list of the start endpoint --------------------------------------------------------


@pytest.mark.django_db
def test_api_startable_workflows_limits_what_http_may_start() -> None:
    client = superuser_api()
    with override_settings(DURABLE={**settings.DURABLE, "API_STARTABLE_WORKFLOWS": ["api_greet"]}):
        assert_not_registered(post_json(client, WORKFLOWS, {"workflow": "sequence", "args": ["al", 1]}), "sequence")
        assert not WorkflowInstance.objects.exists()
        response = post_json(client, WORKFLOWS, {"workflow": "api_greet", "args": ["bob"]})
        assert response.status_code == 201, response.content
    with override_settings(DURABLE={**settings.DURABLE, "API_STARTABLE_WORKFLOWS": [RUN_TASK]}), WITH_BACKEND:
        assert_not_registered(post_json(client, WORKFLOWS, EXPLOIT), RUN_TASK)  # internal: listing it does nothing
    assert list(WorkflowInstance.objects.values_list("workflow_name", flat=True)) == ["api_greet"]


@pytest.mark.engine
@pytest.mark.parametrize("value", ["api_greet", {"api_greet": True}, ["api_greet", 7], 3])
def test_the_check_refuses_an_allow_list_that_is_not_a_list_of_names(value) -> None:
    with override_settings(DURABLE={**settings.DURABLE, "API_STARTABLE_WORKFLOWS": value}):
        assert [message.id for message in check_api_startable_workflows()] == ["django_durable.E008"]


@pytest.mark.engine
@pytest.mark.parametrize("value", [None, [], ["api_greet"], ("api_greet", "sequence")])
def test_the_check_accepts_none_or_a_list_of_names(value) -> None:
    with override_settings(DURABLE={**settings.DURABLE, "API_STARTABLE_WORKFLOWS": value}):
        assert check_api_startable_workflows() == []


# -- from Python: only with the backend configured -----------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("tasks", [NO_BACKEND, override_settings()], ids=["TASKS-empty", "test-settings"])
def test_without_the_backend_run_task_does_not_exist(tasks) -> None:
    with tasks:
        with pytest.raises(NotRegistered, match="exists only while TASKS configures"):
            durable.start_workflow(RUN_TASK, "tests.testapp.django_tasks.record_run", ["np"], {}, {"retry": {}})
        with pytest.raises(NotRegistered):
            registry.get_activity_definition(durable_tasks.ACTIVITY_NAME)
        assert RUN_TASK not in registry.registered_workflows()
    assert not WorkflowInstance.objects.exists()
    with WITH_BACKEND:
        assert registry.get_workflow_definition(RUN_TASK).fn is durable_tasks.run_task


@pytest.mark.django_db
def test_enqueue_refuses_a_task_whose_path_names_something_else() -> None:
    with WITH_BACKEND, pytest.raises(durable_tasks.TaskRefused, match="plain_record"):
        plain_record_task.enqueue("enq")
    with override_settings(TASKS={**DURABLE_TASKS, "other": OTHER_BACKEND}):
        backend = durable_tasks.DurableTaskBackend("rogue", {"QUEUES": [], "OPTIONS": {}})
        with pytest.raises(durable_tasks.TaskRefused, match="'rogue' is not a DurableTaskBackend"):
            backend.enqueue(record_run, ["enq"], {})
    assert not WorkflowInstance.objects.exists()


@pytest.mark.django_db
def test_call_task_refuses_a_task_enqueued_for_another_backend() -> None:
    with override_settings(TASKS={**DURABLE_TASKS, "other": OTHER_BACKEND}):
        with pytest.raises(durable_tasks.TaskRefused, match="'other' is not a DurableTaskBackend"):
            durable_tasks.call_task("tests.testapp.django_tasks.record_run", ["cb"], {}, backend="other")
        with pytest.raises(durable_tasks.TaskRefused, match="Refused to call 'os.system'"):
            durable_tasks.call_task("os.system", ["touch pwned"], {})
    with NO_BACKEND, pytest.raises(durable_tasks.TaskRefused, match="TASKS configures no DurableTaskBackend"):
        durable_tasks.call_task("tests.testapp.django_tasks.record_run", ["cb"], {})
    assert not ActivityRun.objects.exists()


# -- the worker refuses, for good -----------------------------------------------------------------


@pytest.mark.workers
@pytest.mark.parametrize(
    ("target", "options", "refusal"),
    [
        (NOT_A_TASK, {"retry": {}}, f"Refused to call {NOT_A_TASK!r}: it is not a task"),
        (
            "tests.testapp.django_tasks.record_run",
            {"retry": {}, "backend": "elsewhere"},
            "its backend 'elsewhere' is not a DurableTaskBackend",
        ),
    ],
    ids=["not-a-task", "task-of-another-backend"],
)
def test_a_worker_refuses_what_is_not_a_task_of_the_backend(start_worker, target, options, refusal) -> None:
    with WITH_BACKEND:
        handle = durable.start_workflow(RUN_TASK, target, ["refused"], {}, options)
    worker = start_worker(env={"DURABLE_TEST_TASKS": "1"})
    with pytest.raises(WorkflowFailed) as failed:
        handle.result(timeout=UPPER)
    assert refusal in failed.value.message
    [failure] = activity_failures(handle)  # one attempt: neither the activity nor the workflow retried
    assert failure["attempt"] == 1
    assert failure["error"]["type"] == "django_durable.tasks.TaskRefused"
    assert refusal in failure["error"]["message"]
    assert handle.vars()["attempts"] == 1
    assert not ActivityRun.objects.exists()  # never called
    assert "Refused to call" in worker.log()


@pytest.mark.workers
def test_a_worker_without_the_backend_fails_a_run_task_activity_without_importing(start_worker) -> None:
    with WITH_BACKEND:
        handle = durable.start_workflow(RUN_TASK, "tests.testapp.django_tasks.record_run", ["nb"], {}, {"retry": {}})
        [task] = store.claim(owner="test", kind=WorkItemKind.WORKFLOW, queues=["default"], limit=1, lease_seconds=30)
        execute_workflow_task(task)  # schedules django_durable.call_task
    assert WorkItem.objects.filter(kind=WorkItemKind.ACTIVITY, name=durable_tasks.ACTIVITY_NAME).exists()
    start_worker()  # tests.settings: no TASKS
    [failure] = wait_for(lambda: activity_failures(handle), timeout=UPPER, what="the activity to fail")
    assert failure["attempt"] == 1
    assert failure["error"]["type"] == "django_durable.exceptions.NotRegistered"
    assert f"No activity is registered as {durable_tasks.ACTIVITY_NAME!r}" in failure["error"]["message"]
    assert not WorkItem.objects.filter(kind=WorkItemKind.ACTIVITY).exists()  # failed for good, no retry due
    assert not ActivityRun.objects.exists()
