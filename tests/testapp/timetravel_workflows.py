"""Workflows for tests/test_admin_timetravel*.py (the admin's time travel). Names start with ``tt_``."""

from __future__ import annotations

import collections
import datetime
import threading

import django_durable as durable
from django_durable.models import WorkflowInstance

__all__ = ["tt_counter", "tt_guarded", "tt_increment"]

# How many times each workflow's code started (a worker's task or a replay), by workflow name.
STARTS: collections.Counter[str] = collections.Counter()
# What tt_guarded's code does before its first durable call; tests set it once the run has
# its history, so that only replays do it: "nothing", "block" (on RELEASE, 20 s at most) or "query".
GUARDED_MISCHIEF = "nothing"
RELEASE = threading.Event()


@durable.activity
def tt_increment(n: int) -> int:
    return n + 1


@durable.workflow
def tt_counter(ctx: durable.WorkflowContext, rounds: int) -> int:
    """Counts to ``rounds``, alternately by an activity and by a timer, recording each step."""
    STARTS["tt_counter"] += 1
    counter = 0
    ctx.set_var("counter", counter)
    for step in range(rounds):
        if step % 2 == 0:
            counter = ctx.call_activity(tt_increment, counter).result()
        else:
            ctx.sleep(datetime.timedelta(hours=1))
            counter += 1
        ctx.set_var("counter", counter)
    ctx.set_var("done", True)
    return counter


@durable.workflow
def tt_guarded(ctx: durable.WorkflowContext, steps: int) -> int:
    """Counts ``steps`` activities; on replay, does what ``GUARDED_MISCHIEF`` says first."""
    STARTS["tt_guarded"] += 1
    ctx.set_var("step", 0)
    if GUARDED_MISCHIEF == "block":
        RELEASE.wait(20)  # a blocking call in workflow code, as time.sleep(20) would be
    elif GUARDED_MISCHIEF == "query":
        ctx.set_var("runs", WorkflowInstance.objects.count())
    for step in range(steps):
        ctx.call_activity(tt_increment, step).result()
        ctx.set_var("step", step + 1)
    return steps
