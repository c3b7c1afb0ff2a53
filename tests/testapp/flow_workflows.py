"""Workflows whose activities run on limited queues (flow control): each attempt records
when it started and ended, and its lease's claim time, in a file of its own
(tests/test_queue_limit_workers.py reads them)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import django_durable as durable


def _log(directory: str, record: dict[str, object], name: str | None = None) -> None:
    """Write ``record`` whole or not at all: a test may read the directory meanwhile."""
    path = Path(directory) / (name or f"{uuid.uuid4().hex}.json")
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(record))
    os.replace(partial, path)


@durable.activity(queue="limited", start_to_close_timeout=60)
def limited_step(directory: str, label: str, seconds: float) -> str:
    """Hold a slot of the queue ``limited`` for ``seconds``, recording the span it held it."""
    info = durable.activity_info()
    start = time.time()
    time.sleep(seconds)
    _log(
        directory,
        {
            "label": label,
            "start": start,
            "end": time.time(),
            "pid": os.getpid(),
            "key": label.split("/")[0],
            "attempt": info.attempt,
            "claimed": info.started_at.timestamp() if info.started_at else None,
            "concurrency_key": info.concurrency_key,
        },
    )
    return label


@durable.workflow
def limited_fan_out(ctx: durable.WorkflowContext, directory: str, labels: list[str], seconds: float) -> list[str]:
    """One attempt per label on the queue ``limited``; a label ``key/n`` runs under the
    concurrency key ``key``, a label without ``/`` under none."""
    tasks = [
        ctx.call_activity(
            limited_step, directory, label, seconds, concurrency_key=label.split("/")[0] if "/" in label else None
        )
        for label in labels
    ]
    return [task.result() for task in tasks]


@durable.activity(queue="limited", start_to_close_timeout=60, retry=durable.RetryPolicy(initial_interval=0.1))
def held_step(directory: str, label: str, release: str) -> str:
    """Hold a slot of the queue ``limited`` until the file ``release`` exists. The attempt
    announces its start in ``started-<label>-<attempt>.json`` (whether ``release`` existed
    then included), and records its span as ``limited_step`` does once released."""
    info = durable.activity_info()
    start = time.time()
    record: dict[str, object] = {
        "label": label,
        "start": start,
        "pid": os.getpid(),
        "attempt": info.attempt,
        "claimed": info.started_at.timestamp() if info.started_at else None,
        "released_before_start": os.path.exists(release),
    }
    _log(directory, record, name=f"started-{label}-{info.attempt}.json")
    deadline = time.monotonic() + 60  # a test that never releases must not hold its worker forever
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    _log(directory, {**record, "end": time.time()})
    return label


@durable.workflow
def held_fan_out(ctx: durable.WorkflowContext, directory: str, labels: list[str], release: str) -> list[str]:
    """One ``held_step`` per label on the queue ``limited``, all held until ``release`` exists."""
    tasks = [ctx.call_activity(held_step, directory, label, release) for label in labels]
    return [task.result() for task in tasks]
