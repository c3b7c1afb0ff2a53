"""Workflows whose activities tests/test_celery.py runs on Celery workers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import django_durable as durable

from .models import ActivityRun

CELERY_RETRY = durable.RetryPolicy(initial_interval=0.05, maximum_interval=0.2, maximum_attempts=10)


@durable.activity(retry=CELERY_RETRY)
def celery_record(key: str, seconds: float = 0.0) -> int:
    """Records its run (pid, attempt), sleeps ``seconds``, and returns its pid."""
    ActivityRun.objects.create(key=key, attempt=durable.activity_info().attempt, pid=os.getpid())
    time.sleep(seconds)
    ActivityRun.objects.create(key=f"{key}:done", attempt=durable.activity_info().attempt, pid=os.getpid())
    return os.getpid()


@durable.activity(retry=CELERY_RETRY)
def celery_block_once(key: str, flag: str) -> int:
    """The first attempt writes ``flag`` and blocks (the test kills its worker); later ones return."""
    ActivityRun.objects.create(key=key, attempt=durable.activity_info().attempt, pid=os.getpid())
    if durable.activity_info().attempt == 1:
        Path(flag).write_text(str(os.getpid()))
        time.sleep(300)
    return os.getpid()


@durable.workflow
def celery_sequence(ctx: durable.WorkflowContext, key: str) -> list[int]:
    first = ctx.call_activity(celery_record, f"{key}:1").result()
    second = ctx.call_activity(celery_record, f"{key}:2").result()
    return [first, second]


@durable.workflow
def celery_fan_out(ctx: durable.WorkflowContext, key: str, count: int, seconds: float) -> list[int]:
    tasks = [ctx.call_activity(celery_record, f"{key}:{index}", seconds) for index in range(count)]
    return ctx.wait_all(tasks)


@durable.workflow
def celery_survives_kill(ctx: durable.WorkflowContext, key: str, flag: str) -> int:
    return ctx.call_activity(celery_block_once, key, flag).result()
