"""The time-travel page runs a run's workflow code in the web process: only as a worker
would run it (the replay set-up of ``executors.replayer``: no database access, at most
``WORKFLOW_TASK_TIMEOUT`` without a durable call), once per page, and not at all for a
history over ``TIME_TRAVEL_MAX_EVENTS`` / ``TIME_TRAVEL_MAX_BYTES``. ``durable_replay``
replays through the same set-up. The admin through the Django test client, as a superuser,
on runs a ``WorkflowEnvironment`` drove."""

from __future__ import annotations

import datetime
import io
import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from django_durable import store
from django_durable.checks import check_settings
from django_durable.engine.events import events_size
from django_durable.engine.replay import vars_at
from django_durable.exceptions import CancelledError
from django_durable.models import WorkflowInstance
from django_durable.testing import WorkflowEnvironment
from tests.test_admin_timetravel import counted_run, url
from tests.test_engine import Run, activity_options, completed, fired, workflow_options
from tests.test_engine_orchestration import cancel_requested, raised
from tests.testapp import timetravel_workflows as tt

pytestmark = pytest.mark.database

START = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
BOUND = 10.0  # seconds: far above the 0.5 s task timeout, far below the 20 s the code blocks for


def durable(**overrides: Any) -> override_settings:
    return override_settings(DURABLE={**settings.DURABLE, **overrides})


@pytest.fixture(autouse=True)
def fresh_counts() -> Iterator[None]:
    tt.STARTS.clear()
    tt.RELEASE.clear()
    yield
    tt.RELEASE.set()  # a replay this test left blocked goes on, and ends


def completed_run(workflow: object, steps: int, workflow_id: str) -> WorkflowInstance:
    """A run of ``workflow`` finished in-process (its result is ``steps``), with STARTS
    cleared so that a test counts only the replays it causes."""
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(workflow, steps, workflow_id=workflow_id)
        assert env.result(handle) == steps
    tt.STARTS.clear()
    return WorkflowInstance.objects.get(run_id=handle.run_id)


@pytest.fixture
def counted(db: None) -> WorkflowInstance:
    """A completed tt_counter run of three steps (activity, timer, activity): 12 events."""
    return completed_run(tt.tt_counter, 3, "tt-counted")


@pytest.fixture
def guarded(db: None) -> WorkflowInstance:
    """A completed tt_guarded run of two activities, recorded before its code misbehaves."""
    return completed_run(tt.tt_guarded, 2, "tt-guarded")


def problem(page: str) -> str:
    start = page.index('class="problem')
    return page[start : page.index("</div>", start)] if "<div" in page[start - 5 : start] else page[start:]


# -- one replay per page ---------------------------------------------------------------


def test_each_page_runs_the_workflow_code_once(admin_client, counted):
    ran = {}
    for seq in range(1, counted.history_length + 1):
        tt.STARTS.clear()
        assert admin_client.get(url(counted, seq)).status_code == 200
        ran[seq] = tt.STARTS["tt_counter"]
    assert ran == {1: 0, **{seq: 1 for seq in range(2, 13)}}  # no code had run as of event 1


def test_what_changed_at_an_event_comes_from_the_same_replay(admin_client, counted):
    changed = {}
    for seq in range(2, counted.history_length + 1):
        page = admin_client.get(url(counted, seq)).content.decode()
        changed[seq] = {name for name in ("counter", "done") if f'changed" data-var="{name}"' in page}
    assert changed == {
        2: {"counter"},
        3: set(),
        4: set(),
        5: {"counter"},
        6: set(),
        7: set(),
        8: {"counter"},
        9: set(),
        10: set(),
        11: {"counter", "done"},
        12: set(),
    }


STARTS: list[int] = []


def busy(ctx, n):
    """Sets variables between calls and waits, and waits every way there is."""
    STARTS.append(1)
    ctx.set_var("phase", "start")
    first = ctx.call_activity("fetch", 1)
    ctx.set_var("phase", "scheduled")
    second = ctx.call_activity("fetch", 2)
    ctx.set_var("fetched", ctx.wait_all([first, second]))
    timer, go = ctx.timer(3600), ctx.event("go")
    ctx.set_var("winner", "go" if ctx.wait_any([timer, go]) is go else "timer")
    ctx.set_var("early", ctx.wait_for_event("early"))
    try:
        for step in range(n):
            slow = ctx.call_activity("slow", step)
            ctx.set_var("waiting", step)
            ctx.set_var("slept", slow.result())
    except CancelledError:
        ctx.set_var("phase", "canceling")
        ctx.call_activity("cleanup").result()
    ctx.set_var("phase", "done")
    return n


def busy_run() -> Run:
    run = Run(busy, 5)
    run.task()
    run.task(completed(2, "b"))
    run.task(raised("early", "before its wait"), completed(1, "a"))
    run.task(raised("go"), fired(3))
    run.task(completed(6, 0))
    # The cancellation meets the code at its next call: a replay without it makes that call and goes on.
    run.task(completed(7, 1), cancel_requested())
    run.task(completed(8))
    assert run.history[-1].kind == "WorkflowCompleted"
    return run


@pytest.mark.engine
@pytest.mark.parametrize("make_run", [counted_run, busy_run])
def test_the_variables_before_an_event_are_those_a_replay_of_the_events_before_it_has(make_run):
    run = make_run()

    def at(seq: int):
        return vars_at(
            run.fn,
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

    states, starts = [], []
    for seq in range(1, len(run.history) + 1):
        STARTS.clear()
        states.append(at(seq))
        starts.append(len(STARTS))
    assert all(state.error is None for state in states)
    for before, state in itertools.pairwise(states):
        assert state.raw_vars_before == before.raw_vars, (state.seq, state.event.kind)
    if run.fn is busy:  # the code runs once per event, but twice for that cancellation
        cancel = next(state.seq for state in states if state.event.kind == "CancelRequested")
        canceled = states[cancel - 1]
        assert canceled.raw_vars_before["waiting"] == 2 and canceled.raw_vars["waiting"] == 1
        assert starts == [0] + [1] * (cancel - 2) + [2] + [1] * (len(states) - cancel)


# -- the worker's guards -------------------------------------------------------------------


def test_code_that_blocks_is_stopped_at_the_task_timeout(admin_client, guarded, monkeypatch):
    monkeypatch.setattr(tt, "GUARDED_MISCHIEF", "block")
    with durable(WORKFLOW_TASK_TIMEOUT=0.5):
        began = time.monotonic()
        response = admin_client.get(url(guarded, 5))
        took = time.monotonic() - began
    assert response.status_code == 200 and took < BOUND, took
    page = response.content.decode()
    shown = problem(page)
    assert "django_durable.exceptions.WorkflowTaskError" in shown
    assert "The replay of this workflow's code was stopped" in shown
    assert "WORKFLOW_TASK_TIMEOUT (0.5 s)" in shown
    assert "Workflow code ran for more than 0.5s without reaching a durable call" in shown
    assert "RELEASE.wait(20)" in shown  # where it was
    assert 'data-var="step"' not in page and tt.STARTS["tt_guarded"] == 1

    # The stopped code is left behind, and ends at its next durable call once unblocked.
    left = [t for t in threading.enumerate() if t.name == "durable-workflow-tt-guarded"]
    assert len(left) == 1
    tt.RELEASE.set()
    left[0].join(BOUND)
    assert not left[0].is_alive()


def test_code_that_queries_the_database_is_refused(admin_client, guarded, monkeypatch):
    monkeypatch.setattr(tt, "GUARDED_MISCHIEF", "query")
    for seq in (2, 5, guarded.history_length):
        tt.STARTS.clear()
        response = admin_client.get(url(guarded, seq))
        assert response.status_code == 200
        page = response.content.decode()
        shown = problem(page)
        assert "django_durable.exceptions.DatabaseAccessInWorkflow" in shown
        assert "Workflow code ran a database query (SELECT " in shown
        assert "query the database in an activity" in shown
        assert 'data-var="runs"' not in page and tt.STARTS["tt_guarded"] == 1


# -- the size limit ------------------------------------------------------------------------


def test_a_history_over_the_event_limit_is_not_replayed(admin_client, counted):
    with durable(TIME_TRAVEL_MAX_EVENTS=11), CaptureQueriesContext(connection) as queries:
        response = admin_client.get(url(counted, 5))
    assert response.status_code == 200 and tt.STARTS["tt_counter"] == 0
    assert response.context["at"] is None
    page = response.content.decode()
    assert (
        "Not replayed: this run&#x27;s history has 12 events, more than the 11 that this page replays "
        "(DURABLE[&quot;TIME_TRAVEL_MAX_EVENTS&quot;])"
    ) in problem(page)
    assert "Replayed from history" not in page
    # The history still steps: the event, its neighbours (read alone) and the links.
    assert "Event 5: ActivityCompleted" in page and 'rel="next"' in page and 'rel="prev"' in page
    assert f'<a href="{url(counted, 12)}">12. WorkflowCompleted</a>' in page
    assert len(queries) <= 5

    with durable(TIME_TRAVEL_MAX_EVENTS=11):
        assert admin_client.get(url(counted, 5), {"seq": "99"})["Location"] == url(counted, 12)
        assert admin_client.get(url(counted, 13)).status_code == 404
    with durable(TIME_TRAVEL_MAX_EVENTS=12):  # at the limit: replayed
        page = admin_client.get(url(counted, 5)).content.decode()
    assert "Not replayed" not in page and tt.STARTS["tt_counter"] == 1


def test_a_history_over_the_byte_limit_is_not_replayed(admin_client, counted):
    size = store.history_size(counted.pk)
    assert size.events == 12
    assert size.bytes >= events_size(store.get_history(counted.pk))  # at least what the engine counts
    with durable(TIME_TRAVEL_MAX_BYTES=size.bytes - 1):
        page = admin_client.get(url(counted, 12)).content.decode()
    assert (
        f"Not replayed: this run&#x27;s history has {size.bytes:,} bytes of JSON, more than the "
        f"{size.bytes - 1:,} that this page replays (DURABLE[&quot;TIME_TRAVEL_MAX_BYTES&quot;])"
    ) in problem(page)
    assert tt.STARTS["tt_counter"] == 0
    with durable(TIME_TRAVEL_MAX_BYTES=size.bytes):
        page = admin_client.get(url(counted, 12)).content.decode()
    assert "Not replayed" not in page and tt.STARTS["tt_counter"] == 1


@pytest.mark.engine
@pytest.mark.parametrize("value", [0, -1, 1.5, "2000", True])
def test_a_limit_that_is_not_a_positive_integer_or_none_is_a_system_check_error(value):
    for key in ("TIME_TRAVEL_MAX_EVENTS", "TIME_TRAVEL_MAX_BYTES"):
        with override_settings(DURABLE={key: value}):
            (error,) = check_settings()
        assert error.id == "django_durable.E006" and key in error.msg
    with override_settings(DURABLE={"TIME_TRAVEL_MAX_EVENTS": None, "TIME_TRAVEL_MAX_BYTES": None}):
        assert check_settings() == []


# -- durable_replay: the same set-up ----------------------------------------------------------


def durable_replay(*args: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    try:
        call_command("durable_replay", "--json", "--all", "tt_guarded", *args, stdout=out, stderr=io.StringIO())
    except SystemExit as exit:
        return int(exit.code or 0), json.loads(out.getvalue())
    return 0, json.loads(out.getvalue())


def test_durable_replay_runs_the_code_under_the_worker_guards(guarded, monkeypatch):
    assert durable_replay() == (
        0,
        {
            "checked": 1,
            "broken": 0,
            "skipped": 0,
            "broken_runs": [],
            "skipped_workflows": {},
        },
    )

    monkeypatch.setattr(tt, "GUARDED_MISCHIEF", "query")
    code, report = durable_replay()
    assert code == 1 and report["broken"] == 1
    error = report["broken_runs"][0]["error"]
    assert error["type"] == "django_durable.exceptions.DatabaseAccessInWorkflow"
    assert "Workflow code ran a database query (SELECT " in error["message"]

    monkeypatch.setattr(tt, "GUARDED_MISCHIEF", "block")
    began = time.monotonic()
    with durable(WORKFLOW_TASK_TIMEOUT=0.5):
        code, report = durable_replay()
    assert time.monotonic() - began < BOUND
    error = report["broken_runs"][0]["error"]
    assert code == 1 and error["type"] == "django_durable.exceptions.WorkflowTaskError"
    assert "Workflow code ran for more than 0.5s without reaching a durable call" in error["message"]
