"""The replay engine's orchestration features, driven directly (no database):
external events, cancellation, child workflows, continue-as-new, timer
cancellation and the history size limits. See ``tests/test_engine.py`` for ``Run``.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from django_durable import CancelledError, ChildWorkflowError, TimeoutError
from django_durable.converter import JSONDataConverter
from django_durable.engine import Event, TaskOutcome
from django_durable.engine.replay import check_history
from tests.test_engine import (  # noqa: F401 - engine_mode runs each test in both modes
    RUN_ID,
    T0,
    Run,
    activity_options,
    assert_completed,
    assert_running,
    completed,
    engine_mode,
    fired,
    kinds,
    workflow_options,
)

pytestmark = pytest.mark.engine


def raised(name: str, payload: Any = None) -> Event:
    return Event(kind="EventRaised", timestamp=None, name=name, payload={"payload": payload})  # type: ignore[arg-type]


def cancel_requested() -> Event:
    return Event(kind="CancelRequested", timestamp=None)  # type: ignore[arg-type]


def child_completed(task_id: int, result: Any) -> Event:
    return Event(
        kind="ChildWorkflowCompleted",
        timestamp=None,
        task_id=task_id,  # type: ignore[arg-type]
        payload={"result": result, "workflow_id": "child", "run_id": "r"},
    )


def child_failed(task_id: int, status: str = "failed") -> Event:
    return Event(
        kind="ChildWorkflowFailed",
        timestamp=None,
        task_id=task_id,  # type: ignore[arg-type]
        payload={"error": {"type": "ValueError", "message": "bad input"}, "status": status, "workflow_id": "kid-1"},
    )


def assert_status(outcome: TaskOutcome, status: str) -> None:
    assert outcome.task_error is None, outcome.task_error
    assert outcome.status == status, outcome.error


# -- external events ----------------------------------------------------------------


def two_approvals(ctx):
    first = ctx.wait_for_event("approve")
    second = ctx.wait_for_event("approve")
    return [first, second]


def test_waiting_for_an_event_records_the_wait_and_suspends():
    run = Run(two_approvals)
    outcome = run.task()
    assert_running(outcome)
    assert kinds(outcome) == ["WorkflowTaskStarted", "EventWaitStarted"]
    assert outcome.new_events[1].name == "approve"
    assert outcome.waiting_on == "event 'approve'"


def test_events_of_one_name_queue_up_and_are_consumed_in_arrival_order():
    run = Run(two_approvals)
    run.task()
    outcome = run.task(raised("approve", "ann"), raised("approve", "bob"))
    assert_completed(outcome)
    assert outcome.result == ["ann", "bob"]


def test_an_event_sent_before_the_workflow_waits_is_kept():
    def later(ctx):
        ctx.sleep(60)
        return ctx.wait_for_event("go")

    run = Run(later)
    run.task()
    assert_running(run.task(raised("go", 1)))  # arrives while the timer runs
    assert_completed(outcome := run.task(fired(1)))
    assert outcome.result == 1


def test_events_of_other_names_do_not_answer_a_wait():
    run = Run(two_approvals)
    run.task()
    outcome = run.task(raised("reject", "no"))
    assert_running(outcome)
    assert outcome.waiting_on == "event 'approve'"


def waits_with_timeout(ctx):
    try:
        first = ctx.wait_for_event("go", timeout=timedelta(hours=1))
    except TimeoutError:
        first = "timed out"
    second = ctx.wait_for_event("go")
    return [first, second]


def test_a_timed_out_wait_consumes_nothing_and_the_late_event_goes_to_the_next_wait():
    run = Run(waits_with_timeout)
    first = run.task()
    assert [e.kind for e in first.new_events] == ["WorkflowTaskStarted", "EventWaitStarted", "TimerStarted"]
    timed_out = run.task(fired(2))
    assert_running(timed_out)
    assert timed_out.waiting_on == "event 'go'"
    outcome = run.task(raised("go", "late"))
    assert_completed(outcome)
    assert outcome.result == ["timed out", "late"]


def test_an_event_that_beats_the_timeout_cancels_the_timer():
    run = Run(waits_with_timeout)
    run.task()
    outcome = run.task(raised("go", "a"))
    assert_running(outcome)
    canceled = [e for e in outcome.new_events if e.kind == "TimerCanceled"]
    assert [e.task_id for e in canceled] == [2]
    # Replaying does not cancel the timer again, and a second event completes the run.
    final = run.task(raised("go", "b"))
    assert_completed(final)
    assert "TimerCanceled" not in kinds(final)
    assert final.result == ["a", "b"]


def test_event_and_timer_arriving_together_go_by_history_order():
    run = Run(waits_with_timeout)
    run.task()
    outcome = run.task(fired(2), raised("go", "too late"))
    # The timer came first: the first wait times out, the event answers the second.
    assert_completed(outcome)
    assert outcome.result == ["timed out", "too late"]


def test_event_task_in_wait_any_races_an_activity():
    def race(ctx):
        winner = ctx.wait_any([ctx.event("stop"), ctx.call_activity("work")])
        return winner.result()

    run = Run(race)
    run.task()
    outcome = run.task(raised("stop", {"why": "enough"}), completed(2, "done"))
    assert_completed(outcome)
    assert outcome.result == {"why": "enough"}


def test_wait_all_on_two_event_tasks_of_one_name_takes_two_events():
    def both(ctx):
        return ctx.wait_all([ctx.event("x"), ctx.event("x")])

    run = Run(both)
    run.task()
    assert_running(run.task(raised("x", 1)))
    outcome = run.task(raised("x", 2))
    assert_completed(outcome)
    assert outcome.result == [1, 2]


def test_event_names_must_be_non_empty_strings():
    def bad(ctx):
        ctx.event("")

    run = Run(bad)
    outcome = run.task()
    assert_status(outcome, "failed")
    assert "non-empty" in outcome.error["message"]


# -- cancellation -------------------------------------------------------------------


def cleans_up(ctx):
    try:
        ctx.sleep(timedelta(days=30))
    except CancelledError:
        ctx.call_activity("release_hold").result()
        raise
    return "slept"


def test_cancel_raises_at_the_pending_wait_and_cleanup_runs():
    run = Run(cleans_up)
    run.task()
    outcome = run.task(cancel_requested())
    assert_running(outcome)
    assert [e.kind for e in outcome.new_events] == ["WorkflowTaskStarted", "CancelRequested", "ActivityScheduled"]
    final = run.task(completed(2))
    assert_status(final, "canceled")
    assert final.new_events[-1].kind == "WorkflowCanceled"
    assert final.error["type"] == "django_durable.exceptions.CancelledError"


def test_cancel_is_raised_once_and_replays_deterministically():
    run = Run(cleans_up)
    run.task()
    run.task(cancel_requested())
    # A replay of the same history (another worker) reaches the same decision.
    again = run.replay()
    assert_running(again)
    assert kinds(again) == ["WorkflowTaskStarted"]


def test_a_workflow_that_catches_cancel_can_complete():
    def shrugs(ctx):
        try:
            ctx.sleep(3600)
        except CancelledError:
            return "stopped early"
        return "slept"

    run = Run(shrugs)
    run.task()
    outcome = run.task(cancel_requested())
    assert_completed(outcome)
    assert outcome.result == "stopped early"


def test_results_that_arrived_before_the_cancel_are_still_returned():
    def two_steps(ctx):
        first = ctx.call_activity("a").result()
        second = ctx.call_activity("b").result()
        return [first, second]

    run = Run(two_steps)
    run.task()
    # a's result and the cancel arrive in one task: a's result came first, so it is
    # returned; the next durable call (scheduling b) raises.
    outcome = run.task(completed(1, "A"), cancel_requested())
    assert_status(outcome, "canceled")
    assert "ActivityScheduled" not in kinds(outcome)


def test_cancel_before_a_result_that_arrives_after_it_raises_at_that_wait():
    def one_step(ctx):
        return ctx.call_activity("a").result()

    run = Run(one_step)
    run.task()
    outcome = run.task(cancel_requested(), completed(1, "A"))
    assert_status(outcome, "canceled")


# -- child workflows ----------------------------------------------------------------


def parent(ctx, n):
    first = ctx.call_workflow("child", n, workflow_id="kid-1")
    second = ctx.call_workflow("child", n + 1, parent_close_policy="abandon")
    return ctx.wait_all([first, second])


def test_child_workflow_calls_are_recorded_with_their_ids_and_policies():
    run = Run(parent, 1)
    outcome = run.task()
    assert_running(outcome)
    scheduled = [e for e in outcome.new_events if e.kind == "ChildWorkflowScheduled"]
    assert [(e.task_id, e.name) for e in scheduled] == [(1, "child"), (2, "child")]
    assert scheduled[0].payload["workflow_id"] == "kid-1"
    assert scheduled[0].payload["parent_close_policy"] == "terminate"
    assert scheduled[0].payload["args"] == [1]
    assert scheduled[1].payload["workflow_id"] == f"order-42:2:{RUN_ID[:8]}"
    assert scheduled[1].payload["parent_close_policy"] == "abandon"


def test_child_results_come_back_to_the_parent():
    run = Run(parent, 1)
    run.task()
    outcome = run.task(child_completed(2, "two"), child_completed(1, "one"))
    assert_completed(outcome)
    assert outcome.result == ["one", "two"]


def test_a_failed_child_raises_child_workflow_error_in_the_parent():
    def catches(ctx):
        try:
            ctx.call_workflow("child").result()
        except ChildWorkflowError as exc:
            return {"status": exc.status, "type": exc.type, "message": exc.message, "id": exc.workflow_id}

    run = Run(catches)
    run.task()
    outcome = run.task(child_failed(1, status="terminated"))
    assert_completed(outcome)
    assert outcome.result == {"status": "terminated", "type": "ValueError", "message": "bad input", "id": "kid-1"}


def test_unknown_parent_close_policy_fails_the_workflow():
    def bad(ctx):
        ctx.call_workflow("child", parent_close_policy="explode")

    outcome = Run(bad).task()
    assert_status(outcome, "failed")
    assert outcome.error["type"] == "ValueError"


# -- continue-as-new ----------------------------------------------------------------


def counter(ctx, count):
    ctx.wait_for_event("tick")
    ctx.continue_as_new(count + 1)


def test_continue_as_new_closes_the_run_with_the_next_runs_arguments():
    run = Run(counter, 5)
    run.task()
    outcome = run.task(raised("tick"))
    assert_status(outcome, "continued_as_new")
    close = outcome.new_events[-1]
    assert close.kind == "WorkflowContinuedAsNew"
    assert close.payload["args"] == [6] and close.payload["kwargs"] == {}
    assert close.payload["events"] == []


def test_continue_as_new_carries_events_no_wait_consumed():
    run = Run(counter, 0)
    run.task()
    outcome = run.task(raised("tick", 1), raised("tick", 2), raised("other", "x"))
    carried = outcome.new_events[-1].payload["events"]
    assert [(e["name"], e["payload"]) for e in carried] == [("tick", {"payload": 2}), ("other", {"payload": "x"})]


def test_continue_as_new_with_unserialisable_arguments_fails_clearly():
    def bad(ctx):
        ctx.continue_as_new(object())

    outcome = Run(bad).task()
    assert_status(outcome, "failed")
    assert "continue_as_new" in outcome.error["message"]


# -- history size -------------------------------------------------------------------


def forever(ctx):
    while True:
        ctx.call_activity("step").result()


def run_with_limits(run: Run, inbox: list[Event], warn: int | None, limit: int | None) -> TaskOutcome:
    from django_durable.engine import run_workflow_task

    delivered = [dataclasses.replace(e, timestamp=run.clock) for e in inbox]
    outcome = run_workflow_task(
        run.fn,
        workflow_id="order-42",
        run_id=run.run_id,
        workflow_name="forever",
        queue="default",
        history=list(run.history),
        inbox=delivered,
        now=run.clock,
        converter=run.converter,
        activity_options=activity_options,
        workflow_options=workflow_options,
        history_warn_events=warn,
        history_max_events=limit,
    )
    for event in outcome.new_events:
        run.history.append(dataclasses.replace(event, seq=len(run.history) + 1))
    run.clock += timedelta(minutes=1)
    return outcome


def test_history_warning_is_given_once_when_the_threshold_is_crossed():
    run = Run(forever)
    warnings = []
    for step in range(5):
        outcome = run_with_limits(run, [completed(step)] if step else [], warn=8, limit=None)
        warnings.append(outcome.history_warning)
    assert [w is not None for w in warnings] == [False, False, True, False, False]
    assert "continue_as_new" in warnings[2]


def test_history_limit_fails_the_run_pointing_to_continue_as_new():
    run = Run(forever)
    outcome = run_with_limits(run, [], warn=None, limit=10)
    step = 1
    while outcome.status == "running":
        outcome = run_with_limits(run, [completed(step)], warn=None, limit=10)
        step += 1
    assert outcome.status == "failed"
    assert outcome.error["type"] == "django_durable.exceptions.HistoryTooLarge"
    assert "continue_as_new" in outcome.error["message"]
    # The failing task records what it received and the failure, and schedules nothing.
    assert "ActivityScheduled" not in kinds(outcome)
    assert kinds(outcome)[-1] == "WorkflowFailed"
    assert len(run.history) <= 10 + len(outcome.new_events)


# -- check_history (durable_replay's engine side) -------------------------------------


def test_check_history_accepts_a_matching_history_and_names_a_mismatch():
    run = Run(two_approvals)
    run.task()
    run.task(raised("approve", "ann"))

    def check(fn):
        return check_history(
            fn,
            workflow_id="order-42",
            run_id=RUN_ID,
            workflow_name="w",
            queue="default",
            history=run.history,
            converter=JSONDataConverter(),
            activity_options=activity_options,
            workflow_options=workflow_options,
        )

    assert check(two_approvals) is None

    def changed(ctx):
        ctx.call_activity("a")

    error = check(changed)
    assert error is not None and "sequence number 1" in str(error)


def test_check_history_of_a_closed_run_compares_how_it_closed():
    run = Run(two_approvals)
    run.task()
    run.task(raised("approve", 1), raised("approve", 2))
    assert run.history[-1].kind == "WorkflowCompleted"

    def waits_for_three(ctx):
        return [ctx.wait_for_event("approve") for _ in range(3)]

    error = check_history(
        waits_for_three,
        workflow_id="order-42",
        run_id=RUN_ID,
        workflow_name="w",
        queue="default",
        history=run.history,
        converter=JSONDataConverter(),
        activity_options=activity_options,
        workflow_options=workflow_options,
    )
    assert error is not None and "WorkflowCompleted" in str(error)


def test_now_advances_to_the_task_in_which_a_consumed_event_arrived():
    def stamps(ctx):
        ctx.wait_for_event("go")
        return ctx.now().isoformat()

    run = Run(stamps)
    run.task()
    second_task_at = T0 + timedelta(hours=5)
    outcome = run.task(raised("go"), at=second_task_at)
    assert outcome.result == second_task_at.isoformat()


@pytest.mark.parametrize("policy", ["terminate", "cancel", "abandon"])
def test_every_parent_close_policy_is_accepted(policy):
    def one(ctx):
        ctx.call_workflow("child", parent_close_policy=policy)

    outcome = Run(one).task()
    scheduled = next(e for e in outcome.new_events if e.kind == "ChildWorkflowScheduled")
    assert scheduled.payload["parent_close_policy"] == policy


# -- edge cases found in review ---------------------------------------------------------


def test_cancel_timer_refuses_a_task_that_is_not_a_timer_at_once():
    def wf(ctx):
        task = ctx.call_activity("a")
        ctx.cancel_timer(task)

    outcome = Run(wf).task()
    assert_status(outcome, "failed")
    assert outcome.error["type"] == "ValueError" and "not a timer" in outcome.error["message"]


def test_the_same_event_task_twice_in_wait_all_consumes_one_event():
    def wf(ctx):
        task = ctx.event("x")
        pair = ctx.wait_all([task, task])
        return [pair, ctx.wait_for_event("x")]

    run = Run(wf)
    run.task()
    outcome = run.task(raised("x", 1), raised("x", 2))
    assert_completed(outcome)
    assert outcome.result == [[1, 1], 2]


def test_except_exception_around_a_call_does_not_swallow_a_cancel():
    def wf(ctx):
        for _ in range(3):
            try:
                ctx.call_activity("a").result()
            except Exception:  # retrying on activity failures, as users do
                pass
        return "finished"

    run = Run(wf)
    run.task()
    outcome = run.task(cancel_requested())
    assert_status(outcome, "canceled")


def test_result_of_a_canceled_timer_raises_cancelled_error():
    def wf(ctx):
        timer = ctx.timer(10)
        ctx.cancel_timer(timer)
        try:
            timer.result()
        except CancelledError as exc:
            return str(exc)

    outcome = Run(wf).task()
    assert_completed(outcome)
    assert "canceled" in outcome.result


def test_a_patched_call_can_be_removed_once_every_run_has_its_marker():
    def v2(ctx):
        if ctx.patched("a"):
            pass
        return ctx.call_activity("b").result()

    def v3(ctx):  # the patch is everywhere: the call and the old branch are gone
        return ctx.call_activity("b").result()

    run = Run(v2)
    first = run.task()
    assert [e.kind for e in first.new_events] == ["WorkflowTaskStarted", "PatchMarker", "ActivityScheduled"]
    run.fn = v3
    outcome = run.task(completed(1, "B"))
    assert_completed(outcome)
    assert outcome.result == "B"


def test_continue_as_new_is_not_stopped_by_the_history_limit():
    def wf(ctx, n):
        ctx.sleep(1)
        ctx.continue_as_new(n + 1)

    run = Run(wf, 0)
    run_with_limits(run, [], warn=None, limit=None)
    outcome = run_with_limits(run, [fired(1)], warn=None, limit=len(run.history) + 1)
    assert_status(outcome, "continued_as_new")


def test_no_durable_call_after_continue_as_new_even_in_a_finally():
    def wf(ctx):
        try:
            ctx.continue_as_new()
        finally:
            ctx.call_activity("cleanup")

    outcome = Run(wf).task()
    assert_status(outcome, "continued_as_new")
    assert "ActivityScheduled" not in kinds(outcome)


def test_swallowing_continue_as_new_does_not_undo_it():
    def wf(ctx):
        try:
            ctx.continue_as_new(7)
        except BaseException:
            pass
        return "went on"

    outcome = Run(wf).task()
    assert_status(outcome, "continued_as_new")
    assert outcome.new_events[-1].payload["args"] == [7]


def test_vars_at_a_cut_in_a_history_takes_the_branch_the_run_took():
    from django_durable.engine.replay import vars_at

    def old(ctx):
        ctx.call_activity("a").result()
        ctx.set_var("v", "old")
        ctx.call_activity("b").result()

    def patched(ctx):
        ctx.call_activity("a").result()
        ctx.set_var("v", "new" if ctx.patched("p") else "old")
        ctx.call_activity("b").result()

    run = Run(old)
    run.task()
    run.task(completed(1))
    run.task(completed(2))
    seen = {
        seq: vars_at(
            patched,
            history=run.history,
            seq=seq,
            workflow_id="order-42",
            run_id=RUN_ID,
            workflow_name="w",
            queue="default",
            converter=JSONDataConverter(),
            activity_options=activity_options,
            workflow_options=workflow_options,
        ).vars
        for seq in range(1, len(run.history) + 1)
    }
    assert {value.get("v") for value in seen.values()} <= {None, "old"}, seen


def test_vars_at_reports_a_workflow_that_exits_instead_of_raising():
    from django_durable.engine.replay import vars_at

    def exits(ctx):
        ctx.set_var("x", 1)
        raise SystemExit(3)

    run = Run(lambda ctx: ctx.set_var("x", 1))
    run.task()
    at = vars_at(
        exits,
        history=run.history,
        seq=len(run.history),
        workflow_id="order-42",
        run_id=RUN_ID,
        workflow_name="w",
        queue="default",
        converter=JSONDataConverter(),
        activity_options=activity_options,
        workflow_options=workflow_options,
    )
    assert at.status == "unknown" and isinstance(at.error, SystemExit)
