"""Workflows and activities the test suite runs through real workers."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import django_durable as durable

from . import django_tasks as _django_tasks  # noqa: F401  (Django Tasks API functions)
from .actions_workflows import *  # noqa: F403
from .api_control_workflows import *  # noqa: F403
from .async_workflows import *  # noqa: F403  (registers them with the workers)
from .browser_workflows import *  # noqa: F403
from .celery_workflows import *  # noqa: F403
from .dashboard_workflows import *  # noqa: F403
from .flow_workflows import *  # noqa: F403
from .inspect_workflows import *  # noqa: F403
from .models import ActivityRun
from .orchestration_workflows import *  # noqa: F403
from .schedule_workflows import *  # noqa: F403
from .testing_workflows import *  # noqa: F403
from .timetravel_workflows import *  # noqa: F403
from .versioning_workflows import *  # noqa: F403
from .worker_orchestration_workflows import *  # noqa: F403

FAST_RETRY = durable.RetryPolicy(initial_interval=0.05, maximum_interval=0.2, maximum_attempts=5)


@dataclasses.dataclass
class Money:
    amount: int
    currency: str


def _record(key: str) -> None:
    ActivityRun.objects.create(key=key, attempt=durable.activity_info().attempt, pid=os.getpid())


@durable.activity
def add(a: int, b: int) -> int:
    return a + b


@durable.activity
def record(key: str) -> str:
    _record(key)
    return key


@durable.activity(retry=FAST_RETRY)
def flaky(key: str, fail_times: int) -> int:
    _record(key)
    attempt = durable.activity_info().attempt
    if attempt <= fail_times:
        raise ConnectionError(f"attempt {attempt} failed")
    return attempt


@durable.activity(
    retry=durable.RetryPolicy(initial_interval=0.05, maximum_attempts=5, non_retryable_errors=("ValueError",))
)
def rejects(key: str) -> None:
    _record(key)
    raise ValueError("card declined")


@durable.activity(retry=durable.RetryPolicy(initial_interval=0.05, maximum_attempts=2))
def always_fails(key: str) -> None:
    _record(key)
    raise RuntimeError("boom")


@durable.activity(start_to_close_timeout=30, retry=FAST_RETRY)
def slow(key: str, seconds: float, started_file: str = "") -> str:
    """Records itself, signals that it started (a file), then works ``seconds``."""
    _record(key)
    if started_file:
        Path(started_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    _record(key + ":done")
    return key


@durable.activity(start_to_close_timeout=1, retry=durable.RetryPolicy(initial_interval=0.05, maximum_attempts=2))
def too_slow(key: str) -> str:
    _record(key)
    time.sleep(3)
    return key


@durable.activity
def double_money(money: Money) -> Money:
    return Money(money.amount * 2, money.currency)


@durable.activity
def unserialisable() -> object:
    return object()


@durable.workflow
def fan_out(ctx: durable.WorkflowContext, n: int) -> list[int]:
    tasks = [ctx.call_activity(add, i, i) for i in range(n)]
    return ctx.wait_all(tasks)


@durable.workflow
def sequence(ctx: durable.WorkflowContext, key: str, n: int) -> int:
    for i in range(n):
        ctx.call_activity(record, f"{key}:{i}").result()
        ctx.set_var("done", i + 1)
    return n


@durable.workflow
def retrying(ctx: durable.WorkflowContext, key: str, fail_times: int) -> int:
    return ctx.call_activity(flaky, key, fail_times).result()


@durable.workflow
def giving_up(ctx: durable.WorkflowContext, key: str) -> dict:
    outcome = {}
    for name, activity in (("always_fails", always_fails), ("rejects", rejects)):
        try:
            ctx.call_activity(activity, f"{key}:{name}").result()
        except durable.ActivityError as exc:
            outcome[name] = {"type": exc.type, "message": exc.message, "attempt": exc.attempt}
    return outcome


@durable.workflow
def fails_unhandled(ctx: durable.WorkflowContext, key: str) -> None:
    ctx.call_activity(always_fails, key).result()


@durable.workflow
def sleeper(ctx: durable.WorkflowContext, seconds: float) -> dict:
    before = ctx.now()
    ctx.sleep(seconds)
    after = ctx.now()
    ctx.sleep_until(after)
    return {"before": before.isoformat(), "after": after.isoformat(), "slept": (after - before).total_seconds()}


@durable.workflow
def race(ctx: durable.WorkflowContext, key: str, work_seconds: float, timeout: float) -> str:
    work = ctx.call_activity(slow, key, work_seconds)
    timer = ctx.timer(timeout)
    return "work" if ctx.wait_any([work, timer]) is work else "timer"


@durable.workflow
def one_slow(ctx: durable.WorkflowContext, key: str, seconds: float, started_file: str) -> str:
    return ctx.call_activity(slow, key, seconds, started_file).result()


@durable.workflow
def times_out(ctx: durable.WorkflowContext, key: str) -> str:
    try:
        return ctx.call_activity(too_slow, key).result()
    except durable.ActivityError as exc:
        return f"{exc.type}: {exc.message}"


@durable.workflow
def deterministic(ctx: durable.WorkflowContext) -> dict:
    values = {
        "now": ctx.now().isoformat(),
        "started_at": ctx.started_at.isoformat(),
        "random": ctx.random(),
        "uuid": str(ctx.uuid4()),
    }
    ctx.set_var("first", values)
    ctx.call_activity(add, 1, 1).result()
    values["random_after"] = ctx.random()
    return values


@durable.workflow
def money(ctx: durable.WorkflowContext, amount: Money) -> Money:
    doubled = ctx.call_activity(double_money, amount).result()
    assert isinstance(doubled, Money)
    return doubled


@durable.workflow
def bad_result(ctx: durable.WorkflowContext) -> str:
    try:
        ctx.call_activity(unserialisable).result()
    except durable.ActivityError as exc:
        return exc.message
    return "unexpected"


@durable.workflow
def bad_argument(ctx: durable.WorkflowContext) -> str:
    try:
        ctx.call_activity(add, object(), 1)
    except durable.SerializationError as exc:
        return str(exc)
    return "unexpected"


@durable.workflow
def crasher(ctx: durable.WorkflowContext) -> str:
    raise SystemExit("workflow code called sys.exit()")


@durable.workflow
def blocks_without_a_durable_call(ctx: durable.WorkflowContext, seconds: float) -> str:
    """A bug: workflow code that blocks (a network call, a sleep) instead of using an activity."""
    import time

    time.sleep(seconds)  # the bug under test
    return "woke"


@durable.workflow
def queries_the_database(ctx: durable.WorkflowContext, swallow: bool) -> int:
    """A bug: workflow code that reads the database (and maybe hides the error)."""
    from django.contrib.auth import get_user_model

    try:
        return get_user_model().objects.count()
    except Exception:
        if not swallow:
            raise
        return -1


@durable.workflow
def versioned(ctx: durable.WorkflowContext, key: str, wait: float) -> str:
    """Its code changes between two workers in a test (see DURABLE_TEST_VERSION)."""
    if os.environ.get("DURABLE_TEST_VERSION") == "2":
        ctx.sleep(0.01)  # a timer where history recorded an activity
    else:
        ctx.call_activity(record, key).result()
    ctx.sleep(wait)
    ctx.call_activity(record, key + ":after").result()
    return os.environ.get("DURABLE_TEST_VERSION", "1")


# --- fault tests ---

# Retries without a limit, so that killed workers (whose attempts count as failed)
# can never exhaust the policy in the chaos tests.
UNLIMITED_FAST_RETRY = durable.RetryPolicy(initial_interval=0.05, maximum_interval=0.2, maximum_attempts=0)


@durable.activity(start_to_close_timeout=60, retry=FAST_RETRY)
def gated(key: str, gate_dir: str) -> str:
    """Records itself, announces each attempt by writing its pid to ``started-<attempt>`` in
    ``gate_dir``, then waits until the test creates ``release-<attempt>`` (or ``release-all``)."""
    _record(key)
    attempt = durable.activity_info().attempt
    gate = Path(gate_dir)
    announce = gate / f".started-{attempt}.tmp"
    announce.write_text(str(os.getpid()))
    announce.replace(gate / f"started-{attempt}")  # atomic: readers never see an empty file
    deadline = time.monotonic() + 120
    while not (gate / f"release-{attempt}").exists() and not (gate / "release-all").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gate {gate} never opened for attempt {attempt}")
        time.sleep(0.02)
    _record(key + ":done")
    return key


@durable.workflow
def one_gated(ctx: durable.WorkflowContext, key: str, gate_dir: str) -> str:
    return ctx.call_activity(gated, key, gate_dir).result()


@durable.activity(retry=UNLIMITED_FAST_RETRY)
def flaky_unlimited(key: str, fail_times: int) -> int:
    _record(key)
    attempt = durable.activity_info().attempt
    if attempt <= fail_times:
        raise ConnectionError(f"attempt {attempt} failed")
    return attempt


@durable.workflow
def retrying_unlimited(ctx: durable.WorkflowContext, key: str, fail_times: int) -> int:
    return ctx.call_activity(flaky_unlimited, key, fail_times).result()


# -- Added for tests/test_workflows.py (names prefixed tw_ to stay clear of others' additions) --


@durable.activity(retry=FAST_RETRY)
def tw_recorded_unserialisable(key: str) -> object:
    """Records itself, then returns a value JSON cannot hold."""
    _record(key)
    return object()


@durable.workflow
def tw_bad_result_counted(ctx: durable.WorkflowContext, key: str) -> dict:
    try:
        ctx.call_activity(tw_recorded_unserialisable, key).result()
    except durable.ActivityError as exc:
        return {"type": exc.type, "message": exc.message, "attempt": exc.attempt}
    return {}


@durable.workflow
def tw_bad_argument_then_continue(ctx: durable.WorkflowContext) -> dict:
    """Catches the SerializationError of a bad argument, then goes on (replayed in a later task)."""
    try:
        ctx.call_activity(add, object(), 1)
        error = ""
    except durable.SerializationError as exc:
        error = str(exc)
    total = ctx.call_activity(add, 2, 3).result()
    return {"error": error, "sum": total}


@durable.workflow
def tw_deterministic_paused(ctx: durable.WorkflowContext, wait: float) -> dict:
    """Like ``deterministic``, but waits on a timer after the first task so its vars can be read."""
    values = {
        "now": ctx.now().isoformat(),
        "started_at": ctx.started_at.isoformat(),
        "random": ctx.random(),
        "uuid": str(ctx.uuid4()),
        "workflow_id": ctx.workflow_id,
        "run_id": ctx.run_id,
    }
    ctx.set_var("first", values)
    ctx.sleep(wait)
    ctx.call_activity(add, 1, 1).result()
    values["random_after"] = ctx.random()
    values["now_after"] = ctx.now().isoformat()
    return values


@durable.workflow
def tw_explodes(ctx: durable.WorkflowContext, key: str) -> None:
    total = ctx.call_activity(add, 1, 2).result()
    raise LookupError(f"{key}: nothing found after {total}")


@durable.workflow
def tw_fan_out_slow(ctx: durable.WorkflowContext, key: str, n: int, seconds: float) -> list[str]:
    return ctx.wait_all([ctx.call_activity(slow, f"{key}:{i}", seconds) for i in range(n)])


@durable.workflow
def tw_bad_values(ctx: durable.WorkflowContext) -> object:
    """A variable that cannot be stored is refused where it is set; so is a bad return value."""
    try:
        ctx.set_var("bad", object())
        var_error = ""
    except durable.SerializationError as exc:
        var_error = str(exc)
    ctx.set_var("var_error", var_error)
    ctx.call_activity(add, 1, 1).result()
    return object()


# --- API tests ---


@durable.workflow
def api_greet(ctx: durable.WorkflowContext, name: str, punctuation: str = "!") -> dict:
    """Started over HTTP: sets a variable, runs an activity, returns a value."""
    ctx.set_var("greeting", f"hello {name}")
    total = ctx.call_activity(add, 1, 2).result()
    return {"greeting": f"hello {name}{punctuation}", "total": total}
