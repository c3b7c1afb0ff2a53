"""Time travel in the admin: a run's variables as of any history event, replayed from
history. Pure engine tests of ``vars_at`` first (hand-built histories, no database), then
the admin page through the Django test client on runs driven by ``WorkflowEnvironment``."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_durable import NonDeterminismError, registry
from django_durable.converter import JSONDataConverter
from django_durable.engine import Event
from django_durable.engine.replay import VarsAt, vars_at
from django_durable.models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem
from django_durable.testing import WorkflowEnvironment
from tests.test_engine import Run, activity_options, completed, failed, fired, workflow_options
from tests.testapp import timetravel_workflows as tt

pytestmark = pytest.mark.database

START = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


# -- the engine: vars_at over hand-built histories ---------------------------------------


def counter(ctx, rounds):
    count = 0
    ctx.set_var("counter", count)
    for step in range(rounds):
        if step % 2 == 0:
            count = ctx.call_activity("increment", count).result()
        else:
            ctx.sleep(3600)
            count += 1
        ctx.set_var("counter", count)
    return count


def at(run: Run, seq: int, fn: Any = None) -> VarsAt:
    return vars_at(
        fn or run.fn,
        history=run.history,
        seq=seq,
        workflow_id="order-42",
        run_id=run.run_id,
        workflow_name=run.fn.__name__,
        queue="default",
        converter=run.converter,
        activity_options=activity_options,
        workflow_options=workflow_options,
    )


def counted_run() -> Run:
    run = Run(counter, 3)
    run.task()
    run.task(completed(1, 1))
    run.task(fired(2))
    run.task(completed(3, 3))
    return run


COUNTED_KINDS = [
    "ExecutionStarted",
    "WorkflowTaskStarted",
    "ActivityScheduled",
    "WorkflowTaskStarted",
    "ActivityCompleted",
    "TimerStarted",
    "WorkflowTaskStarted",
    "TimerFired",
    "ActivityScheduled",
    "WorkflowTaskStarted",
    "ActivityCompleted",
    "WorkflowCompleted",
]
# The counter as of each event: nothing before any code ran, then each step once its answer is known.
COUNTER_AT = [None, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]


@pytest.mark.engine
def test_vars_at_every_event_are_what_the_code_had_set_once_it_knew_that_event():
    run = counted_run()
    assert [e.kind for e in run.history] == COUNTED_KINDS
    before = copy.deepcopy(run.history)

    states = [at(run, seq) for seq in range(1, len(run.history) + 1)]

    assert [s.vars.get("counter") for s in states] == COUNTER_AT
    assert [s.seq for s in states] == list(range(1, 13))
    assert all(s.event is run.history[s.seq - 1] and s.error is None for s in states)
    assert states[0].status == "pending" and states[0].vars == {} and states[0].waiting_on is None
    assert [s.status for s in states[1:10]] == ["running"] * 9
    assert [s.waiting_on for s in states[1:10]] == (
        ["activity 'increment'"] * 3 + ["timer until 2024-01-01T13:01:00+00:00"] * 3 + ["activity 'increment'"] * 3
    )
    # Within the last task the code finished: completed, even before the close event.
    assert [(s.status, s.result, s.waiting_on) for s in states[10:]] == [("completed", 3, None)] * 2
    assert run.history == before  # read-only


@pytest.mark.engine
def test_seq_outside_the_history_is_refused():
    run = counted_run()
    for seq in (0, -1, 13):
        with pytest.raises(ValueError, match="between 1 and 12"):
            at(run, seq)


@dataclasses.dataclass
class Basket:
    items: list
    total: int


@pytest.mark.engine
def test_vars_come_decoded_and_as_stored():
    def shopping(ctx):
        ctx.set_var("basket", Basket(["tea"], 3))
        ctx.call_activity("pay", 3).result()

    run = Run(shopping)
    run.task()
    state = at(run, 2)
    assert state.vars == {"basket": Basket(["tea"], 3)}
    assert state.raw_vars == {"basket": run.converter.to_json(Basket(["tea"], 3))}
    assert state.raw_vars["basket"]["fields"] == {"items": ["tea"], "total": 3}


@pytest.mark.engine
def test_code_that_no_longer_matches_reports_the_error_instead_of_vars():
    run = counted_run()

    def reordered(ctx, rounds):
        ctx.set_var("counter", "new code")
        ctx.sleep(60)  # history has an activity first
        return 0

    early = at(run, 2, reordered)  # no durable call recorded yet: nothing to disagree with
    assert early.error is None and early.vars == {"counter": "new code"}
    for seq in (3, 7, 12):
        state = at(run, seq, reordered)
        assert isinstance(state.error, NonDeterminismError), state
        assert "sequence number 1" in str(state.error)
        assert state.status == "unknown" and state.vars == {} and state.raw_vars == {}


@pytest.mark.engine
def test_a_close_event_the_code_would_no_longer_write_is_an_error_at_that_event_only():
    run = counted_run()

    def fails_at_the_end(ctx, rounds):
        counter(ctx, rounds)
        raise RuntimeError("changed my mind")

    just_before = at(run, 11, fails_at_the_end)  # the code now fails where it completed
    assert just_before.error is None
    assert just_before.status == "failed" and just_before.failure["message"] == "changed my mind"
    assert just_before.vars == {"counter": 3}
    closed = at(run, 12, fails_at_the_end)
    assert isinstance(closed.error, NonDeterminismError)
    assert "WorkflowCompleted" in str(closed.error)


@pytest.mark.engine
def test_a_workflow_failure_is_a_status_with_the_failure_not_an_error():
    def strict(ctx):
        ctx.set_var("stage", "charging")
        ctx.call_activity("charge", 5).result()

    run = Run(strict)
    run.task()
    run.task(failed(1, "card declined"))
    state = at(run, len(run.history))
    assert run.history[-1].kind == "WorkflowFailed"
    assert state.error is None and state.status == "failed"
    assert state.failure["type"] == "django_durable.exceptions.ActivityError"
    assert "card declined" in state.failure["message"] and state.vars == {"stage": "charging"}


class UnreadableConverter(JSONDataConverter):
    def from_json(self, data: Any) -> Any:
        raise ValueError("cannot read what was stored")


@pytest.mark.engine
def test_a_crash_in_replay_is_reported_not_raised():
    run = counted_run()
    run.converter = UnreadableConverter()
    state = at(run, 5)
    assert isinstance(state.error, ValueError) and state.status == "unknown" and state.vars == {}


def appended(run: Run, kind: str, **payload: Any) -> None:
    run.history.append(Event(kind=kind, timestamp=run.clock, payload=payload, seq=len(run.history) + 1))


@pytest.mark.engine
def test_suspended_terminated_and_canceled_runs():
    run = Run(counter, 3)
    appended(run, "ExecutionSuspended", reason="before it started")
    appended(run, "WorkflowTerminated", reason="not needed")
    assert at(run, 2).status == "pending"
    assert (at(run, 3).status, at(run, 3).vars) == ("terminated", {})

    run = Run(counter, 3)
    run.task()
    appended(run, "ExecutionSuspended", reason="maintenance")
    suspended = at(run, 4)
    assert suspended.status == "suspended" and suspended.vars == {"counter": 0}
    assert suspended.waiting_on == "activity 'increment'"
    appended(run, "ExecutionResumed")
    assert at(run, 5).status == "running"
    appended(run, "WorkflowTerminated", reason="enough")
    terminated = at(run, 6)
    assert terminated.error is None and terminated.status == "terminated"
    assert terminated.vars == {"counter": 0} and terminated.waiting_on is None

    run = Run(counter, 3)  # failed by the history limit: from outside its code, which still waits
    run.task()
    appended(run, "WorkflowTaskStarted")
    too_large = {"type": "django_durable.exceptions.HistoryTooLarge", "message": "too long"}
    appended(run, "WorkflowFailed", error=too_large)
    limited = at(run, 5)
    assert limited.error is None and limited.status == "failed" and limited.failure == too_large
    assert limited.vars == {"counter": 0} and limited.waiting_on is None

    run = Run(counter, 3)
    run.task()
    run.task(Event(kind="CancelRequested", timestamp=None))  # type: ignore[arg-type]
    assert run.history[-1].kind == "WorkflowCanceled"
    assert at(run, len(run.history) - 1).status == "canceled"
    assert at(run, len(run.history)).status == "canceled"


# -- the admin page ----------------------------------------------------------------


@pytest.fixture
def counted(db: None) -> WorkflowInstance:
    """A completed tt_counter run of three steps (activity, timer, activity)."""
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tt.tt_counter, 3, workflow_id="tt-counted")
        assert env.result(handle) == 3
    return WorkflowInstance.objects.get(run_id=handle.run_id)


def url(instance: WorkflowInstance, seq: int | str) -> str:
    return f"/admin/django_durable/workflowinstance/{instance.pk}/at/{seq}/"


def shown_counter(page: str) -> str | None:
    match = re.search(r'data-var="counter">\s*<th scope="row">counter</th><td><pre>([^<]*)</pre>', page)
    return match.group(1) if match else None


def test_the_page_steps_through_the_counter(admin_client, counted):
    kinds = list(HistoryEvent.objects.filter(instance=counted).values_list("kind", flat=True))
    assert kinds == COUNTED_KINDS
    last = len(kinds)
    for seq, expected in enumerate(COUNTER_AT, start=1):
        response = admin_client.get(url(counted, seq))
        assert response.status_code == 200
        page = response.content.decode()
        assert shown_counter(page) == (None if expected is None else str(expected)), seq
        assert response.context["at"].vars.get("counter") == expected
        assert f"Event {seq}: {kinds[seq - 1]}" in page
        assert f'aria-current="step">\n          {seq}. {kinds[seq - 1]}' in page
        assert (f'href="{url(counted, seq - 1)}" rel="prev"' in page) == (seq > 1)
        assert (f'href="{url(counted, 1)}" rel="first"' in page) == (seq > 1)
        assert (f'href="{url(counted, seq + 1)}" rel="next"' in page) == (seq < last)
        assert (f'href="{url(counted, last)}" rel="last"' in page) == (seq < last)
        assert ('rel="prev"' in page, 'rel="next"' in page) == (seq > 1, seq < last)
        assert f'href="/admin/django_durable/workflowinstance/{counted.pk}/change/"' in page  # breadcrumbs
        assert f'name="seq" min="1" max="{last}" value="{seq}"' in page

    first = admin_client.get(url(counted, 1)).content.decode()
    assert "No variables had been set." in first and "no workflow code had run yet" in first
    finished = admin_client.get(url(counted, last)).content.decode()
    assert "completed" in finished and "&quot;done&quot;: true" in finished
    assert '"done": true' not in finished  # JSON in <pre> is escaped like any text


def test_the_event_and_what_changed_at_it_are_shown(admin_client, counted):
    page = admin_client.get(url(counted, 5)).content.decode()  # the first activity's completion
    assert "ActivityCompleted" in page and "tt_increment" in page
    payload = HistoryEvent.objects.get(instance=counted, seq=5).payload
    assert payload["result"] == 1
    shown = "{\n  &quot;attempt&quot;: 1,\n  &quot;result&quot;: 1\n}"
    assert f'<pre class="durable-tt-payload">{shown}</pre>' in page
    assert re.search(r'<tr class="row1 changed" data-var="counter">', page)
    assert "waiting on timer until" in page

    unchanged = admin_client.get(url(counted, 6)).content.decode()
    assert re.search(r'<tr class="row1" data-var="counter">', unchanged)


def test_the_jump_form_goes_to_the_chosen_event(admin_client, counted):
    assert admin_client.get(url(counted, 3), {"seq": "7"})["Location"] == url(counted, 7)
    assert admin_client.get(url(counted, 3), {"seq": "999"})["Location"] == url(counted, 12)
    assert admin_client.get(url(counted, 3), {"seq": "0"})["Location"] == url(counted, 1)
    assert admin_client.get(url(counted, 3), {"seq": "x"})["Location"] == url(counted, 3)


def test_the_side_list_shows_the_events_around_the_chosen_one(admin_client, db):
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tt.tt_counter, 12, workflow_id="tt-long")
        assert env.result(handle) == 12
    instance = WorkflowInstance.objects.get(run_id=handle.run_id)
    last = instance.history_length
    assert last == 39
    page = admin_client.get(url(instance, 20)).content.decode()
    links = re.findall(r'<a href="/admin/django_durable/workflowinstance/\d+/at/(\d+)/">\d+\. ', page)
    listed = [int(n) for n in links]
    assert listed == [n for n in range(8, 33) if n != 20]
    assert "from event 1" in page and f"to event {last}" in page
    near_start = admin_client.get(url(instance, 2)).content.decode()
    assert "from event 1" not in near_start and f"to event {last}" in near_start


@pytest.mark.parametrize("seq", [0, 13, 1000])
def test_events_outside_the_history_are_not_found(admin_client, counted, seq):
    assert admin_client.get(url(counted, seq)).status_code == 404


def test_an_unknown_run_is_not_found(admin_client, db):
    assert admin_client.get("/admin/django_durable/workflowinstance/987654/at/1/").status_code == 404
    assert admin_client.get("/admin/django_durable/workflowinstance/not-a-pk/at/1/").status_code == 404


def test_only_staff_with_view_permission_may_travel(client, counted):
    target = url(counted, 5)
    anonymous = client.get(target)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")

    users = get_user_model().objects
    client.force_login(users.create_user("customer", password="x"))
    refused = client.get(target)
    assert refused.status_code == 302 and refused["Location"].startswith("/admin/login/")

    client.force_login(users.create_user("intern", password="x", is_staff=True))
    assert client.get(target).status_code == 403

    viewer = users.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_workflowinstance"))
    client.force_login(viewer)
    response = client.get(target)
    assert response.status_code == 200 and shown_counter(response.content.decode()) == "1"


def test_the_page_writes_nothing_and_its_queries_do_not_grow_with_history(
    admin_client, counted, django_assert_max_num_queries
):
    def snapshot() -> list[Any]:
        return [
            WorkflowInstance.objects.count(),
            HistoryEvent.objects.count(),
            InboxEvent.objects.count(),
            WorkItem.objects.count(),
            list(WorkflowInstance.objects.values().order_by("pk")),
        ]

    admin_client.get(url(counted, 1))  # the session is settled before counting
    before = snapshot()
    for seq in (1, 5, 12):
        # The session, the user, the run, its history's size (checked before reading it), its history.
        with CaptureQueriesContext(connection) as queries, django_assert_max_num_queries(5):
            assert admin_client.get(url(counted, seq)).status_code == 200
        statements = [q["sql"].lstrip().split()[0].upper() for q in queries.captured_queries]
        assert statements and set(statements) == {"SELECT"}, statements
    assert snapshot() == before


def test_code_that_no_longer_matches_shows_the_error_not_a_500(admin_client, counted, monkeypatch):
    def rewritten(ctx, rounds):
        ctx.set_var("counter", -1)
        ctx.sleep(60)
        return -1

    definition = registry.get_workflow_definition("tt_counter")
    monkeypatch.setitem(registry._workflows, "tt_counter", dataclasses.replace(definition, fn=rewritten))

    broken = admin_client.get(url(counted, 5))
    assert broken.status_code == 200
    page = broken.content.decode()
    assert "NonDeterminismError" in page and "no longer replays its history" in page
    assert "sequence number 1" in page and shown_counter(page) is None
    # Before the first durable call was recorded the new code still replays.
    assert shown_counter(admin_client.get(url(counted, 2)).content.decode()) == "-1"


def test_an_unregistered_workflow_is_explained(admin_client, counted, monkeypatch):
    monkeypatch.delitem(registry._workflows, "tt_counter")
    response = admin_client.get(url(counted, 5))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Cannot replay: no workflow is registered as “tt_counter”" in page
    assert "ActivityCompleted" in page and 'rel="next"' in page  # the history still steps
