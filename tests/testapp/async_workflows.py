"""Workflows whose activities finish by task token (imported by workflows.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import django_durable as durable

RETRY = durable.RetryPolicy(initial_interval=0.05, maximum_attempts=3)


def _hand_out(folder: str) -> None:
    """What an activity does to 'email' its token: write it where the test can read it."""
    info = durable.activity_info()
    staging = Path(folder, f".token-{info.attempt}")
    staging.write_text(
        json.dumps(
            {"token": info.task_token, "heartbeat_details": info.heartbeat_details, "activity_id": info.activity_id}
        )
    )
    staging.rename(Path(folder, f"token-{info.attempt}"))  # atomic: readers never see half a file


@durable.activity(retry=RETRY)
def ac_request_approval(folder: str) -> None:
    _hand_out(folder)
    raise durable.ResultPending()


@durable.activity(retry=RETRY, start_to_close_timeout=1)
def ac_request_with_deadline(folder: str) -> None:
    _hand_out(folder)
    raise durable.ResultPending()


# Ten times the interval the tests heartbeat at (0.2 s): a loaded machine does not make them miss it.
HEARTBEAT_TIMEOUT = 2.0


@durable.activity(retry=RETRY, heartbeat_timeout=HEARTBEAT_TIMEOUT)
def ac_request_with_heartbeat(folder: str) -> None:
    _hand_out(folder)
    raise durable.ResultPending()


@durable.activity(retry=durable.RetryPolicy(initial_interval=0.05, maximum_attempts=2), heartbeat_timeout=1)
def ac_heartbeating(seconds: float, beat: bool) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if beat:
            durable.heartbeat({"left": deadline - time.monotonic()})
        time.sleep(0.2)
    return "done"


def _outcome(ctx: durable.WorkflowContext, activity, *args) -> dict:
    try:
        return {"result": ctx.call_activity(activity, *args).result()}
    except durable.ActivityError as exc:
        return {"error": {"type": exc.type, "message": exc.message, "attempt": exc.attempt}}


@durable.workflow
def ac_approval(ctx: durable.WorkflowContext, folder: str) -> dict:
    return _outcome(ctx, ac_request_approval, folder)


@durable.workflow
def ac_approval_with_deadline(ctx: durable.WorkflowContext, folder: str) -> dict:
    return _outcome(ctx, ac_request_with_deadline, folder)


@durable.workflow
def ac_approval_with_heartbeat(ctx: durable.WorkflowContext, folder: str) -> dict:
    return _outcome(ctx, ac_request_with_heartbeat, folder)


@durable.workflow
def ac_long_work(ctx: durable.WorkflowContext, seconds: float, beat: bool) -> dict:
    return _outcome(ctx, ac_heartbeating, seconds, beat)


@durable.activity(retry=RETRY, start_to_close_timeout=60)
def ac_request_with_long_deadline(folder: str) -> None:
    _hand_out(folder)
    raise durable.ResultPending()


@durable.workflow
def ac_approval_with_long_deadline(ctx: durable.WorkflowContext, folder: str) -> dict:
    return _outcome(ctx, ac_request_with_long_deadline, folder)


@durable.activity(retry=durable.RetryPolicy(initial_interval=0.05, maximum_attempts=2), heartbeat_timeout=2.0)
def ac_quick_heartbeats(seconds: float) -> int:
    """A heartbeat timeout far shorter than the lease renewal interval (the test's worker
    renews every 10 s), and forty times the interval it heartbeats at."""
    beats = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        durable.heartbeat(beats)
        beats += 1
        time.sleep(0.05)
    return durable.activity_info().attempt


@durable.workflow
def ac_quick_heartbeat_work(ctx: durable.WorkflowContext, seconds: float) -> dict:
    return _outcome(ctx, ac_quick_heartbeats, seconds)
