"""The checker (tests/faults/invariants.py) judged: each invariant it holds, broken on
purpose by writing the broken state into the test database, is reported by name, and
no other one is (a checker that cannot fail would prove nothing, and one that blames
the wrong invariant would mislead). A guard fails when an invariant is added to the
checker without a case here.

Where an invariant has a half that cannot be written, the case breaks the other half:

- ``seqs_numbered`` (no gap, no repeat): a repeated seq is refused by the database
  (``durable_history_seq_unique``), so the case leaves a gap.
- ``answered_at_most_once``: an activity answered twice, and a timer both fired and
  canceled (the docstring's "a timer fires or is canceled but not both").
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import django_durable as durable
from django_durable.engine.events import EventKind
from django_durable.models import HistoryEvent, InboxEvent, WorkflowInstance, WorkflowStatus, WorkItem, WorkItemKind
from django_durable.store import db_now
from django_durable.testing import WorkflowEnvironment
from tests.faults import invariants
from tests.faults.invariants import INVARIANTS, Outcome
from tests.faults.kit import verdict
from tests.testapp.models import ActivityRun
from tests.testapp.workflows import sequence, sleeper

pytestmark = pytest.mark.database

# "seq" (two activities, keyed seq:0 and seq:1) has the history
#   1 ExecutionStarted  2 WorkflowTaskStarted  3 ActivityScheduled(1)  4 WorkflowTaskStarted
#   5 ActivityCompleted(1)  6 ActivityScheduled(2)  7 WorkflowTaskStarted  8 ActivityCompleted(2)
#   9 WorkflowCompleted
# and "timer" (two timers) 1 ExecutionStarted 2 WorkflowTaskStarted 3 TimerStarted(1)
#   4 WorkflowTaskStarted 5 TimerFired(1) 6 TimerStarted(2) 7 WorkflowTaskStarted 8 TimerFired(2) 9 WorkflowCompleted.
EXPECTED: dict[str, Any] = {"seq": 2, "timer": Outcome()}
SEQ_HISTORY = [
    EventKind.EXECUTION_STARTED,
    EventKind.WORKFLOW_TASK_STARTED,
    EventKind.ACTIVITY_SCHEDULED,
    EventKind.WORKFLOW_TASK_STARTED,
    EventKind.ACTIVITY_COMPLETED,
    EventKind.ACTIVITY_SCHEDULED,
    EventKind.WORKFLOW_TASK_STARTED,
    EventKind.ACTIVITY_COMPLETED,
    EventKind.WORKFLOW_COMPLETED,
]
TIMER_HISTORY = [
    EventKind.EXECUTION_STARTED,
    EventKind.WORKFLOW_TASK_STARTED,
    EventKind.TIMER_STARTED,
    EventKind.WORKFLOW_TASK_STARTED,
    EventKind.TIMER_FIRED,
    EventKind.TIMER_STARTED,
    EventKind.WORKFLOW_TASK_STARTED,
    EventKind.TIMER_FIRED,
    EventKind.WORKFLOW_COMPLETED,
]


@pytest.fixture
def sound(db: None) -> None:
    """Two runs that finished well: the state every case breaks one thing of."""
    with WorkflowEnvironment() as env:
        env.result(env.start(sequence, "seq", 2, workflow_id="seq"))
        env.result(env.start(sleeper, 5, workflow_id="timer"))
    assert [e.kind for e in durable.get_workflow("seq").history()] == SEQ_HISTORY
    assert [e.kind for e in durable.get_workflow("timer").history()] == TIMER_HISTORY
    assert sorted(ActivityRun.objects.values_list("key", "attempt")) == [("seq:0", 1), ("seq:1", 1)]


def run(wid: str) -> WorkflowInstance:
    return WorkflowInstance.objects.get(workflow_id=wid)


def event(wid: str, number: int) -> HistoryEvent:
    return HistoryEvent.objects.get(instance__workflow_id=wid, seq=number)


def rewrite(wid: str, number: int, **fields: Any) -> None:
    """Write ``fields`` over event ``number`` of ``wid``'s history."""
    assert HistoryEvent.objects.filter(instance__workflow_id=wid, seq=number).update(**fields) == 1


def copy_of(wid: str, number: int) -> dict[str, Any]:
    """Event ``number``'s kind, name, task id and payload, to write over another event."""
    source = event(wid, number)
    return {"kind": source.kind, "name": source.name, "task_id": source.task_id, "payload": source.payload}


def neutral() -> dict[str, Any]:
    """A WorkflowTaskStarted event: neither a command, an answer nor a close."""
    return {"kind": EventKind.WORKFLOW_TASK_STARTED, "name": "", "task_id": None, "payload": {}}


def open_run() -> WorkflowInstance:
    """A run started and never run: open, its workflow task due."""
    durable.start_workflow(sequence, "open", 1, workflow_id="open")
    return run("open")


def set_run(wid: str, **fields: Any) -> None:
    assert WorkflowInstance.objects.filter(workflow_id=wid).update(**fields) == 1


def workflow_task(wid: str) -> Any:
    items = WorkItem.objects.filter(instance__workflow_id=wid, kind=WorkItemKind.WORKFLOW)
    assert items.count() == 1
    return items


# Each case writes one broken state and returns the checker's arguments.
Breaker = Callable[[], dict[str, Any]]


def no_run() -> dict[str, Any]:
    WorkflowInstance.objects.filter(workflow_id="seq").delete()
    return {"expected": EXPECTED}


def wrong_result() -> dict[str, Any]:
    set_run("seq", result=3)
    return {"expected": EXPECTED}


def left_open() -> dict[str, Any]:
    open_run()
    return {"expected": EXPECTED}


def seq_gap() -> dict[str, Any]:
    rewrite("seq", 9, seq=10)
    return {"expected": EXPECTED}


def length_off() -> dict[str, Any]:
    set_run("seq", history_length=10)
    return {"expected": EXPECTED}


def no_execution_started() -> dict[str, Any]:
    rewrite("seq", 1, **neutral())
    return {"expected": EXPECTED}


def open_with_a_close() -> dict[str, Any]:
    set_run("seq", status=WorkflowStatus.RUNNING)
    return {"expected": {"timer": Outcome()}, "allow_open": True}


def close_not_last() -> dict[str, Any]:
    seq = run("seq")
    HistoryEvent.objects.create(instance=seq, seq=10, timestamp=event("seq", 9).timestamp, **neutral())
    set_run("seq", history_length=10)
    return {"expected": EXPECTED}


def close_of_another_status() -> dict[str, Any]:
    set_run("seq", status=WorkflowStatus.FAILED)
    return {"expected": {"timer": Outcome()}}


def command_twice() -> dict[str, Any]:
    rewrite("seq", 4, **copy_of("seq", 3))  # a second ActivityScheduled of task 1
    return {"expected": EXPECTED}


def answer_without_command() -> dict[str, Any]:
    rewrite("seq", 4, kind=EventKind.ACTIVITY_COMPLETED, name="record", task_id=99, payload={"attempt": 1})
    return {"expected": EXPECTED}


def activity_answered_twice() -> dict[str, Any]:
    rewrite("seq", 7, **copy_of("seq", 8))  # task 2 completed at 7 and at 8
    return {"expected": EXPECTED}


def timer_fired_and_canceled() -> dict[str, Any]:
    rewrite("timer", 4, kind=EventKind.TIMER_CANCELED, name="", task_id=1, payload={})  # fired at 5 too
    return {"expected": EXPECTED}


def activity_never_finished() -> dict[str, Any]:
    rewrite("seq", 8, **neutral())
    return {"expected": EXPECTED}


def attempt_ran_twice() -> dict[str, Any]:
    ActivityRun.objects.create(key="seq:0", attempt=1, pid=0)
    return {"expected": EXPECTED}


def ran_after_the_finish() -> dict[str, Any]:
    ActivityRun.objects.create(key="seq:0", attempt=2, pid=0)  # attempt 1 finished it
    return {"expected": EXPECTED}


def finished_by_an_attempt_that_never_ran() -> dict[str, Any]:
    rewrite("seq", 5, payload={"result": "seq:0", "attempt": 2})  # only attempt 1 executed
    return {"expected": EXPECTED}


def left_leased() -> dict[str, Any]:
    open_run()
    workflow_task("open").update(lease_owner="someone", lease_expires_at=db_now(), claimed_at=db_now(), attempt=1)
    return {"expected": EXPECTED, "allow_open": True}


def item_of_a_closed_run() -> dict[str, Any]:
    WorkItem.objects.create(kind=WorkItemKind.TIMER, instance=run("seq"), queue="default", task_id=9, due_at=db_now())
    return {"expected": EXPECTED}


def inbox_of_a_closed_run() -> dict[str, Any]:
    InboxEvent.objects.create(
        instance=run("seq"), kind=EventKind.EVENT_RAISED, name="go", payload={}, timestamp=db_now()
    )
    return {"expected": EXPECTED}


def parked() -> dict[str, Any]:
    open_run()
    workflow_task("open").update(parked_at=db_now(), last_error={"message": "boom"})
    return {"expected": EXPECTED, "allow_open": True}


def task_failing() -> dict[str, Any]:
    open_run()
    set_run("open", task_error={"type": "ValueError", "message": "boom"})
    return {"expected": EXPECTED, "allow_open": True}


CASES: list[tuple[str, Breaker]] = [
    ("run_exists", no_run),
    ("expected_outcome", wrong_result),
    ("run_closed", left_open),
    ("seqs_numbered", seq_gap),
    ("length_matches", length_off),
    ("starts_with_execution_started", no_execution_started),
    ("open_has_no_close", open_with_a_close),
    ("one_close_last", close_not_last),
    ("close_matches_status", close_of_another_status),
    ("command_issued_once", command_twice),
    ("answer_has_command", answer_without_command),
    ("answered_at_most_once", activity_answered_twice),
    ("answered_at_most_once", timer_fired_and_canceled),
    ("activity_finished", activity_never_finished),
    ("attempt_ran_once", attempt_ran_twice),
    ("nothing_after_finish", ran_after_the_finish),
    ("finisher_ran", finished_by_an_attempt_that_never_ran),
    ("not_leased", left_leased),
    ("no_items_of_closed_runs", item_of_a_closed_run),
    ("no_inbox_of_closed_runs", inbox_of_a_closed_run),
    ("not_parked", parked),
    ("task_not_failing", task_failing),
]


def test_a_sound_database_passes(sound: None) -> None:
    verdict(EXPECTED).assert_ok()
    open_run()
    verdict(EXPECTED, allow_open=True).assert_ok()  # a due workflow task is not a problem


@pytest.mark.parametrize("invariant, breaker", CASES, ids=[breaker.__name__ for _, breaker in CASES])
def test_the_checker_names_each_broken_invariant(sound: None, invariant: str, breaker: Breaker) -> None:
    found = verdict(**breaker())
    assert set(found.broken) == {invariant}, found.summary()
    assert found.problems and all(problem.startswith(f"{invariant}: ") for problem in found.problems), found.summary()
    assert not found.ok


def test_every_invariant_has_a_case() -> None:
    """A new invariant in INVARIANTS needs a case above that breaks it."""
    assert {invariant for invariant, _ in CASES} == set(INVARIANTS)


def test_every_problem_the_checker_reports_names_a_listed_invariant() -> None:
    """Each ``problem(kind, invariant, text)`` call in the checker names a listed invariant
    literally, and each listed one is reported somewhere: a check added without an entry
    in INVARIANTS (and so without a case) fails here, before any scenario runs it."""
    tree = ast.parse(Path(invariants.__file__).read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "problem"
    ]
    named = []
    for call in calls:
        argument = call.args[1] if len(call.args) >= 2 else None
        assert isinstance(argument, ast.Constant) and isinstance(argument.value, str), (
            f"line {call.lineno}: problem() must name its invariant as a string literal"
        )
        named.append(argument.value)
    assert set(named) == set(INVARIANTS)
