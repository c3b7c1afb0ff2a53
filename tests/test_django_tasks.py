"""Django's Tasks API on DurableTaskBackend: tasks run as durable workflows by real workers."""

from __future__ import annotations

import datetime

import pytest
from django.core import checks
from django.test import override_settings
from django.utils import timezone

import django_durable as durable
from django_durable import tasks as durable_tasks
from tests.conftest import wait_for

if durable_tasks.TASKS_API is None:
    pytest.skip("neither django.tasks (Django 6) nor the django-tasks backport is installed", allow_module_level=True)

if durable_tasks.TASKS_API == "django_tasks":
    import django_tasks.signals  # noqa: F401  (resets the backends when TASKS changes; its AppConfig is not installed)
    from django_tasks import TaskResultStatus, task_backends
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist
else:
    from django.tasks import TaskResultStatus, task_backends  # type: ignore[import-not-found]
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist  # type: ignore[import-not-found]

from django_durable.models import WorkflowInstance
from tests.testapp.django_tasks import (
    TaskBoom,
    add_numbers,
    always_fails,
    record_run,
    reports_attempt,
)
from tests.testapp.models import ActivityRun

BACKEND = {
    "BACKEND": "django_durable.tasks.DurableTaskBackend",
    "QUEUES": ["default", "reports", "elsewhere"],
    "OPTIONS": {
        "RETRY": {"initial_interval": 0.05, "maximum_attempts": 2},
        "QUEUE_MAP": {"reports": "durable-reports"},
    },
}

pytestmark = [pytest.mark.usefixtures("durable_tasks_backend"), pytest.mark.workers]


@pytest.fixture
def durable_tasks_backend():
    with override_settings(TASKS={"default": BACKEND}):
        yield task_backends["default"]


@pytest.fixture
def start_worker(start_worker):
    """Workers with a DurableTaskBackend in TASKS (tests/settings.py), without which they run no task."""

    def start(**kwargs):
        return start_worker(**{**kwargs, "env": {**kwargs.get("env", {}), "DURABLE_TEST_TASKS": "1"}})

    return start


def finished(result) -> bool:
    result.refresh()
    return result.is_finished


def test_enqueue_runs_on_a_worker_and_refresh_gives_the_return_value(start_worker) -> None:
    result = add_numbers.enqueue(2, 3, label="five")
    assert result.status == TaskResultStatus.READY
    assert result.id == durable.get_workflow(result.id).workflow_id
    start_worker(batch=True)
    wait_for(lambda: finished(result), what="the task to finish")
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"label": "five", "total": 5}
    assert result.errors == []
    assert result.attempts == 1
    assert result.args == [2, 3] and result.kwargs == {"label": "five"}
    assert result.started_at is not None and result.finished_at is not None
    fetched = add_numbers.get_result(result.id)
    assert fetched.status == TaskResultStatus.SUCCESSFUL
    assert fetched.return_value == {"label": "five", "total": 5}
    assert durable.get_workflow(result.id).describe().workflow_name == "django_durable.run_task"


def test_failing_task_is_retried_then_failed_with_each_error(start_worker) -> None:
    result = always_fails.enqueue("f1")
    start_worker()  # not --batch: that exits while the retry's backoff timer is pending
    wait_for(lambda: finished(result), what="the task to fail")
    assert result.status == TaskResultStatus.FAILED
    assert ActivityRun.objects.filter(key="f1").count() == 2  # OPTIONS RETRY maximum_attempts
    assert len(result.errors) == 2
    assert result.errors[-1].exception_class is TaskBoom
    assert "boom f1" in result.errors[-1].traceback
    with pytest.raises(ValueError):
        result.return_value  # noqa: B018


def test_context_sees_the_attempt_number(start_worker) -> None:
    result = reports_attempt.enqueue("ctx")
    start_worker()
    wait_for(lambda: finished(result), what="the task to finish")
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 2
    assert list(ActivityRun.objects.filter(key="ctx").values_list("attempt", flat=True).order_by("pk")) == [1, 2]
    assert result.errors[0].exception_class is ConnectionError


def test_run_after_is_respected(start_worker) -> None:
    run_after = timezone.now() + datetime.timedelta(seconds=3)
    result = record_run.using(run_after=run_after).enqueue("later")
    assert durable.get_workflow(result.id).describe().scheduled_start_at == run_after
    worker = start_worker()  # not --batch: nothing is due yet
    wait_for(lambda: "started on queues" in worker.log(), what="the worker to start")
    result.refresh()
    ran = ActivityRun.objects.filter(key="later").exists()
    if timezone.now() < run_after:  # read before run_after: a serving worker had to leave it alone
        assert result.status == TaskResultStatus.READY and not ran
    wait_for(lambda: finished(result), what="the deferred task to run")
    assert result.status == TaskResultStatus.SUCCESSFUL
    # Nothing of it ran before run_after, however late the check above came.
    assert durable.get_workflow(result.id).describe().started_at >= run_after
    assert ActivityRun.objects.get(key="later").created_at >= run_after


def test_queue_name_is_mapped_to_a_durable_queue(start_worker) -> None:
    result = record_run.using(queue_name="reports").enqueue("queued")
    assert durable.get_workflow(result.id).describe().queue == "durable-reports"
    elsewhere = start_worker(batch=True, queues="default,reports")
    assert elsewhere.wait(60) == 0, elsewhere.log()  # --batch: gone once nothing on its queues is due
    result.refresh()
    assert result.status == TaskResultStatus.READY
    assert not ActivityRun.objects.filter(key="queued").exists()
    start_worker(batch=True, queues="durable-reports")
    wait_for(lambda: finished(result), what="the task on its queue")
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.task.queue_name == "reports"


@pytest.mark.database
@pytest.mark.django_db
def test_invalid_calls_are_rejected_at_enqueue() -> None:
    with pytest.raises(TypeError, match="cannot be called"):
        add_numbers.enqueue(1)
    with pytest.raises(TypeError, match="cannot be called"):
        add_numbers.enqueue(1, 2, colour="red")
    with pytest.raises(TypeError, match="plain JSON"):
        add_numbers.enqueue(1, object())
    with pytest.raises(TypeError, match="plain JSON"):
        add_numbers.enqueue(1, timezone.now())
    with pytest.raises(InvalidTask):
        record_run.using(queue_name="unknown")
    with pytest.raises(InvalidTask):
        record_run.using(priority=5)  # the engine has no priorities; ACCEPT_PRIORITY opts in
    assert not WorkflowInstance.objects.exists()


@pytest.mark.database
@pytest.mark.django_db
def test_priority_is_recorded_when_accepted() -> None:
    with override_settings(TASKS={"default": {**BACKEND, "OPTIONS": {"ACCEPT_PRIORITY": True}}}):
        result = record_run.using(priority=7).enqueue("p")
        assert durable.get_workflow(result.id).describe().args[3]["priority"] == 7
        assert task_backends["default"].get_result(result.id).task.priority == 7


@pytest.mark.database
@pytest.mark.django_db
def test_unknown_result_id() -> None:
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result("no-such-task")


@pytest.mark.engine
def test_check_warns_when_the_tasks_api_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert durable_tasks.check_tasks_backend() == []
    monkeypatch.setattr(durable_tasks, "TASKS_API", None)
    messages = durable_tasks.check_tasks_backend()
    assert [m.id for m in messages] == ["django_durable.W020"]
    assert isinstance(messages[0], checks.Warning)
    with override_settings(TASKS={"default": {"BACKEND": "somewhere.Else"}}):
        assert durable_tasks.check_tasks_backend() == []
