"""The checker that runs after every fault scenario (the tests' and ``benchmarks/chaos.py``'s).

``check()`` reads the whole database once, after the workers have stopped, and
returns a ``Verdict``: the problems it found and counts. What must hold:

- every workflow reached the right result (``expected``: workflow id -> the result,
  or an ``Outcome``), and no run is left open (unless ``allow_open``);
- every run's history numbers its events 1..n with no gap or repeat (n is the run's
  ``history_length``), starts with ``ExecutionStarted`` and has exactly one close event,
  last, that matches the run's status (none while the run is open);
- every durable call is answered at most once, every activity of a completed run
  exactly once (``ActivityCompleted`` or ``ActivityFailed``), a timer fires or is
  canceled but not both, and nothing answers a call that was never made;
- nothing is left claimed: no leased work item, no work item or inbox event of a
  closed run, no workflow task failing or parked;
- side effects <= attempts: of the executions an activity recorded (``side_effects``:
  (key, attempt) pairs), no attempt ran twice, none ran after the attempt that
  finished the activity, and the finishing attempt itself ran.

An activity's side-effect key is read from its ``ActivityScheduled`` event by
``effect_key`` (by default its first argument, when it is a string).

Each problem names the invariant it breaks (``INVARIANTS``, and ``Verdict.broken``).
tests/faults/test_checker.py breaks each one on purpose; it fails when one is added
here without a case there.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django_durable.engine.events import CLOSE_KINDS, COMMAND_KINDS, COMPLETION_KINDS, EventKind
from django_durable.models import (
    OPEN_STATUSES,
    HistoryEvent,
    InboxEvent,
    WorkflowInstance,
    WorkflowStatus,
    WorkItem,
)

CLOSE_KIND_OF_STATUS = {
    WorkflowStatus.COMPLETED: EventKind.WORKFLOW_COMPLETED,
    WorkflowStatus.FAILED: EventKind.WORKFLOW_FAILED,
    WorkflowStatus.CANCELED: EventKind.WORKFLOW_CANCELED,
    WorkflowStatus.CONTINUED_AS_NEW: EventKind.WORKFLOW_CONTINUED_AS_NEW,
    WorkflowStatus.TERMINATED: EventKind.WORKFLOW_TERMINATED,
}
ACTIVITY_ANSWERS = (EventKind.ACTIVITY_COMPLETED, EventKind.ACTIVITY_FAILED)
_ANY = object()

# Every invariant the checker holds, by the name its problems carry.
INVARIANTS: dict[str, str] = {
    "run_exists": "every expected workflow id has a run",
    "expected_outcome": "every expected workflow's latest run ended as expected",
    "run_closed": "no run is left open (unless allow_open)",
    "seqs_numbered": "a run's history numbers its events 1..n, no gap or repeat",
    "length_matches": "a run's history_length is the number of its events",
    "starts_with_execution_started": "a run's history starts with ExecutionStarted",
    "open_has_no_close": "an open run's history has no close event",
    "one_close_last": "a closed run's history has exactly one close event, last",
    "close_matches_status": "a closed run's close event matches its status",
    "command_issued_once": "no two commands of a run share a task id",
    "answer_has_command": "nothing answers a call that was never made",
    "answered_at_most_once": "every durable call is answered at most once (a timer fires or is canceled)",
    "activity_finished": "every activity of a completed run finished (completed or failed)",
    "attempt_ran_once": "no activity attempt executed twice",
    "nothing_after_finish": "no attempt executed after the attempt that finished the activity",
    "finisher_ran": "the attempt that finished an activity executed",
    "not_leased": "no work item is left leased",
    "no_items_of_closed_runs": "no work item is left of a closed run",
    "no_inbox_of_closed_runs": "no inbox event is left of a closed run",
    "not_parked": "no work item of an open run is parked",
    "task_not_failing": "no open run's workflow task is failing",
}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a workflow id's latest run must end as: a status, and a result equal to
    ``result`` (unless left out) for which ``predicate`` (if any) holds."""

    status: str = WorkflowStatus.COMPLETED
    result: Any = _ANY
    predicate: Callable[[Any], bool] | None = None

    def mismatch(self, status: str, result: Any) -> str | None:
        if status != self.status:
            return f"status {status!r}, expected {self.status!r}"
        if self.result is not _ANY and result != self.result:
            return f"result {result!r}, expected {self.result!r}"
        if self.predicate is not None and not self.predicate(result):
            return f"result {result!r} fails {getattr(self.predicate, '__name__', 'the predicate')}"
        return None


@dataclasses.dataclass
class Verdict:
    problems: list[str]
    counts: dict[str, int]
    broken: dict[str, int] = dataclasses.field(default_factory=dict)  # invariant name -> problems

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        counts = ", ".join(f"{name}={value}" for name, value in self.counts.items())
        head = "PASS" if self.ok else f"FAIL ({len(self.problems)} problems)"
        return "\n".join([f"verdict: {head}; {counts}", *(f"  - {problem}" for problem in self.problems)])

    def assert_ok(self) -> None:
        assert self.ok, self.summary()


def first_argument(event: Mapping[str, Any]) -> str | None:
    """The default side-effect key of an activity: its first argument, if a string."""
    args = (event.get("payload") or {}).get("args") or []
    return args[0] if args and isinstance(args[0], str) else None


def check(
    expected: Mapping[str, Any] | None = None,
    *,
    side_effects: Iterable[tuple[str, int]] = (),
    effect_key: Callable[[Mapping[str, Any]], str | None] = first_argument,
    allow_open: bool = False,
    max_problems: int = 100,
) -> Verdict:
    problems: list[str] = []
    counts: collections.Counter[str] = collections.Counter()
    broken: collections.Counter[str] = collections.Counter()

    def problem(kind: str, invariant: str, text: str) -> None:
        if invariant not in INVARIANTS:
            raise KeyError(f"unknown invariant {invariant!r}: add it to INVARIANTS")
        counts[kind] += 1
        broken[invariant] += 1
        if len(problems) < max_problems:
            problems.append(f"{invariant}: {text}")
        elif len(problems) == max_problems:
            problems.append("... (more problems left out)")

    runs = {
        row["id"]: row
        for row in WorkflowInstance.objects.order_by("id").values(
            "id", "workflow_id", "run_id", "workflow_name", "status", "result", "history_length", "task_error"
        )
    }
    history: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for event in (
        HistoryEvent.objects.order_by("instance_id", "seq")
        .values("instance_id", "seq", "kind", "name", "task_id", "payload")
        .iterator(chunk_size=5000)
    ):
        history[event["instance_id"]].append(event)

    executions: dict[str, list[int]] = collections.defaultdict(list)
    for key, attempt in side_effects:
        executions[key].append(attempt)
    finishing_attempts: dict[str, list[int]] = collections.defaultdict(list)

    for run_id, run in runs.items():
        where = f"{run['workflow_name']} {run['workflow_id']} (run {run_id})"
        events = history.get(run_id, [])
        counts["events"] += len(events)
        seqs = [event["seq"] for event in events]
        if seqs != list(range(1, len(seqs) + 1)):
            problem("duplicated", "seqs_numbered", f"{where}: history seqs are not 1..{len(seqs)}: {seqs}")
        if len(events) != run["history_length"]:
            problem(
                "lost", "length_matches", f"{where}: history_length {run['history_length']} but {len(events)} events"
            )
        if not events or events[0]["kind"] != EventKind.EXECUTION_STARTED:
            problem("lost", "starts_with_execution_started", f"{where}: history does not start with ExecutionStarted")
        closes = [event for event in events if event["kind"] in CLOSE_KINDS]
        is_open = run["status"] in OPEN_STATUSES
        if is_open:
            counts["open_runs"] += 1
            if closes:
                problem(
                    "duplicated", "open_has_no_close", f"{where}: open but its history has close events {_seqs(closes)}"
                )
            if not allow_open:
                problem("lost", "run_closed", f"{where}: still {run['status']}")
            if run["task_error"]:
                problem(
                    "stuck",
                    "task_not_failing",
                    f"{where}: workflow task failing: {run['task_error'].get('message', '')[:200]}",
                )
        elif len(closes) != 1 or closes[0] is not events[-1]:
            problem(
                "duplicated",
                "one_close_last",
                f"{where}: {len(closes)} close events {_seqs(closes)}, expected one, last",
            )
        elif closes[0]["kind"] != CLOSE_KIND_OF_STATUS[run["status"]]:
            problem(
                "duplicated",
                "close_matches_status",
                f"{where}: status {run['status']} but closed by {closes[0]['kind']}",
            )

        commands: dict[int, dict[str, Any]] = {}
        answers: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
        for event in events:
            kind = event["kind"]
            if kind in COMMAND_KINDS:
                if event["task_id"] in commands:
                    problem(
                        "duplicated", "command_issued_once", f"{where}: two commands with task id {event['task_id']}"
                    )
                commands[event["task_id"]] = event
            elif kind in COMPLETION_KINDS or kind == EventKind.TIMER_CANCELED:
                answers[event["task_id"]].append(event)
        for task_id, answered in answers.items():
            command = commands.get(task_id)
            if command is None:
                problem(
                    "duplicated",
                    "answer_has_command",
                    f"{where}: {answered[0]['kind']} answers task {task_id}, never issued",
                )
            elif len(answered) > 1:
                problem(
                    "duplicated",
                    "answered_at_most_once",
                    f"{where}: task {task_id} ({command['kind']} {command['name']}) answered "
                    f"{len(answered)} times: {[(e['seq'], e['kind']) for e in answered]}",
                )
        for task_id, command in commands.items():
            if command["kind"] == EventKind.ACTIVITY_SCHEDULED:
                counts["activities"] += 1
                answered = [event for event in answers.get(task_id, []) if event["kind"] in ACTIVITY_ANSWERS]
                if not answered and run["status"] == WorkflowStatus.COMPLETED:
                    problem(
                        "lost",
                        "activity_finished",
                        f"{where}: activity {command['name']} (task {task_id}) never finished",
                    )
                key = effect_key(command)
                if key is not None:
                    for event in answered:
                        finishing_attempts[key].append(int(event["payload"].get("attempt") or 0))
            elif command["kind"] == EventKind.TIMER_STARTED:
                counts["timers"] += 1
            elif command["kind"] == EventKind.CHILD_WORKFLOW_SCHEDULED:
                counts["children"] += 1
        counts["signals"] += sum(1 for event in events if event["kind"] == EventKind.EVENT_RAISED)

    latest: dict[str, dict[str, Any]] = {}
    for run in runs.values():  # ordered by id: the last one of an id is its latest run
        latest[run["workflow_id"]] = run
    counts["workflows"] = len(latest)
    counts["runs"] = len(runs)
    for workflow_id, want in (expected or {}).items():
        run = latest.get(workflow_id)
        outcome = want if isinstance(want, Outcome) else Outcome(result=want)
        if run is None:
            problem("lost", "run_exists", f"workflow {workflow_id}: no run at all")
            continue
        mismatch = outcome.mismatch(run["status"], run["result"])
        if mismatch is not None:
            problem(
                "lost" if run["status"] in OPEN_STATUSES else "wrong",
                "expected_outcome",
                f"workflow {workflow_id} (run {run['id']}): {mismatch}",
            )
    for run in latest.values():
        counts[f"status_{run['status']}"] += 1

    for key, attempts in executions.items():
        counts["executions"] += len(attempts)
        repeated = sorted(attempt for attempt, n in collections.Counter(attempts).items() if n > 1)
        if repeated:
            problem(
                "duplicated",
                "attempt_ran_once",
                f"activity {key}: attempt(s) {repeated} executed more than once: {sorted(attempts)}",
            )
        finished = finishing_attempts.get(key)
        if not finished:
            continue
        if max(attempts) > max(finished):
            problem(
                "duplicated",
                "nothing_after_finish",
                f"activity {key}: executed by attempt {max(attempts)} after attempt "
                f"{max(finished)} finished it: {sorted(attempts)}",
            )
        if not set(finished) <= set(attempts):
            problem(
                "duplicated",
                "finisher_ran",
                f"activity {key}: finished by attempt {finished}, which never ran (executions {sorted(attempts)})",
            )

    for item in WorkItem.objects.values("id", "kind", "name", "instance_id", "lease_owner", "parked_at", "last_error"):
        run = runs.get(item["instance_id"], {})
        where = (
            f"{item['kind']} item {item['id']} {item['name']} of {run.get('workflow_id')} (run {item['instance_id']})"
        )
        if item["lease_owner"] is not None:
            problem("stuck", "not_leased", f"{where}: still leased by {item['lease_owner']}")
        if run.get("status") not in OPEN_STATUSES:
            problem("stuck", "no_items_of_closed_runs", f"{where}: left behind by a closed run")
        elif item["parked_at"] is not None:
            problem("stuck", "not_parked", f"{where}: parked ({(item['last_error'] or {}).get('message', '')[:200]})")
    for instance_id, kind in InboxEvent.objects.values_list("instance_id", "kind"):
        if runs.get(instance_id, {}).get("status") not in OPEN_STATUSES:
            problem("stuck", "no_inbox_of_closed_runs", f"inbox event {kind} left behind by closed run {instance_id}")

    ordered = {
        name: counts.pop(name, 0)
        for name in (
            "workflows",
            "runs",
            "events",
            "activities",
            "executions",
            "timers",
            "children",
            "signals",
            "open_runs",
            "lost",
            "duplicated",
            "wrong",
            "stuck",
        )
    }
    ordered.update(sorted(counts.items()))
    return Verdict(problems=problems, counts=ordered, broken=dict(broken))


def _seqs(events: list[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]
