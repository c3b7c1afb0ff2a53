"""Workflows whose activities run on limited queues (flow control): each attempt records
when it started and ended, and its lease's claim time, in a file of its own."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import django_durable as durable


def _log(directory: str, record: dict[str, object]) -> None:
    path = Path(directory) / f"{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(record))


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
