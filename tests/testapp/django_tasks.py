"""Functions for Django's Tasks API, run by DurableTaskBackend through real workers."""

from __future__ import annotations

import django_durable.tasks  # noqa: F401  (registers the django_durable.run_task workflow with the workers)

try:
    from django.tasks import task  # type: ignore[import-not-found]
except ImportError:
    from django_tasks import task

from .models import ActivityRun


@task
def add_numbers(a: int, b: int, *, label: str = "sum") -> dict[str, int | str]:
    return {"label": label, "total": a + b}


@task
def record_run(key: str) -> str:
    ActivityRun.objects.create(key=key, attempt=1, pid=0)
    return key


class TaskBoom(Exception):
    pass


@task
def always_fails(key: str) -> None:
    ActivityRun.objects.create(key=key, attempt=1, pid=0)
    raise TaskBoom(f"boom {key}")


@task(takes_context=True)
def reports_attempt(context, key: str) -> int:
    ActivityRun.objects.create(key=key, attempt=context.attempt, pid=0)
    if context.attempt < 2:
        raise ConnectionError("first attempt fails")
    return context.attempt


def plain_record(key: str) -> str:
    """Not a task: django_durable.run_task must refuse to call it (a row would show it was)."""
    ActivityRun.objects.create(key=key, attempt=1, pid=0)
    return key


# A real Task whose dotted path (that of its function) names the plain function above.
plain_record_task = task(plain_record)
