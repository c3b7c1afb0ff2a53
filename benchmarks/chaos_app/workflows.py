"""The chaos soak's workflows: activities in sequence and in parallel, timers, signals,
child workflows, activities finished later by task token, retries and continue-as-new.

Every activity records each execution (``Effect``: its key and attempt) before it
returns, so the checker can hold side effects against attempts; every workflow's
result is a pure function of its input (and of the signal the driver sends), so the
driver knows what each must return: ``expected_result()``.
"""

from __future__ import annotations

import os
from typing import Any

import django_durable as durable

from .models import Effect, HandedOut

# Unlimited, quick retries: a killed worker's attempt counts as failed, and the chaos
# must never exhaust a retry policy.
RETRY = durable.RetryPolicy(initial_interval=0.05, maximum_interval=0.5, maximum_attempts=0)


def _record(key: str) -> int:
    attempt = durable.activity_info().attempt
    Effect.objects.create(key=key, attempt=attempt, pid=os.getpid())
    return attempt


@durable.activity(retry=RETRY)
def chaos_double(key: str, value: int) -> int:
    _record(key)
    return 2 * value


@durable.activity(retry=RETRY)
def chaos_flaky(key: str, fail_times: int) -> int:
    """Fails its first ``fail_times`` attempts."""
    if _record(key) <= fail_times:
        raise ConnectionError(f"{key}: the service is down")
    return fail_times


@durable.activity(retry=RETRY)
def chaos_hand_off(key: str) -> None:
    """Hands its task token to the driver, which finishes it later (``complete_activity``)."""
    attempt = _record(key)
    HandedOut.objects.create(key=key, attempt=attempt, token=durable.activity_info().task_token)
    raise durable.ResultPending()


@durable.workflow
def chaos_chain(ctx: durable.WorkflowContext, key: str, n: int) -> int:
    return sum(ctx.call_activity(chaos_double, f"{key}:{i}", i).result() for i in range(n))


@durable.workflow
def chaos_fan(ctx: durable.WorkflowContext, key: str, n: int) -> list[int]:
    return ctx.wait_all([ctx.call_activity(chaos_double, f"{key}:{i}", i) for i in range(n)])


@durable.workflow
def chaos_timer(ctx: durable.WorkflowContext, key: str, seconds: float) -> int:
    ctx.sleep(seconds)
    return ctx.call_activity(chaos_double, f"{key}:after", 21).result()


@durable.workflow
def chaos_signal(ctx: durable.WorkflowContext, key: str) -> Any:
    payload = ctx.wait_for_event("go")
    ctx.call_activity(chaos_double, f"{key}:after", 1).result()
    return payload


@durable.workflow
def chaos_parent(ctx: durable.WorkflowContext, key: str, n: int) -> list[int]:
    children = [ctx.call_workflow(chaos_chain, f"{key}/c{i}", 2, workflow_id=f"{key}/c{i}") for i in range(n)]
    return ctx.wait_all(children)


@durable.workflow
def chaos_approval(ctx: durable.WorkflowContext, key: str) -> Any:
    return ctx.call_activity(chaos_hand_off, key).result()


@durable.workflow
def chaos_retry(ctx: durable.WorkflowContext, key: str, fail_times: int) -> int:
    return ctx.call_activity(chaos_flaky, key, fail_times).result()


@durable.workflow
def chaos_rounds(ctx: durable.WorkflowContext, key: str, rounds: int, done: int = 0) -> int:
    ctx.call_activity(chaos_double, f"{key}:r{done}", done).result()
    if done + 1 < rounds:
        ctx.continue_as_new(key, rounds, done + 1)
    return done + 1


def approval_result(key: str) -> dict[str, Any]:
    """What the driver completes a ``chaos_approval``'s activity with."""
    return {"approved": key}


def signal_payload(key: str) -> dict[str, Any]:
    return {"go": key}


def expected_result(kind: str, key: str, arg: int) -> Any:
    """What a workflow of ``kind`` started by the driver with ``(key, arg)`` must return."""
    if kind == "chain":
        return sum(2 * i for i in range(arg))
    if kind == "fan":
        return [2 * i for i in range(arg)]
    if kind == "timer":
        return 42
    if kind == "signal":
        return signal_payload(key)
    if kind == "parent":
        return [2] * arg  # each child: chaos_chain(.., 2) = 0 + 2
    if kind == "approval":
        return approval_result(key)
    if kind == "retry":
        return arg
    if kind == "rounds":
        return arg
    raise ValueError(f"unknown chaos workflow kind {kind!r}")


WORKFLOWS = {
    "chain": chaos_chain,
    "fan": chaos_fan,
    "timer": chaos_timer,
    "signal": chaos_signal,
    "parent": chaos_parent,
    "approval": chaos_approval,
    "retry": chaos_retry,
    "rounds": chaos_rounds,
}
