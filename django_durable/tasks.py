"""A backend for Django's Tasks API that runs each task as a durable workflow.

    TASKS = {"default": {"BACKEND": "django_durable.tasks.DurableTaskBackend"}}

Uses ``django.tasks`` (Django 6+) or, on Django 5.2, the ``django-tasks`` backport.
Importing this module also registers the ``django_durable.run_task`` workflow and its
activity, which exist only while ``TASKS`` configures this backend (``tasks_backend_configured``)
and run nothing but the Task objects of such a backend (``runnable_task``).
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
from typing import Any

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

import django_durable as durable

from . import registry
from .engine.failures import qualified_name
from .exceptions import ActivityError, DurableError, SerializationError, WorkflowNotFound
from .retry import RetryPolicy

try:
    from django.tasks import TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskContext, TaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued

    TASKS_API: str | None = "django.tasks"
except ImportError:
    try:
        # The backport's classes are not django.tasks' to mypy, which checks against the latter.
        from django_tasks import TaskResult, TaskResultStatus  # type: ignore[assignment]
        from django_tasks.backends.base import BaseTaskBackend  # type: ignore[assignment]
        from django_tasks.base import Task, TaskContext, TaskError  # type: ignore[assignment]
        from django_tasks.exceptions import TaskResultDoesNotExist  # type: ignore[assignment]
        from django_tasks.signals import task_enqueued

        TASKS_API = "django_tasks"
    except ImportError:
        TASKS_API = None

WORKFLOW_NAME = "django_durable.run_task"
ACTIVITY_NAME = "django_durable.call_task"
BACKEND_PATH = "django_durable.tasks.DurableTaskBackend"
DEFAULT_RETRY = RetryPolicy(initial_interval=1.0, maximum_attempts=3)

# The workflow retries (so each attempt's error is kept for TaskResult.errors):
# the activity itself must not.
_SINGLE_ATTEMPT = RetryPolicy(maximum_attempts=1)


class TaskRefused(DurableError):
    """What a run of ``django_durable.run_task`` names is not a task a DurableTaskBackend of
    ``TASKS`` runs: it is not called, and the run fails without a retry."""

    status_code = 400
    default_detail = "Not a task of a configured DurableTaskBackend."
    default_code = "task_refused"


def durable_backend_aliases() -> list[str]:
    """The aliases of ``settings.TASKS`` whose backend is a DurableTaskBackend (or a subclass),
    read from the settings of the moment."""
    configured = getattr(settings, "TASKS", None)
    if not isinstance(configured, dict):
        return []
    return sorted(
        alias
        for alias, params in configured.items()
        if isinstance(params, dict) and _is_durable_backend(params.get("BACKEND"))
    )


def _is_durable_backend(path: Any) -> bool:
    if path == BACKEND_PATH:
        return True
    if not isinstance(path, str):
        return False
    try:
        backend = import_string(path)
    except ImportError:
        return False
    return isinstance(backend, type) and issubclass(backend, DurableTaskBackend)


def tasks_backend_configured() -> bool:
    """Whether ``django_durable.run_task`` and its activity exist now: the Tasks API is
    importable and ``TASKS`` configures a DurableTaskBackend."""
    return TASKS_API is not None and bool(durable_backend_aliases())


def runnable_task(module_path: Any, backend: Any = None) -> Any:
    """The Task object ``module_path`` names, if a DurableTaskBackend of ``TASKS`` runs it
    (``backend``: the alias it was enqueued with; by default the task's own). Anything else
    raises TaskRefused, before it is called."""
    if not isinstance(module_path, str):
        raise TaskRefused(f"A task is named by its dotted path, not by {module_path!r}.")
    aliases = durable_backend_aliases()
    if TASKS_API is None or not aliases:
        raise TaskRefused(f"Refused to call {module_path!r}: TASKS configures no DurableTaskBackend.")
    target = import_string(module_path)
    if not isinstance(target, Task):
        raise TaskRefused(
            f"Refused to call {module_path!r}: it is not a task of Django's Tasks API (a function "
            "decorated with @task), and django_durable.run_task runs nothing else."
        )
    alias = target.backend if backend is None else backend
    if alias not in aliases:
        raise TaskRefused(
            f"Refused to call task {module_path!r}: its backend {alias!r} is not a DurableTaskBackend "
            f"in TASKS (those are: {', '.join(map(repr, aliases)) or 'none'})."
        )
    return target


@durable.activity(name=ACTIVITY_NAME, retry=_SINGLE_ATTEMPT)
def call_task(
    module_path: str, args: list[Any], kwargs: dict[str, Any], attempt: int = 1, backend: str | None = None
) -> Any:
    target = runnable_task(module_path, backend)
    func = target.func
    if target.takes_context:
        info = durable.activity_info()
        result: TaskResult[Any, Any] = TaskResult(
            task=target,
            id=info.workflow_id,
            status=TaskResultStatus.RUNNING,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=target.backend if backend is None else backend,
            errors=[],
            worker_ids=[_worker_id(n) for n in range(1, attempt + 1)],
        )
        args = [TaskContext(task_result=result), *args]
    if hasattr(target, "call"):
        return target.call(*args, **kwargs)  # runs async task functions too
    return func(*args, **kwargs)


@durable.workflow(name=WORKFLOW_NAME)
def run_task(
    ctx: durable.WorkflowContext, module_path: str, args: list[Any], kwargs: dict[str, Any], task: dict[str, Any]
) -> Any:
    policy = RetryPolicy.from_json(task["retry"])
    errors: list[dict[str, str]] = []
    attempt = 1
    while True:
        ctx.set_var("attempts", attempt)
        ctx.set_var("last_attempted_at", ctx.now().isoformat())
        try:
            return ctx.call_activity(
                ACTIVITY_NAME, module_path, args, kwargs, attempt=attempt, backend=task.get("backend")
            ).result()
        except ActivityError as error:
            errors.append({"exception_class_path": _exception_path(error.type), "traceback": error.traceback})
            ctx.set_var("errors", errors)
            # A result that cannot be stored, or a refused target, would fail the same way again.
            if error.type in _FINAL_ERRORS or not policy.allows_retry(attempt, error.type):
                raise
            ctx.sleep(policy.delay(attempt))
            attempt += 1


_FINAL_ERRORS = {qualified_name(SerializationError), qualified_name(TaskRefused)}
_NOT_CONFIGURED = f"It exists only while TASKS configures {BACKEND_PATH}."
registry.exists_only_when("workflow", WORKFLOW_NAME, tasks_backend_configured, hint=_NOT_CONFIGURED)
registry.exists_only_when("activity", ACTIVITY_NAME, tasks_backend_configured, hint=_NOT_CONFIGURED)


def _exception_path(error_type: str) -> str:
    # Durable records builtins by bare name; TaskError wants an importable path.
    return error_type if "." in error_type else f"builtins.{error_type or 'Exception'}"


def _worker_id(attempt: int) -> str:
    # Durable does not record which worker process ran an attempt; one entry per
    # attempt keeps TaskResult.attempts right.
    return f"django-durable:attempt-{attempt}"


# Workflow status -> TaskResultStatus (strings: this module is importable before the ORM is ready).
_STATUS = {
    "pending": "READY",
    "suspended": "READY",
    "running": "RUNNING",
    "completed": "SUCCESSFUL",
    "failed": "FAILED",
    "canceled": "FAILED",
    "terminated": "FAILED",
    "continued_as_new": "RUNNING",
}


def _retry_policy(value: Any) -> RetryPolicy:
    if value is None:
        return DEFAULT_RETRY
    if isinstance(value, RetryPolicy):
        return value
    return RetryPolicy(**value)


if TASKS_API is not None:

    class DurableTaskBackend(BaseTaskBackend):
        """Each enqueued task is a ``django_durable.run_task`` workflow run; its id is the result id.

        OPTIONS: ``RETRY`` (a RetryPolicy or its keyword arguments; default 3 attempts),
        ``QUEUE_MAP`` (task queue name -> durable queue; unmapped names are used as they are),
        ``ACCEPT_PRIORITY`` (record a task's priority instead of rejecting it; durable
        workers do not order work by priority).
        """

        supports_defer = True
        supports_async_task = True
        supports_get_result = True

        def __init__(self, alias: str, params: dict[str, Any]) -> None:
            super().__init__(alias, params)
            self.retry = _retry_policy(self.options.get("RETRY"))
            self.queue_map: dict[str, str] = dict(self.options.get("QUEUE_MAP", {}))
            self.supports_priority = bool(self.options.get("ACCEPT_PRIORITY", False))

        def durable_queue(self, queue_name: str) -> str:
            return self.queue_map.get(queue_name, queue_name)

        def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
            self.validate_task(task)
            runnable_task(task.module_path, self.alias)
            _check_arguments(task, args, kwargs)
            handle = durable.start_workflow(
                WORKFLOW_NAME,
                task.module_path,
                list(args),
                dict(kwargs),
                {
                    "retry": self.retry.to_json(),
                    "priority": task.priority,
                    "queue_name": task.queue_name,
                    "backend": self.alias,
                },
                queue=self.durable_queue(task.queue_name),
                start_at=task.run_after,
            )
            result = self.get_result(handle.workflow_id)
            task_enqueued.send(type(self), task_result=result)
            return result

        def get_result(self, result_id: str) -> Any:
            try:
                description = durable.get_workflow(str(result_id)).describe()
            except WorkflowNotFound:
                raise TaskResultDoesNotExist(result_id) from None
            if description.workflow_name != WORKFLOW_NAME:
                raise TaskResultDoesNotExist(result_id)
            module_path, args, kwargs, options = description.args
            task = import_string(module_path)
            task = dataclasses.replace(
                task,
                queue_name=options["queue_name"],
                priority=options["priority"],
                backend=self.alias,
                run_after=description.scheduled_start_at,
            )
            variables = description.vars
            attempts = int(variables.get("attempts", 0))
            last_attempted = variables.get("last_attempted_at")
            status = _STATUS[description.status]
            if status == "RUNNING" and not attempts:
                status = "READY"
            result: TaskResult[Any, Any] = TaskResult(
                task=task,
                id=description.workflow_id,
                status=TaskResultStatus(status),
                enqueued_at=description.created_at,
                started_at=description.started_at,
                finished_at=description.closed_at,
                last_attempted_at=datetime.datetime.fromisoformat(last_attempted) if last_attempted else None,
                args=args,
                kwargs=kwargs,
                backend=self.alias,
                errors=[TaskError(**error) for error in variables.get("errors", [])],
                worker_ids=[_worker_id(n) for n in range(1, attempts + 1)],
            )
            if status == "SUCCESSFUL":
                object.__setattr__(result, "_return_value", description.result)
            elif status == "FAILED" and not result.errors and description.error:
                # Terminated or canceled before any attempt failed.
                error = description.error
                result.errors.append(
                    TaskError(
                        exception_class_path=_exception_path(error.get("type", "")),
                        traceback=error.get("traceback") or error.get("message", ""),
                    )
                )
            return result

else:

    class DurableTaskBackend:  # type: ignore[no-redef]
        """Stand-in so the import path resolves; the system check explains what is missing."""

        def __init__(self, alias: str, params: dict[str, Any]) -> None:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                "DurableTaskBackend needs django.tasks (Django 6+) or the django-tasks backport."
            )


def _check_arguments(task: Any, args: Any, kwargs: Any) -> None:
    """Reject a call that could never succeed now, not after a worker picked it up."""
    signature = inspect.signature(task.func)
    call_args = (None, *args) if task.takes_context else tuple(args)
    try:
        signature.bind(*call_args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"Task {task.module_path} cannot be called with these arguments: {exc}") from None
    try:
        # Plain JSON, as Django's TaskResult requires (the data converter may allow more).
        json.dumps([list(args), dict(kwargs)], allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"The arguments of task {task.module_path} must be plain JSON: {exc}") from None


# The system check lives here so that registering it needs only this module imported.
@checks.register()
def check_tasks_backend(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if TASKS_API is not None:
        return []
    aliases = durable_backend_aliases()
    if not aliases:
        return []
    return [
        checks.Warning(
            f"TASKS[{aliases[0]!r}] uses {BACKEND_PATH}, but neither django.tasks (Django 6+) nor the "
            "django-tasks backport is importable, so the backend is not offered.",
            hint="Upgrade to Django 6, or pip install 'django-durable[tasks]' (the django-tasks backport).",
            id="django_durable.W020",
        )
    ]
