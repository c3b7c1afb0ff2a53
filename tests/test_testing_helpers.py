"""django_durable.testing: workflows run in the test's own thread and transaction, under a
clock the test moves, with activities replaced by fakes. No worker processes here."""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.test import TestCase

import django_durable as durable
from django_durable import registry, store
from django_durable.conf import durable_settings
from django_durable.models import WorkflowInstance
from django_durable.testing import StepLimitExceeded, WorkflowEnvironment, WorkflowStuck
from tests.testapp import testing_workflows as tw
from tests.testapp.models import ActivityRun

pytestmark = pytest.mark.database

START = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name}-{uuid.uuid4().hex[:8]}"


def attempts(key: str) -> list[int]:
    return list(ActivityRun.objects.filter(key=key).order_by("id").values_list("attempt", flat=True))


# -- the clock -------------------------------------------------------------------------


def test_a_thirty_day_sleep_finishes_in_milliseconds_with_now_thirty_days_later(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = threading.active_count()
    # Every wait for real time to pass, whatever the machine's load: a time.sleep, or a
    # Condition.wait (under Event.wait, Queue.get and the like) that ran out its timeout.
    # (The hand-offs to the workflow's thread wait on conditions that are notified at once.)
    waits: list[tuple[str, float | None]] = []
    sleep, wait = time.sleep, threading.Condition.wait

    def spied_sleep(seconds: float) -> None:
        waits.append(("time.sleep", seconds))
        sleep(seconds)

    def spied_wait(self: threading.Condition, timeout: float | None = None) -> bool:
        notified = wait(self, timeout)
        if not notified:
            waits.append(("Condition.wait timed out", timeout))
        return notified

    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_long_sleep, 30)
        began = time.perf_counter()
        with monkeypatch.context() as patch:
            patch.setattr(time, "sleep", spied_sleep)
            patch.setattr(threading.Condition, "wait", spied_wait)
            result = env.result(handle)
        elapsed = time.perf_counter() - began
        assert env.now == START + 30 * DAY
        assert threading.active_count() == threads  # no worker, renewer or workflow thread left behind
    assert waits == [], f"the environment waited on the real clock: {waits}"
    # A few tens of milliseconds; the bound only catches real seconds passing, on any machine.
    assert elapsed < 10.0, f"took {elapsed:.3f}s of wall time"
    assert result == {"started": START.isoformat(), "woke": (START + 30 * DAY).isoformat()}
    assert env.history_kinds(handle) == [
        "ExecutionStarted",
        "WorkflowTaskStarted",
        "TimerStarted",
        "WorkflowTaskStarted",
        "TimerFired",
        "WorkflowCompleted",
    ]
    assert handle.describe().closed_at == START + 30 * DAY


def test_the_clock_starts_at_the_real_time_by_default_and_must_be_aware(db: None) -> None:
    before = datetime.datetime.now(datetime.timezone.utc)
    with WorkflowEnvironment() as env:
        assert before <= env.now <= datetime.datetime.now(datetime.timezone.utc)
        handle = env.start(tw.th_long_sleep, 1)
        assert env.result(handle)["started"] == (env.now - DAY).isoformat()
    with pytest.raises(ValueError, match="timezone-aware"):
        WorkflowEnvironment(start_time=datetime.datetime(2030, 1, 1))


def test_run_until_idle_moves_no_time_and_advance_steps_through_every_timer_due(db: None, key: str) -> None:
    fake_charge = mock.Mock(side_effect=lambda key, amount: f"fake-receipt-{amount}")
    with WorkflowEnvironment(start_time=START, activities={tw.th_charge: fake_charge}) as env:
        handle = env.start(tw.th_subscription, key, 100, 3)
        env.run_until_idle()
        assert env.now == START
        assert handle.status() == "running" and handle.vars() == {"cycle": 0}
        (timer,) = handle.describe().pending_work
        assert timer["kind"] == "timer" and timer["due_at"] == START + 30 * DAY

        env.advance(days=30)
        assert env.now == START + 30 * DAY
        assert handle.vars() == {"cycle": 1, "paid_at": (START + 30 * DAY).isoformat()}

        # One jump of 60 days still fires the timers at day 60 and day 90, each at its time.
        env.advance(datetime.timedelta(days=60))
        assert handle.status() == "completed"
        assert handle.vars()["paid_at"] == (START + 90 * DAY).isoformat()
        assert env.result(handle) == ["fake-receipt-100"] * 3
        assert env.now == START + 90 * DAY
    assert fake_charge.call_args_list == [mock.call(f"{key}:{cycle}", 100) for cycle in range(3)]
    assert attempts(f"{key}:0") == []  # the real activity never ran
    assert not ActivityRun.objects.exists()


def test_advance_takes_seconds_and_refuses_to_go_backwards(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        env.advance(90.5)
        assert env.now == START + datetime.timedelta(seconds=90.5)
        with pytest.raises(ValueError, match="backwards"):
            env.advance(hours=-1)
        with pytest.raises(TypeError):
            env.advance(1, hours=1)
        assert env.now == START + datetime.timedelta(seconds=90.5)


def test_result_with_a_virtual_timeout_raises_then_goes_on(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_long_sleep, 30)
        with pytest.raises(durable.TimeoutError, match="still running after 1 day"):
            env.result(handle, timeout=DAY)
        assert env.now == START + DAY
        assert env.result(handle)["woke"] == (START + 30 * DAY).isoformat()


# -- fakes -------------------------------------------------------------------------------


def test_fakes_by_name_replace_the_real_activity(db: None, key: str) -> None:
    with WorkflowEnvironment(start_time=START, activities={"th_charge": lambda key, amount: "by-name"}) as env:
        assert env.result(env.start(tw.th_subscription, key, 5, 2)) == ["by-name", "by-name"]
    assert not ActivityRun.objects.filter(key__startswith=key).exists()


def test_the_real_activity_runs_inline_without_a_fake(db: None, key: str) -> None:
    """The control for the fake tests: the side effect they check for does happen."""
    with WorkflowEnvironment(start_time=START) as env:
        assert env.result(env.start(tw.th_subscription, key, 7, 1)) == ["real-receipt-7"]
    assert attempts(f"{key}:0") == [1]


def test_a_plain_fake_keeps_the_original_retry_policy(db: None, key: str) -> None:
    seen: list[int] = []

    def fails_once(key: str, amount: int) -> str:
        seen.append(durable.activity_info().attempt)
        if len(seen) == 1:
            raise ConnectionError("gateway down")
        return "fake-after-retry"

    with WorkflowEnvironment(start_time=START, activities={tw.th_charge: fails_once}) as env:
        handle = env.start(tw.th_subscription, key, 1, 1)
        assert env.result(handle) == ["fake-after-retry"]
        # th_charge's policy: retry after 60 s. The fake's failure waited for it, virtually.
        assert env.now == START + 30 * DAY + datetime.timedelta(seconds=60)
    assert seen == [1, 2]


def test_a_decorated_fake_brings_its_own_options(db: None, key: str) -> None:
    with WorkflowEnvironment(start_time=START, activities={tw.th_charge: tw.th_charge_declines_at_once}) as env:
        handle = env.start(tw.th_subscription, key, 100, 1)
        assert env.result(handle) == [{"error": "100 declined", "attempt": 1}]
        assert env.now == START + 30 * DAY  # no retry
        scheduled = [event for event in handle.history() if event.kind == "ActivityScheduled"]
        assert scheduled[0].name == "th_charge" and scheduled[0].payload["options"]["retry"]["maximum_attempts"] == 1


def test_unknown_activities_and_bad_fakes_are_refused(db: None) -> None:
    def not_an_activity() -> None: ...

    with pytest.raises(durable.NotRegistered, match="no_such_activity"):
        WorkflowEnvironment(activities={"no_such_activity": lambda: None})
    with pytest.raises(durable.NotRegistered, match="not decorated"):
        WorkflowEnvironment(activities={not_an_activity: lambda: None})
    with pytest.raises(TypeError, match="callable"):
        WorkflowEnvironment(activities={tw.th_charge: "receipt"})
    assert store.clock_override is None


def test_exit_restores_the_clock_and_the_activities_even_on_exception(db: None) -> None:
    fake = mock.Mock(return_value="fake")
    with (
        pytest.raises(LookupError, match="the test body failed"),
        WorkflowEnvironment(start_time=START, activities={tw.th_charge: fake}) as env,
    ):
        assert store.db_now() == START
        assert registry.get_activity_definition(tw.th_charge).fn is fake
        env.start(tw.th_long_sleep, 1)
        raise LookupError("the test body failed")
    assert store.clock_override is None
    assert abs(store.db_now() - datetime.datetime.now(datetime.timezone.utc)) < datetime.timedelta(minutes=1)
    definition = registry.get_activity_definition(tw.th_charge)
    assert definition.fn is tw.th_charge and definition.retry.initial_interval == 60
    with pytest.raises(RuntimeError, match="with block"):
        env.run_until_idle()


def test_environments_do_not_nest(db: None) -> None:
    with WorkflowEnvironment(start_time=START):
        with pytest.raises(RuntimeError, match="do not nest"), WorkflowEnvironment():
            pass
        assert store.db_now() == START  # the outer environment's clock is untouched
    assert store.clock_override is None


# -- orchestration under the test clock -------------------------------------------------------


def test_an_event_that_arrives_before_the_timeout_wins_and_drops_the_timer(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_approval, 3)
        env.advance(hours=5)
        assert handle.status() == "running" and "approve" in handle.describe().waiting_on
        handle.signal("approve", {"by": "ann"})
        assert env.result(handle) == {
            "outcome": "approved",
            "by": "ann",
            "at": (START + datetime.timedelta(hours=5)).isoformat(),
        }
        assert env.now == START + datetime.timedelta(hours=5)
        assert "TimerCanceled" in env.history_kinds(handle)
        assert handle.describe().pending_work == []


def test_a_timeout_that_comes_first_wins(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_approval, 3)
        assert env.result(handle) == {"outcome": "timed out", "at": (START + 3 * DAY).isoformat()}
        assert env.now == START + 3 * DAY
        assert "TimerFired" in env.history_kinds(handle)
        with pytest.raises(durable.WorkflowNotOpen):
            handle.signal("approve", {"by": "too late"})


def test_child_workflows_run_and_fail_under_the_test_clock(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_parent, 2, workflow_id="th-parent")
        assert env.result(handle) == {
            "doubled": [2, 4],
            "failure": {"status": "failed", "message": "the child gave up"},
            # Children sleep 1 and 2 days side by side, then the failing child one more.
            "at": (START + 3 * DAY).isoformat(),
        }
        child = durable.get_workflow("th-parent-child-2")
        assert child.status() == "completed" and child.result() == 4
        assert "ChildWorkflowFailed" in env.history_kinds(handle)


def test_continue_as_new_is_followed_to_the_last_run(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_counter, 0, 3, workflow_id="th-counter")
        assert env.result(handle) == {"n": 3, "at": (START + 3 * DAY).isoformat()}
        runs = list(
            WorkflowInstance.objects.filter(workflow_id="th-counter").order_by("id").values_list("status", flat=True)
        )
        assert runs == ["continued_as_new"] * 3 + ["completed"]
        assert durable.get_workflow("th-counter").vars() == {"n": 3}


def test_events_not_consumed_move_to_the_next_run(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_collector, [], 3, workflow_id="th-collector")
        for item in (1, 2, 3):
            handle.signal("item", item)
        assert env.result(handle) == [1, 2, 3]
        assert WorkflowInstance.objects.filter(workflow_id="th-collector").count() == 3
        assert env.now == START


def test_cancel_lets_the_workflow_clean_up_and_closes_it_canceled(db: None, key: str) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_cancellable, key)
        env.run_until_idle()
        handle.cancel()
        with pytest.raises(durable.WorkflowFailed) as failure:
            env.result(handle)
        assert failure.value.status == "canceled"
        assert env.now == START  # the year-long timer was not waited for
        assert attempts(f"{key}:cleanup") == [1]
        assert env.history_kinds(handle)[-1] == "WorkflowCanceled"


def test_activity_retries_with_backoff_are_skipped(db: None, key: str) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_retrying, key, 3)
        began = time.perf_counter()
        result = env.result(handle)
        assert time.perf_counter() - began < 5.0
    hours = datetime.timedelta(hours=1 + 2 + 4)  # initial_interval 1 h, backoff coefficient 2
    assert result == {"attempt": 4, "at": (START + hours).isoformat()}
    assert attempts(key) == [1, 2, 3, 4]


def test_workflow_task_backoff_is_skipped(db: None) -> None:
    tw.TASK_CRASHES["left"] = 3
    try:
        with WorkflowEnvironment(start_time=START) as env:
            handle = env.start(tw.th_task_crashes_then_works)
            env.run_until_idle()
            assert handle.describe().task_error["message"] == "simulated crash of the workflow task"
            result = env.result(handle)
    finally:
        tw.TASK_CRASHES["left"] = 0
    initial, maximum = durable_settings.WORKFLOW_TASK_RETRY_INITIAL, durable_settings.WORKFLOW_TASK_RETRY_MAXIMUM
    backoff = sum(min(initial * 2**failure, maximum) for failure in range(3))
    assert result == (START + datetime.timedelta(seconds=backoff)).isoformat()
    assert handle.describe().task_error is None


def test_an_activity_awaiting_completion_by_token_finishes_inline(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_awaits_external, "order-1", workflow_id="th-external")
        with pytest.raises(WorkflowStuck, match="'th_external' .*awaits completion by task token"):
            env.result(handle)
        (work,) = handle.describe().pending_work
        env.advance(hours=2)
        durable.complete_activity_by_id("th-external", str(work["task_id"]), "shipped")
        assert env.result(handle) == {"answer": "shipped", "at": (START + 2 * datetime.timedelta(hours=1)).isoformat()}


def test_a_start_to_close_timeout_of_an_awaiting_activity_is_skipped_to(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_awaits_external_with_timeout, "order-2")
        result = env.result(handle)
    assert result == {
        "error": "django_durable.exceptions.TimeoutError",
        "at": (START + datetime.timedelta(hours=1)).isoformat(),
    }


# -- runs that can never progress ------------------------------------------------------------


def test_a_run_waiting_for_an_event_nobody_sends_is_a_clear_error_not_a_hang(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_waits_forever, workflow_id="th-forever")
        began = time.perf_counter()
        with pytest.raises(WorkflowStuck) as stuck:
            env.result(handle)
        assert time.perf_counter() - began < 5.0
        message = str(stuck.value)
        assert "'th-forever'" in message and "event 'never-sent'" in message and "handle.signal" in message
        assert env.now == START  # no amount of time would help, so none passed
        handle.signal("never-sent", "at last")
        assert env.result(handle) == "at last"


def test_a_stuck_child_is_named_in_the_parents_error(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_waits_on_child, workflow_id="th-waiting-parent")
        with pytest.raises(WorkflowStuck) as stuck:
            env.result(handle)
    message = str(stuck.value)
    assert "Workflow 'th-waiting-parent'" in message and "child workflow 'th_waits_forever'" in message
    assert "Other open runs: 'th-waiting-parent-child' (running, waiting on event 'never-sent')" in message


def test_other_stuck_runs_do_not_stop_a_run_that_can_finish(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        stuck = env.start(tw.th_waits_forever)
        handle = env.start(tw.th_long_sleep, 1)
        assert env.result(handle)["woke"] == (START + DAY).isoformat()
        assert stuck.status() == "running"


def test_a_parked_workflow_task_is_a_clear_error(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_crashes_every_task)
        with pytest.raises(WorkflowStuck) as stuck:
            env.result(handle)
    message = str(stuck.value)
    assert f"failed {durable_settings.WORKFLOW_TASK_MAX_FAILURES} times and is parked" in message
    assert "workflow code called sys.exit()" in message


def test_a_suspended_run_is_stuck_until_resumed(db: None) -> None:
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_long_sleep, 1)
        env.run_until_idle()
        handle.suspend("maintenance")
        with pytest.raises(WorkflowStuck, match="It is suspended: handle.resume"):
            env.result(handle)
        assert env.now == START + DAY  # its timer fired; the workflow task waits for resume()
        handle.resume()
        assert env.result(handle)["woke"] == (START + DAY).isoformat()


def test_a_workflow_that_never_waits_hits_the_step_limit(db: None) -> None:
    with WorkflowEnvironment(start_time=START, max_steps=30) as env:
        handle = env.start(tw.th_spinner)
        with pytest.raises(StepLimitExceeded, match="never waits"):
            env.run_until_idle()
        assert handle.status() == "running"


# -- django.test.TestCase, the handle tools and the admin ---------------------------------------


class WorkflowEnvironmentInATestCase(TestCase):
    def test_subscription_with_a_fake_handles_and_the_admin(self) -> None:
        with WorkflowEnvironment(start_time=START, activities={tw.th_charge: lambda key, amount: "tc"}) as env:
            handle = env.start(tw.th_subscription, "tc", 10, 2, workflow_id="th-testcase")
            env.advance(days=30)
            self.assertEqual(handle.vars(), {"cycle": 1, "paid_at": (START + 30 * DAY).isoformat()})
            description = handle.describe()
            self.assertEqual((description.status, description.started_at), ("running", START))
            self.assertEqual(env.result(handle), ["tc", "tc"])
            self.assertEqual(handle.history()[-1].kind, "WorkflowCompleted")

        admin = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw")
        self.client.force_login(admin)
        instance = WorkflowInstance.objects.get(workflow_id="th-testcase")
        page = self.client.get(f"/admin/django_durable/workflowinstance/{instance.pk}/change/")
        self.assertEqual(page.status_code, 200)
        self.assertContains(page, "WorkflowCompleted")
        self.assertFalse(ActivityRun.objects.exists())
        self.assertIsNone(store.clock_override)
