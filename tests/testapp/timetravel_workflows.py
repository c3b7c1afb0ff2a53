"""Workflows for tests/test_admin_timetravel.py (the admin's time travel). Names start with ``tt_``."""

from __future__ import annotations

import datetime

import django_durable as durable

__all__ = ["tt_counter", "tt_increment"]


@durable.activity
def tt_increment(n: int) -> int:
    return n + 1


@durable.workflow
def tt_counter(ctx: durable.WorkflowContext, rounds: int) -> int:
    """Counts to ``rounds``, alternately by an activity and by a timer, recording each step."""
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
