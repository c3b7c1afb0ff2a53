"""The replay engine, driven directly: history in, new events out. No database.

``Run`` plays the part of the store and the worker: it keeps one run's history,
runs a workflow task over it with the events delivered since (the inbox), and
appends what the task produced, numbering events as the store would.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from django_durable import ActivityError, DurableError, NonDeterminismError, SerializationError
from django_durable.converter import JSONDataConverter
from django_durable.engine import Event, TaskOutcome, run_workflow_task
from django_durable.engine.resident import ResidentRun

pytestmark = pytest.mark.engine

UTC = timezone.utc
CREATED = datetime(2024, 1, 1, 11, 59, 59, tzinfo=UTC)  # when start_workflow() wrote the run
T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)  # the first workflow task
RUN_ID = "5f0c6f52-3c1b-4b8e-9a3e-2f1d7c9b8a01"
OTHER_RUN_ID = "0d9e2b7a-8c41-4f7e-b1a2-6e5d4c3b2a10"


def activity_options(activity: Any) -> tuple[str, dict[str, Any]]:
    """Stands in for the registry: a name, and options recorded with the call."""
    name = activity if isinstance(activity, str) else activity.__name__
    return name, {"queue": f"q-{name}"}


def workflow_options(workflow: Any) -> tuple[str, str | None]:
    """Stands in for the registry: a child workflow's name, and its queue (none: the parent's)."""
    return workflow if isinstance(workflow, str) else workflow.__name__, None


# Activities are only named by the engine, never run.
def double(n: int) -> int:  # pragma: no cover
    return 2 * n


def charge(amount: int) -> str:  # pragma: no cover
    return "receipt"


RESIDENT = {"on": False}


@pytest.fixture(autouse=True, params=["replay", "resident"])
def engine_mode(request: pytest.FixtureRequest) -> Any:
    """Every engine test runs twice: each task replays the whole history, or the code is
    kept parked between tasks (a worker's cache) and resumes with the new events only."""
    RESIDENT["on"] = request.param == "resident"
    yield request.param
    RESIDENT["on"] = False


class Run:
    """One workflow run, advanced one workflow task at a time."""

    def __init__(self, fn, *args: Any, run_id: str = RUN_ID, **kwargs: Any) -> None:
        self.fn = fn
        self.run_id = run_id
        self.converter = JSONDataConverter()
        self.history: list[Event] = [
            Event(
                kind="ExecutionStarted",
                timestamp=CREATED,
                name=fn.__name__,
                payload={
                    "args": self.converter.to_json(list(args)),
                    "kwargs": self.converter.to_json(kwargs),
                },
                seq=1,
            )
        ]
        self.clock = T0  # the time of the next workflow task
        self.resident: ResidentRun | None = None  # resident mode: the code kept from the last task
        self._resident_fn: Any = None

    def task(self, *inbox: Event, at: datetime | None = None) -> TaskOutcome:
        """Run a workflow task and, unless it failed at engine level, commit its events."""
        resident, self.resident = self.resident, None
        if resident is not None and (self._resident_fn is not self.fn or resident.length > len(self.history)):
            resident.close()  # the code changed under it (a deploy): replay, as a fresh worker would
            resident = None
        outcome = self._run(inbox, at, resident)
        if outcome.task_error is None:
            for event in outcome.new_events:
                self.history.append(dataclasses.replace(event, seq=len(self.history) + 1))
            self.clock = max(self.clock, at or self.clock) + timedelta(minutes=1)
        if outcome.resident is not None:
            if RESIDENT["on"] and outcome.task_error is None:
                outcome.resident.committed()
                self.resident, self._resident_fn = outcome.resident, self.fn
            else:
                outcome.resident.close()
        return outcome

    def replay(self, *inbox: Event, at: datetime | None = None) -> TaskOutcome:
        """Run a workflow task without committing anything (a retry, a second worker...)."""
        outcome = self._run(inbox, at, None)
        if outcome.resident is not None:
            outcome.resident.close()
        return outcome

    def _run(self, inbox: tuple[Event, ...], at: datetime | None, resident: ResidentRun | None) -> TaskOutcome:
        now = at or self.clock
        # Completions happened a little before the task that delivers them.
        delivered = [
            dataclasses.replace(e, timestamp=now - timedelta(seconds=7)) if e.timestamp is None else e for e in inbox
        ]
        return run_workflow_task(
            self.fn,
            workflow_id="order-42",
            run_id=self.run_id,
            workflow_name=self.fn.__name__,
            queue="default",
            history=list(self.history[resident.length :] if resident is not None else self.history),
            inbox=delivered,
            now=now,
            converter=self.converter,
            activity_options=activity_options,
            workflow_options=workflow_options,
            resident=resident,
        )


def completed(task_id: int, result: Any = None, attempt: int = 1) -> Event:
    return Event(
        kind="ActivityCompleted",
        timestamp=None,  # type: ignore[arg-type]  # Run stamps it
        task_id=task_id,
        payload={"result": JSONDataConverter().to_json(result), "attempt": attempt},
    )


def failed(
    task_id: int,
    message: str = "card declined",
    type: str = "billing.errors.CardDeclined",
    attempt: int = 3,
    traceback: str = "",
    details: Any = None,
) -> Event:
    error: dict[str, Any] = {"type": type, "message": message, "traceback": traceback}
    if details is not None:
        error["details"] = details
    return Event(
        kind="ActivityFailed",
        timestamp=None,  # type: ignore[arg-type]
        task_id=task_id,
        payload={"error": error, "attempt": attempt},
    )


def fired(task_id: int) -> Event:
    return Event(kind="TimerFired", timestamp=None, task_id=task_id)  # type: ignore[arg-type]


def kinds(outcome: TaskOutcome) -> list[str]:
    return [e.kind for e in outcome.new_events]


def commands(outcome: TaskOutcome) -> list[tuple[str, int | None, str]]:
    """The durable calls a task recorded: (kind, task_id, name)."""
    return [(e.kind, e.task_id, e.name) for e in outcome.new_events if e.kind in ("ActivityScheduled", "TimerStarted")]


def assert_running(outcome: TaskOutcome) -> None:
    assert outcome.task_error is None, outcome.task_error
    assert outcome.status == "running", outcome.error


def assert_completed(outcome: TaskOutcome) -> None:
    assert outcome.task_error is None, outcome.task_error
    assert outcome.status == "completed", outcome.error


# -- sequential activities ----------------------------------------------------


def sequential(ctx, n):
    doubled = ctx.call_activity(double, n).result()
    receipt = ctx.call_activity("ship", doubled, express=True).result()
    return {"doubled": doubled, "receipt": receipt}


def test_first_task_schedules_the_first_activity_and_waits():
    run = Run(sequential, 21)
    outcome = run.task()

    assert_running(outcome)
    assert kinds(outcome) == ["WorkflowTaskStarted", "ActivityScheduled"]
    started, scheduled = outcome.new_events
    assert started.timestamp == T0
    assert scheduled.task_id == 1
    assert scheduled.name == "double"
    assert scheduled.payload == {"args": [21], "kwargs": {}, "options": {"queue": "q-double"}}
    assert scheduled.timestamp == T0
    assert outcome.waiting_on == "activity 'double'"
    assert outcome.result is None and outcome.error is None


def test_sequential_activities_take_one_task_each():
    run = Run(sequential, 21)
    run.task()

    second = run.task(completed(1, 42))
    assert_running(second)
    assert kinds(second) == ["WorkflowTaskStarted", "ActivityCompleted", "ActivityScheduled"]
    assert commands(second) == [("ActivityScheduled", 2, "ship")]
    assert second.new_events[-1].payload["args"] == [42]
    assert second.new_events[-1].payload["kwargs"] == {"express": True}
    assert second.waiting_on == "activity 'ship'"

    third = run.task(completed(2, "R-1"))
    assert_completed(third)
    assert third.result == {"doubled": 42, "receipt": "R-1"}
    assert kinds(third) == ["WorkflowTaskStarted", "ActivityCompleted", "WorkflowCompleted"]
    assert third.new_events[-1].payload == {"result": {"doubled": 42, "receipt": "R-1"}}
    assert third.waiting_on is None


def test_a_task_with_nothing_new_schedules_nothing_again():
    run = Run(sequential, 21)
    run.task()
    again = run.task()  # e.g. a spurious wake-up: the activity is still running
    assert_running(again)
    assert kinds(again) == ["WorkflowTaskStarted"]
    assert again.waiting_on == "activity 'double'"


@dataclasses.dataclass
class Order:
    sku: str
    quantity: int


def test_workflow_arguments_come_back_through_the_converter():
    seen = []

    def takes_order(ctx, order, *, note):
        seen.append((order, note))
        return order

    run = Run(takes_order, Order("ABC", 2), note="gift")
    outcome = run.task()
    assert_completed(outcome)
    assert seen == [(Order("ABC", 2), "gift")]
    assert outcome.result == JSONDataConverter().to_json(Order("ABC", 2))


def test_context_exposes_the_run_identity():
    def identity(ctx):
        return [ctx.workflow_id, ctx.run_id, ctx.workflow_name, ctx.queue]

    outcome = Run(identity).task()
    assert outcome.result == ["order-42", RUN_ID, "identity", "default"]


# -- fan-out, wait_all, wait_any ------------------------------------------------


def fan_out(ctx, n):
    return ctx.wait_all([ctx.call_activity(double, i) for i in range(n)])


def test_fan_out_schedules_every_activity_in_one_task():
    outcome = Run(fan_out, 5).task()
    assert_running(outcome)
    assert commands(outcome) == [("ActivityScheduled", i, "double") for i in range(1, 6)]
    assert [e.payload["args"] for e in outcome.new_events[1:]] == [[0], [1], [2], [3], [4]]
    assert outcome.waiting_on == "activity 'double'"


def test_wait_all_collects_results_in_call_order():
    run = Run(fan_out, 5)
    run.task()

    partial = run.task(completed(4, 6), completed(2, 2))
    assert_running(partial)
    assert commands(partial) == []  # nothing is scheduled twice

    done = run.task(completed(5, 8), completed(3, 4), completed(1, 0))
    assert_completed(done)
    assert done.result == [0, 2, 4, 6, 8]


def test_wait_all_of_nothing_is_an_empty_list():
    outcome = Run(lambda ctx: ctx.wait_all([])).task()
    assert_completed(outcome)
    assert outcome.result == []


def fan_out_catching(ctx):
    tasks = [ctx.call_activity("step", i) for i in range(3)]
    try:
        ctx.wait_all(tasks)
    except ActivityError as exc:
        caught = exc.message
    else:  # pragma: no cover
        caught = None
    return ctx.call_activity("report", caught).result()


def test_wait_all_fails_fast_with_the_earliest_failure_in_history_order():
    run = Run(fan_out_catching)
    run.task()

    # Activity 1 is still running; 3 failed before 2 did.
    outcome = run.task(failed(3, "third"), failed(2, "second"))
    assert_running(outcome)
    assert commands(outcome) == [("ActivityScheduled", 4, "report")]
    assert outcome.new_events[-1].payload["args"] == ["third"]

    # Activity 1 fails later still: replay must reach the same decision.
    final = run.task(failed(1, "first"), completed(4, "reported"))
    assert_completed(final)
    assert final.result == "reported"


def test_wait_all_failure_uncaught_fails_the_workflow():
    run = Run(fan_out, 2)
    run.task()
    outcome = run.task(completed(1, 0), failed(2, "no doubling today"))
    assert outcome.task_error is None
    assert outcome.status == "failed"
    assert outcome.error["type"] == "django_durable.exceptions.ActivityError"
    assert "no doubling today" in outcome.error["message"]
    assert kinds(outcome)[-1] == "WorkflowFailed"


def race(ctx):
    tasks = [ctx.call_activity(name) for name in ("a", "b", "c")]
    winner = ctx.wait_any(tasks)
    value = winner.result()
    return ctx.call_activity("after", winner.task_id, value).result()


def test_wait_any_suspends_on_all_of_its_tasks():
    outcome = Run(race).task()
    assert_running(outcome)
    assert commands(outcome) == [("ActivityScheduled", i, n) for i, n in ((1, "a"), (2, "b"), (3, "c"))]
    assert outcome.waiting_on == "activity 'a' or activity 'b' or activity 'c'"


def test_wait_any_returns_the_earliest_completion_in_history_order():
    run = Run(race)
    run.task()
    outcome = run.task(completed(3, "C"), completed(2, "B"))
    assert_running(outcome)
    assert commands(outcome) == [("ActivityScheduled", 4, "after")]
    assert outcome.new_events[-1].payload["args"] == [3, "C"]


def test_wait_any_stays_deterministic_when_later_completions_arrive():
    run = Run(race)
    run.task()
    run.task(completed(3, "C"))
    # 'a' completes after the workflow already chose 'c'.
    final = run.task(completed(1, "A"), completed(2, "B"), completed(4, "done"))
    assert_completed(final)
    assert final.result == "done"


def test_wait_any_winner_can_be_a_failure():
    def first_of(ctx):
        winner = ctx.wait_any([ctx.call_activity("a"), ctx.call_activity("b")])
        try:
            winner.result()
        except ActivityError as exc:
            return [winner.task_id, exc.message]

    run = Run(first_of)
    run.task()
    outcome = run.task(failed(2, "b broke"))
    assert_completed(outcome)
    assert outcome.result == [2, "b broke"]


def test_wait_any_needs_a_task():
    def empty(ctx):
        try:
            ctx.wait_any([])
        except ValueError as exc:
            return str(exc)

    outcome = Run(empty).task()
    assert_completed(outcome)
    assert "at least one task" in outcome.result


# -- activity failures ----------------------------------------------------------


def test_activity_error_carries_what_the_activity_recorded():
    def pay(ctx):
        try:
            ctx.call_activity(charge, 100).result()
        except ActivityError as exc:
            return {
                "type": exc.type,
                "message": exc.message,
                "attempt": exc.attempt,
                "activity_name": exc.activity_name,
                "traceback": exc.traceback,
                "details": exc.details,
                "str": str(exc),
                "durable": isinstance(exc, DurableError),
            }

    run = Run(pay)
    run.task()
    outcome = run.task(
        failed(
            1,
            "card declined",
            type="billing.errors.CardDeclined",
            attempt=3,
            traceback="Traceback (most recent call last): ...",
            details={"code": 51},
        )
    )
    assert_completed(outcome)
    assert outcome.result == {
        "type": "billing.errors.CardDeclined",
        "message": "card declined",
        "attempt": 3,
        "activity_name": "charge",
        "traceback": "Traceback (most recent call last): ...",
        "details": {"code": 51},
        "str": "billing.errors.CardDeclined: card declined",
        "durable": True,
    }


def test_uncaught_activity_error_fails_the_workflow():
    run = Run(sequential, 1)
    run.task()
    outcome = run.task(failed(1, "overflow", type="ArithmeticError"))
    assert outcome.task_error is None
    assert outcome.status == "failed"
    assert outcome.error["type"] == "django_durable.exceptions.ActivityError"
    assert outcome.error["message"] == "ArithmeticError: overflow"
    assert "ActivityError" in outcome.error["traceback"]
    assert outcome.new_events[-1].kind == "WorkflowFailed"
    assert outcome.new_events[-1].payload == {"error": outcome.error}


# -- timers ---------------------------------------------------------------------


def fire_at(event: Event) -> datetime:
    return datetime.fromisoformat(event.payload["fire_at"])


def test_sleep_starts_a_timer_relative_to_now():
    def nap(ctx):
        ctx.sleep(30)
        ctx.sleep(timedelta(minutes=5))
        return "rested"

    run = Run(nap)
    first = run.task(at=T0)
    assert_running(first)
    assert commands(first) == [("TimerStarted", 1, "")]
    assert fire_at(first.new_events[-1]) == T0 + timedelta(seconds=30)
    assert first.new_events[-1].payload["fire_at"] == (T0 + timedelta(seconds=30)).isoformat()
    assert first.waiting_on == f"timer until {(T0 + timedelta(seconds=30)).isoformat()}"

    t1 = T0 + timedelta(seconds=31)
    second = run.task(fired(1), at=t1)
    assert_running(second)
    assert commands(second) == [("TimerStarted", 2, "")]
    # Measured from the time the first timer's firing reached the workflow.
    assert fire_at(second.new_events[-1]) == t1 + timedelta(minutes=5)

    third = run.task(fired(2), at=t1 + timedelta(minutes=6))
    assert_completed(third)
    assert third.result == "rested"


def test_sleep_until_and_timer_until_fire_at_the_given_instant():
    plus_two = timezone(timedelta(hours=2))
    deadline = datetime(2024, 2, 1, 9, 30, tzinfo=plus_two)

    def wait_for_deadline(ctx):
        ctx.sleep_until(deadline)
        ctx.timer(until=deadline + timedelta(days=1)).result()
        return "late"

    run = Run(wait_for_deadline)
    first = run.task()
    assert commands(first) == [("TimerStarted", 1, "")]
    assert fire_at(first.new_events[-1]) == deadline
    second = run.task(fired(1))
    assert commands(second) == [("TimerStarted", 2, "")]
    assert fire_at(second.new_events[-1]) == deadline + timedelta(days=1)
    assert_completed(run.task(fired(2)))


def test_timer_task_can_race_an_activity():
    def with_timeout(ctx):
        work = ctx.call_activity("work")
        timeout = ctx.timer(timedelta(hours=1))
        winner = ctx.wait_any([work, timeout])
        return "timed out" if winner is timeout else winner.result()

    run = Run(with_timeout)
    first = run.task()
    assert commands(first) == [("ActivityScheduled", 1, "work"), ("TimerStarted", 2, "")]
    assert fire_at(first.new_events[-1]) == T0 + timedelta(hours=1)
    outcome = run.task(fired(2))
    assert_completed(outcome)
    assert outcome.result == "timed out"


def test_naive_datetimes_and_bad_timer_arguments_are_rejected():
    def careless(ctx):
        errors = []
        for call in (
            lambda: ctx.sleep_until(datetime(2024, 2, 1)),
            lambda: ctx.timer(until=datetime(2024, 2, 1)),
            lambda: ctx.timer(),
            lambda: ctx.timer(5, until=T0),
        ):
            try:
                call()
            except (TypeError, ValueError) as exc:
                errors.append([type(exc).__name__, str(exc)])
        return errors

    outcome = Run(careless).task()
    assert_completed(outcome)
    assert commands(outcome) == []  # nothing was recorded for the rejected calls
    (e1, m1), (e2, m2), (e3, _), (e4, _) = outcome.result
    assert (e1, e2, e3, e4) == ("ValueError", "ValueError", "TypeError", "TypeError")
    assert "timezone-aware" in m1 and "timezone-aware" in m2


# -- time -----------------------------------------------------------------------


def test_now_is_started_at_then_the_task_time_a_consumed_result_arrived(engine_mode: str):
    seen: list[tuple] = []
    # Replayed code retraces its earlier steps on every task; resident code goes on.
    replayed = engine_mode == "replay"

    def clocked(ctx):
        seen.append(("start", ctx.now(), ctx.started_at))
        ctx.call_activity("a").result()
        seen.append(("after a", ctx.now(), ctx.started_at))
        ctx.call_activity("b").result()
        seen.append(("after b", ctx.now(), ctx.started_at))
        return ctx.now()

    t1, t2, t3 = T0, T0 + timedelta(hours=1), T0 + timedelta(days=2)
    run = Run(clocked)
    run.task(at=t1)
    assert seen == [("start", t1, t1)]

    seen.clear()
    second = run.task(completed(1), at=t2)
    assert seen == [("start", t1, t1)] * replayed + [("after a", t2, t1)]
    # The command is stamped with the workflow's time, not the completion's.
    assert second.new_events[-1].timestamp == t2

    seen.clear()
    final = run.task(completed(2), at=t3)
    assert seen == [("start", t1, t1), ("after a", t2, t1)] * replayed + [("after b", t3, t1)]
    assert_completed(final)
    assert final.result == JSONDataConverter().to_json(t3)
    assert final.new_events[-1].timestamp == t3


def test_now_on_replay_ignores_the_replaying_tasks_clock():
    seen: list[tuple] = []

    def clocked(ctx):
        seen.append(ctx.now())
        ctx.call_activity("a").result()
        seen.append(ctx.now())
        ctx.call_activity("b").result()

    t1, t2 = T0, T0 + timedelta(hours=1)
    run = Run(clocked)
    run.task(at=t1)
    run.task(completed(1), at=t2)
    seen.clear()
    run.replay(at=T0 + timedelta(days=365))
    assert seen == [t1, t2]


def test_now_never_goes_back_when_an_older_result_is_consumed_later():
    seen: list[datetime] = []

    def out_of_order(ctx):
        a, b = ctx.call_activity("a"), ctx.call_activity("b")
        b.result()
        seen.append(ctx.now())
        a.result()
        seen.append(ctx.now())

    t2, t3 = T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)
    run = Run(out_of_order)
    run.task(at=T0)
    run.task(completed(1), at=t2)
    seen.clear()
    assert_completed(run.task(completed(2), at=t3))
    assert seen[-1] == t3 and all(at == t3 for at in seen)  # once resident, twice replayed


def test_started_at_is_the_first_workflow_task_time_on_every_task():
    seen = []

    def started(ctx):
        seen.append(ctx.started_at)
        ctx.sleep(60)
        seen.append(ctx.started_at)

    run = Run(started)
    run.task(at=T0)
    run.task(fired(1), at=T0 + timedelta(days=1))
    assert seen[-1] == T0 and set(seen) == {T0}


# -- deterministic randomness ---------------------------------------------------


def lucky(ctx):
    values = {"random": ctx.random(), "uuid": str(ctx.uuid4()), "again": ctx.random()}
    ctx.set_var("values", values)
    ctx.call_activity("use", values).result()
    return values


def test_random_and_uuid4_are_the_same_on_replay():
    run = Run(lucky)
    first = run.task()
    values = first.vars["values"]
    assert first.new_events[-1].payload["args"] == [values]
    assert 0 <= values["random"] < 1 and values["random"] != values["again"]
    assert uuid.UUID(values["uuid"]).version == 4

    assert run.replay().vars["values"] == values
    final = run.task(completed(1))
    assert_completed(final)
    assert final.result == values


def test_random_and_uuid4_depend_only_on_the_run_id():
    same = Run(lucky).task().vars["values"]
    again = Run(lucky).task(at=T0 + timedelta(days=3)).vars["values"]
    other = Run(lucky, run_id=OTHER_RUN_ID).task().vars["values"]
    assert same == again
    assert other["random"] != same["random"]
    assert other["uuid"] != same["uuid"]


# -- is_replaying -----------------------------------------------------------------


def observed(seen):
    def wf(ctx):
        seen.append(("top", ctx.is_replaying))
        a = ctx.call_activity("a")
        seen.append(("scheduled a", ctx.is_replaying))
        a.result()
        seen.append(("after a", ctx.is_replaying))
        ctx.call_activity("b").result()
        seen.append(("after b", ctx.is_replaying))

    return wf


def test_is_replaying_is_false_on_the_first_task():
    # Nothing in history yet: all of this code runs for the first time.
    seen: list[tuple] = []
    Run(observed(seen)).task()
    assert seen == [("top", False), ("scheduled a", False)]


def test_is_replaying_is_true_until_the_code_reaches_new_history(engine_mode: str):
    seen: list[tuple] = []
    run = Run(observed(seen))
    run.task()
    replayed = engine_mode == "replay"  # resident code does not retrace its steps

    seen.clear()
    run.task(completed(1))
    assert seen == [("top", True), ("scheduled a", True)] * replayed + [("after a", False)]

    seen.clear()
    run.task(completed(2))
    assert seen == [("top", True), ("scheduled a", True), ("after a", True)] * replayed + [("after b", False)]

    # Code that replays from the top after a restart retraces everything.
    seen.clear()
    run.replay()
    assert seen == [("top", True), ("scheduled a", True), ("after a", True), ("after b", True)]


# -- set_var ----------------------------------------------------------------------


def test_set_var_records_encoded_values_and_the_latest_one_wins():
    def tracked(ctx):
        ctx.set_var("stage", "charging")
        ctx.set_var("since", ctx.now())
        receipt = ctx.call_activity(charge, 10).result()
        ctx.set_var("stage", "charged")
        ctx.set_var("receipt", receipt)
        ctx.set_var("order", Order("ABC", 1))

    run = Run(tracked)
    first = run.task()
    assert first.vars == {"stage": "charging", "since": JSONDataConverter().to_json(T0)}

    final = run.task(completed(1, "R-9"))
    assert_completed(final)
    assert final.vars == {
        "stage": "charged",
        "since": JSONDataConverter().to_json(T0),
        "receipt": "R-9",
        "order": JSONDataConverter().to_json(Order("ABC", 1)),
    }


def test_set_var_with_an_unserialisable_value_raises_at_the_call_site():
    def bad_var(ctx):
        ctx.set_var("ok", 1)
        try:
            ctx.set_var("lock", object())
        except SerializationError as exc:
            return str(exc)

    outcome = Run(bad_var).task()
    assert_completed(outcome)
    assert "variable 'lock'" in outcome.result
    assert "object" in outcome.result
    assert outcome.vars == {"ok": 1}


def test_set_var_serialisation_error_uncaught_fails_the_workflow():
    def bad_var(ctx):
        ctx.set_var("lock", {1, 2})

    outcome = Run(bad_var).task()
    assert outcome.task_error is None
    assert outcome.status == "failed"
    assert outcome.error["type"] == "django_durable.exceptions.SerializationError"
    assert "variable 'lock'" in outcome.error["message"]
    assert "set_var" in outcome.error["traceback"]


# -- serialisation at the durable boundary -----------------------------------------


def test_unserialisable_activity_arguments_raise_inside_the_workflow():
    def careless(ctx):
        caught = []
        try:
            ctx.call_activity("a", object())
        except SerializationError as exc:
            caught.append(str(exc))
        try:
            ctx.call_activity("a", when={2: "two"})
        except TypeError as exc:  # SerializationError is a TypeError too
            caught.append(str(exc))
        return ctx.call_activity("b", caught).result()

    run = Run(careless)
    first = run.task()
    assert_running(first)
    assert [name for _, _, name in commands(first)] == ["b"]  # nothing recorded for 'a'
    positional, keyword = first.new_events[-1].payload["args"][0]
    assert "arguments of activity 'a'" in positional and "object" in positional
    assert "keyword arguments of activity 'a'" in keyword and "2" in keyword

    b_id = commands(first)[0][1]
    final = run.task(completed(b_id, "fine"))
    assert_completed(final)
    assert final.result == "fine"


def test_unserialisable_return_value_fails_the_workflow_clearly():
    def returns_junk(ctx):
        return {"conn": object()}

    outcome = Run(returns_junk).task()
    assert outcome.task_error is None
    assert outcome.status == "failed"
    assert outcome.result is None
    assert outcome.error["type"] == "django_durable.exceptions.SerializationError"
    assert "return value" in outcome.error["message"]
    assert "object" in outcome.error["message"]
    assert kinds(outcome) == ["WorkflowTaskStarted", "WorkflowFailed"]


# -- failing workflow code --------------------------------------------------------


class OutOfStock(Exception):
    pass


def test_exception_in_workflow_code_fails_the_workflow():
    def picky(ctx):
        ctx.call_activity("reserve").result()
        raise OutOfStock("no more widgets")

    run = Run(picky)
    run.task()
    outcome = run.task(completed(1))
    assert outcome.task_error is None
    assert outcome.status == "failed"
    assert outcome.error["type"] == "tests.test_engine.OutOfStock"
    assert outcome.error["message"] == "no more widgets"
    assert "Traceback" in outcome.error["traceback"]
    assert "in picky" in outcome.error["traceback"]
    assert "OutOfStock: no more widgets" in outcome.error["traceback"]
    assert kinds(outcome) == ["WorkflowTaskStarted", "ActivityCompleted", "WorkflowFailed"]
    assert outcome.new_events[-1].payload == {"error": outcome.error}


def test_builtin_exception_types_are_recorded_by_bare_name():
    def broken(ctx):
        return {}["missing"]

    outcome = Run(broken).task()
    assert outcome.status == "failed"
    assert outcome.error["type"] == "KeyError"
    assert outcome.error["message"] == "'missing'"


# -- non-determinism ----------------------------------------------------------------


def assert_non_determinism(outcome: TaskOutcome, *fragments: str) -> str:
    assert isinstance(outcome.task_error, NonDeterminismError), outcome
    message = str(outcome.task_error)
    for fragment in fragments:
        assert fragment in message, message
    # Nothing of the task may be committed.
    assert outcome.new_events == []
    assert outcome.vars == {}
    return message


def test_changed_activity_name_is_non_determinism():
    def v1(ctx):
        ctx.set_var("v", 1)
        return ctx.call_activity("charge").result()

    def v2(ctx):
        ctx.set_var("v", 2)
        return ctx.call_activity("refund").result()

    run = Run(v1)
    run.task()
    run.fn = v2
    outcome = run.task(completed(1))
    assert_non_determinism(
        outcome, "sequence number 1", "history recorded activity 'charge'", "asked for activity 'refund'"
    )


def test_non_determinism_names_the_right_sequence_number():
    def v1(ctx):
        ctx.call_activity("a").result()
        return ctx.call_activity("b").result()

    def v2(ctx):
        ctx.call_activity("a").result()
        return ctx.call_activity("c").result()

    run = Run(v1)
    run.task()
    run.task(completed(1))
    run.fn = v2
    assert_non_determinism(run.task(completed(2)), "sequence number 2", "activity 'b'", "activity 'c'")


def test_activity_replaced_by_timer_is_non_determinism():
    def v1(ctx):
        ctx.call_activity("a").result()

    def v2(ctx):
        ctx.sleep(10)

    run = Run(v1)
    run.task()
    run.fn = v2
    assert_non_determinism(
        run.task(completed(1)),
        "sequence number 1",
        "history recorded activity 'a'",
        "asked for timer",
    )


def test_timer_replaced_by_activity_is_non_determinism():
    def v1(ctx):
        ctx.sleep(10)

    def v2(ctx):
        ctx.call_activity("a").result()

    run = Run(v1)
    run.task()
    run.fn = v2
    assert_non_determinism(run.task(fired(1)), "sequence number 1", "history recorded timer", "asked for activity 'a'")


def parallel_ab(ctx):
    a, b = ctx.call_activity("a"), ctx.call_activity("b")
    return ctx.wait_all([a, b])


def test_recorded_call_missing_when_the_code_finishes():
    def only_a(ctx):
        return ctx.call_activity("a").result()

    run = Run(parallel_ab)
    run.task()
    run.fn = only_a
    message = assert_non_determinism(
        run.task(completed(1, "A")),
        "sequence number 2",
        "history recorded activity 'b'",
        "no such call",
        "finished",
    )
    assert "1 durable call" in message


def test_recorded_call_missing_when_the_code_suspends():
    def only_a(ctx):
        return ctx.call_activity("a").result()

    run = Run(parallel_ab)
    run.task()
    run.fn = only_a
    assert_non_determinism(
        run.task(),
        "sequence number 2",
        "history recorded activity 'b'",
        "no such call",
        "waited on activity 'a'",
    )


def test_recorded_call_missing_when_the_code_fails():
    def gives_up(ctx):
        raise RuntimeError("changed my mind")

    run = Run(parallel_ab)
    run.task()
    run.fn = gives_up
    assert_non_determinism(run.task(), "sequence number 1", "history recorded activity 'a'")


def test_recorded_call_missing_after_a_call_that_failed_to_serialise():
    # v1 lost a sequence number to a call whose arguments could not be encoded,
    # so history holds a call at sequence number 2 and none at 1.
    def v1(ctx):
        try:
            ctx.call_activity("a", object())
        except SerializationError:
            pass
        return ctx.call_activity("b").result()

    def v2(ctx):
        return "no calls any more"

    run = Run(v1)
    run.task()
    run.fn = v2
    assert_non_determinism(run.task(), "history recorded activity 'b'", "no such call")


def test_workflow_code_cannot_hide_non_determinism_with_except_exception():
    def hides(ctx, n):
        try:
            ctx.call_activity("refund").result()
        except Exception:
            pass
        return "all good"

    run = Run(sequential, 1)
    run.task()
    run.fn = hides
    assert_non_determinism(run.task(completed(1, 2)), "sequence number 1", "activity 'double'", "activity 'refund'")


def test_workflow_code_cannot_hide_non_determinism_with_bare_except():
    def hides_harder(ctx, n):
        try:
            ctx.call_activity("refund").result()
        except BaseException:
            pass
        try:
            ctx.call_activity("another")
        except BaseException:
            pass
        return "all good"

    run = Run(sequential, 1)
    run.task()
    run.fn = hides_harder
    assert_non_determinism(run.task(completed(1, 2)), "sequence number 1", "activity 'double'", "activity 'refund'")


def test_non_determinism_leaves_history_untouched_and_recovers_after_a_fix():
    run = Run(sequential, 3)
    run.task()
    before = list(run.history)
    run.fn = lambda ctx, n: ctx.call_activity("triple", n).result()
    assert isinstance(run.task(completed(1, 6)).task_error, NonDeterminismError)
    assert run.history == before

    run.fn = sequential  # the code fix
    outcome = run.task(completed(1, 6))
    assert_running(outcome)
    assert commands(outcome) == [("ActivityScheduled", 2, "ship")]


# -- suspension must not be swallowed ------------------------------------------------


def test_except_exception_around_a_pending_result_does_not_swallow_suspension():
    def cautious(ctx):
        try:
            return ctx.call_activity("a").result()
        except Exception:
            return "fallback"

    outcome = Run(cautious).task()
    assert_running(outcome)
    assert outcome.waiting_on == "activity 'a'"
    assert commands(outcome) == [("ActivityScheduled", 1, "a")]


def test_bare_except_around_a_pending_result_just_waits():
    # The code is parked at the call, not unwound: there is nothing to swallow.
    def swallows(ctx):
        try:
            value = ctx.call_activity("a").result()
        except:  # noqa: E722 - the point of the test
            value = "swallowed"
        return value

    run = Run(swallows)
    outcome = run.task()
    assert outcome.task_error is None, outcome.task_error
    assert_running(outcome)
    assert outcome.waiting_on == "activity 'a'"
    outcome = run.task(completed(1, "from a"))
    assert_completed(outcome)
    assert outcome.result == "from a"


def test_durable_call_in_a_finally_block_is_not_a_swallowed_suspension():
    # No except clause here: the suspension keeps propagating through the finally
    # block, so this is an ordinary suspension, not code that "went on".
    def tidy(ctx):
        try:
            return ctx.call_activity("a").result()
        finally:
            ctx.set_var("finished", True)

    outcome = Run(tidy).task()
    assert outcome.task_error is None, outcome.task_error
    assert_running(outcome)
    assert outcome.waiting_on == "activity 'a'"
    assert commands(outcome) == [("ActivityScheduled", 1, "a")]


def test_dropping_parked_code_that_swallows_the_unwinding_still_ends_it():
    unwound = []

    def swallows_then_continues(ctx):
        try:
            ctx.call_activity("a").result()
        except BaseException:
            unwound.append("caught")
        try:
            return ctx.call_activity("b").result()  # the run is being dropped: unwinds again
        finally:
            unwound.append("finally")

    outcome = Run(swallows_then_continues).replay()
    assert_running(outcome)  # replay() drops the code after the task
    assert unwound == ["caught", "finally"]


# -- determinism of the engine itself ----------------------------------------------


def busy(ctx, n):
    ctx.set_var("token", str(ctx.uuid4()))
    tasks = [ctx.call_activity(double, i, jitter=ctx.random()) for i in range(n)]
    timer = ctx.timer(timedelta(minutes=15))
    first = ctx.wait_any([*tasks, timer])
    ctx.set_var("first", first.task_id)
    results = ctx.wait_all(tasks)
    ctx.sleep(timedelta(seconds=ctx.random() * 100))
    return {"results": results, "at": ctx.now()}


def test_replaying_the_same_history_twice_gives_identical_outcomes():
    run = Run(busy, 3)
    assert run.replay() == run.replay()
    run.task()
    inbox = (completed(2, 2), fired(4))
    assert run.replay(*inbox) == run.replay(*inbox)
    run.task(*inbox)
    inbox = (completed(1, 0), completed(3, 4))
    assert run.replay(*inbox) == run.replay(*inbox)
    outcome = run.task(*inbox)
    assert commands(outcome) == [("TimerStarted", 5, "")]
    assert outcome.vars["first"] == 2

    final = run.task(fired(5))
    assert_completed(final)
    assert final.result["results"] == [0, 2, 4]
