"""The benchmark's workflows: K no-op activities, in sequence or fanned out."""

from __future__ import annotations

import time

import django_durable as durable


@durable.activity
def bench_noop() -> float:
    """Does nothing but report when it started (wall clock, seconds since the epoch).

    The harness reads the value back from the ``ActivityCompleted`` event to
    compute schedule-to-start latency; nothing else is written.
    """
    return time.time()


@durable.workflow
def bench_sequence(ctx: durable.WorkflowContext, steps: int) -> int:
    for _ in range(steps):
        ctx.call_activity(bench_noop).result()
    return steps


@durable.workflow
def bench_fanout(ctx: durable.WorkflowContext, steps: int) -> int:
    ctx.wait_all([ctx.call_activity(bench_noop) for _ in range(steps)])
    return steps
