"""``WorkflowContext``: the durable calls available to workflow code.

Each durable call gets the next sequence number (its ``task_id``) and is matched
against history: a call history already answers returns at once. Code runs in a
thread of its own (``ResidentRun``): the first call history cannot answer parks
that thread until the next workflow task brings new events. Between tasks a
worker keeps the parked run, so a step costs the new events, not a replay; a
run it no longer keeps is unwound with ``Suspend``, a ``BaseException`` so that
``except Exception`` in user code cannot swallow it, and replayed from the top
when it is needed again.
"""

from __future__ import annotations

import datetime
import random as _random
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..exceptions import (
    ActivityError,
    CancelledError,
    ChildWorkflowError,
    NonDeterminismError,
    SerializationError,
    TimeoutError,
)
from .call_options import activity_call_options
from .events import (
    CLOSE_KINDS,
    COMMAND_KINDS,
    COMPLETION_KINDS,
    FAILURE_KINDS,
    Converter,
    Event,
    EventKind,
    ParentClosePolicy,
    PayloadLimits,
    ScheduledTick,
    check_payload_size,
    describe_call,
    json_size,
)
from .handles import Abort, ContinueAsNew, EventTask, Suspend, Task

# (index in history, the event, the time and number of the workflow task it arrived in)
Entry = tuple[int, Event, datetime.datetime, int]


class WorkflowContext:
    def __init__(
        self,
        *,
        workflow_id: str,
        run_id: str,
        workflow_name: str,
        queue: str,
        history: Sequence[Event],
        converter: Converter,
        activity_options: Callable[[Any], tuple[str, dict[str, Any]]],
        workflow_options: Callable[[Any], tuple[str, str | None]],
        lookahead: Sequence[Event] = (),
        payload_limits: PayloadLimits | None = None,
        measure_history: bool = False,
        vars_before_index: int | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.workflow_name = workflow_name
        self.queue = queue
        self._converter = converter
        self._activity_options = activity_options
        self._workflow_options = workflow_options
        self._recorded: dict[int, Event] = {}
        self._recorded_index: dict[int, int] = {}
        self._completions: dict[int, Entry] = {}
        # External events by name, in arrival order; a cursor counts those consumed.
        self._events: dict[str, list[Entry]] = {}
        self._event_cursor: dict[str, int] = {}
        self._bound: dict[int, Entry] = {}  # event task -> the event it consumed
        self._canceled_timers: set[int] = set()
        self._markers: set[str] = set()
        self._cancel_index: int | None = None
        self._length = 0  # history events indexed so far
        self._payload_limits = payload_limits
        self._measure_history = measure_history
        # Bytes of JSON of the payloads of the events indexed so far (with ``measure_history``).
        self.history_bytes = 0
        self._task_time: datetime.datetime | None = None
        self._task_number = 0
        self.started_at: datetime.datetime | None = None
        self.schedule: ScheduledTick | None = None  # the tick a schedule started this run for
        self._index(history)
        self._latest_task_number = self._task_number
        # A closed run went past every point of its code, recorded or not. patched() decides by the
        # whole run: a replay of a prefix (time travel) passes the rest as ``lookahead``, so it takes
        # the branch the run took.
        horizon = [*history, *lookahead]
        self._history_closed = any(event.kind in CLOSE_KINDS for event in horizon)
        self._markers.update(event.name for event in lookahead if event.kind == EventKind.PATCH_MARKER)
        self._now = self._first_task_time()
        self._next_task_id = 0
        self._max_recorded = max(self._recorded, default=0)
        self._patch_horizon = max((e.task_id or 0 for e in horizon if e.kind in COMMAND_KINDS), default=0)
        self._rng = _random.Random(uuid.UUID(run_id).int if _is_uuid(run_id) else run_id)
        self._consumed_latest = False
        self._cancel_raised = False
        self._patches: dict[str, bool] = {}
        self.new_events: list[Event] = []
        self.vars: dict[str, Any] = {}
        self.suspended_on: str | None = None
        self.swallowed = False
        self.fatal: BaseException | None = None
        self.continue_request: ContinueAsNew | None = None
        # Set by a ResidentRun: waits park the code's thread instead of unwinding it.
        self._park: Callable[[], None] | None = None
        # Time travel: with ``vars_before_index`` (a history event's index), ``vars_before`` is the
        # variables as the code had them when it first went on with that event or a later one, where a
        # replay of the events before it would have stopped: one replay tells what an event changed.
        self._vars_boundary = vars_before_index
        self.vars_before: dict[str, Any] | None = None
        self.vars_before_unknown = False

    def _index(self, events: Iterable[Event]) -> None:
        """Take ``events``, the next ones of the run's history, into account."""
        for event in events:
            index = self._length
            self._length += 1
            if self._measure_history:
                self.history_bytes += json_size(event.payload)
            kind = event.kind
            if kind == EventKind.WORKFLOW_TASK_STARTED:
                self._task_time = event.timestamp
                self._task_number += 1
                if self.started_at is None:
                    self.started_at = event.timestamp
            elif kind in COMMAND_KINDS:
                assert event.task_id is not None
                self._recorded[event.task_id] = event
                self._recorded_index[event.task_id] = index
            elif kind in COMPLETION_KINDS:
                assert event.task_id is not None and self._task_time is not None
                self._completions.setdefault(event.task_id, (index, event, self._task_time, self._task_number))
            elif kind == EventKind.EVENT_RAISED:
                assert self._task_time is not None
                self._events.setdefault(event.name, []).append((index, event, self._task_time, self._task_number))
            elif kind == EventKind.CANCEL_REQUESTED:
                if self._cancel_index is None:
                    self._cancel_index = index
            elif kind == EventKind.PATCH_MARKER:
                self._markers.add(event.name)
            elif kind == EventKind.EXECUTION_STARTED:
                self.schedule = ScheduledTick.of_start(event)
            elif kind == EventKind.TIMER_CANCELED:
                assert event.task_id is not None
                self._canceled_timers.add(event.task_id)

    def _first_task_time(self) -> datetime.datetime:
        # A method of its own: in __init__, mypy would keep started_at narrowed to the None
        # assigned before _index() set it, and take the rest of __init__ for unreachable.
        assert self.started_at is not None, "history must contain a WorkflowTaskStarted event"
        return self.started_at

    def extend(self, events: Sequence[Event]) -> None:
        """Start a new workflow task of resident code: ``events`` are the history events
        since the last task's commit (the task's ``WorkflowTaskStarted`` and inbox)."""
        self._index(events)
        self._latest_task_number = self._task_number
        self._consumed_latest = False
        self._max_recorded = max(self._recorded, default=0)

    def committed(self) -> None:
        """The task's new events are history now (resident code goes on after them)."""
        self._index(self.new_events)
        self.new_events = []
        self._max_recorded = max(self._recorded, default=0)

    # -- deterministic helpers -------------------------------------------------

    def now(self) -> datetime.datetime:
        """The time at which the workflow learned the last thing it knows (deterministic)."""
        self._check_running()
        return self._now

    @property
    def is_replaying(self) -> bool:
        """True while the code retraces what earlier workflow tasks already did."""
        return not (self._latest_task_number == 1 or self._consumed_latest or self.new_events)

    def random(self) -> float:
        self._check_running()
        return self._rng.random()

    def uuid4(self) -> uuid.UUID:
        self._check_running()
        return uuid.UUID(int=self._rng.getrandbits(128), version=4)

    def set_var(self, name: str, value: Any) -> None:
        """Record a user-defined variable, visible through ``WorkflowHandle.vars()``."""
        self._check_running()
        self.vars[name] = self._encode(value, f"variable {name!r}", "variable")

    # -- durable calls -------------------------------------------------------

    def call_activity(
        self, activity: Any, *args: Any, concurrency_key: str | None = None, priority: int | None = None, **kwargs: Any
    ) -> Task:
        self._check_running()
        name, options = self._activity_options(activity)
        options |= activity_call_options(name, concurrency_key=concurrency_key, priority=priority)
        # Encoded before taking a sequence number, on replay too: what cannot be encoded raises here, leaving no gap.
        payload = {
            "args": self._encode(list(args), f"the arguments of activity {name!r}"),
            "kwargs": self._encode(kwargs, f"the keyword arguments of activity {name!r}"),
            "options": options,
        }
        self._check_new_call_size(payload, f"the input of activity {name!r}", "activity_input")
        task_id = self._next_call(EventKind.ACTIVITY_SCHEDULED, name)
        if task_id not in self._recorded:
            self._record(EventKind.ACTIVITY_SCHEDULED, task_id, name, payload)
        return Task(self, task_id, f"activity {name!r}")

    def timer(
        self,
        delay: float | datetime.timedelta | None = None,
        *,
        until: datetime.datetime | None = None,
    ) -> Task:
        """A task that completes at ``until`` or after ``delay`` (seconds or timedelta)."""
        self._check_running()
        if (delay is None) == (until is None):
            raise TypeError("timer() takes either a delay or until=, not both or neither.")
        if until is None:
            assert delay is not None
            seconds = delay.total_seconds() if isinstance(delay, datetime.timedelta) else delay
            until = self._now + datetime.timedelta(seconds=seconds)
        elif until.tzinfo is None:
            raise ValueError("sleep_until()/timer(until=) needs a timezone-aware datetime.")
        task_id = self._next_call(EventKind.TIMER_STARTED, "")
        if task_id not in self._recorded:
            self._record(EventKind.TIMER_STARTED, task_id, "", {"fire_at": until.isoformat()})
        return Task(self, task_id, f"timer until {until.isoformat()}")

    def sleep(self, delay: float | datetime.timedelta) -> None:
        self.timer(delay).result()

    def sleep_until(self, until: datetime.datetime) -> None:
        self.timer(until=until).result()

    def event(self, name: str) -> EventTask:
        """A task for the next external event ``name`` (see ``WorkflowHandle.signal``).

        Events sent before the workflow waits are kept; several of one name
        queue up and are consumed one per wait, in the order they arrived.
        """
        self._check_running()
        if not isinstance(name, str) or not name:
            raise ValueError("An event name must be a non-empty string.")
        task_id = self._next_call(EventKind.EVENT_WAIT_STARTED, name)
        if task_id not in self._recorded:
            self._record(EventKind.EVENT_WAIT_STARTED, task_id, name, {})
        return EventTask(self, task_id, name)

    def wait_for_event(self, name: str, timeout: float | datetime.timedelta | None = None) -> Any:
        """The payload of the next event ``name``; ``TimeoutError`` if none arrives in ``timeout``.

        A wait that timed out consumes nothing: the event, when it comes, goes to the next wait.
        """
        task = self.event(name)
        if timeout is None:
            return task.result()
        timer = self.timer(timeout)
        if self.wait_any([task, timer]) is timer:
            raise TimeoutError(f"No event {name!r} arrived within {_describe_delay(timeout)}.")
        self.cancel_timer(timer)
        return task.result()

    def cancel_timer(self, timer: Task) -> None:
        """Drop a pending timer that is no longer needed (it will not fire)."""
        self._check_running()
        recorded = self._recorded.get(timer.task_id) or next(
            (e for e in self.new_events if e.task_id == timer.task_id and e.kind in COMMAND_KINDS), None
        )
        if recorded is None or recorded.kind != EventKind.TIMER_STARTED:
            raise ValueError(f"{timer!r} is not a timer of this workflow.")
        if timer.task_id in self._completions or timer.task_id in self._canceled_timers:
            return
        self._canceled_timers.add(timer.task_id)
        self.new_events.append(Event(kind=EventKind.TIMER_CANCELED.value, timestamp=self._now, task_id=timer.task_id))

    def call_workflow(
        self,
        workflow: Any,
        *args: Any,
        workflow_id: str | None = None,
        parent_close_policy: ParentClosePolicy | str = ParentClosePolicy.TERMINATE,
        **kwargs: Any,
    ) -> Task:
        """Start ``workflow`` as a child; the task's result is the child's result.

        A child that fails, is canceled or terminated raises ``ChildWorkflowError``.
        ``parent_close_policy`` decides what happens to the child if this run closes first.
        """
        self._check_running()
        name, queue = self._workflow_options(workflow)
        policy = ParentClosePolicy(parent_close_policy)
        payload = {
            "args": self._encode(list(args), f"the arguments of child workflow {name!r}"),
            "kwargs": self._encode(kwargs, f"the keyword arguments of child workflow {name!r}"),
            "queue": queue,
            "parent_close_policy": policy.value,
        }
        self._check_new_call_size(payload, f"the input of child workflow {name!r}", "workflow_input")
        task_id = self._next_call(EventKind.CHILD_WORKFLOW_SCHEDULED, name)
        if task_id not in self._recorded:
            payload["workflow_id"] = workflow_id or f"{self.workflow_id}:{task_id}:{self.run_id[:8]}"
            self._record(EventKind.CHILD_WORKFLOW_SCHEDULED, task_id, name, payload)
        return Task(self, task_id, f"child workflow {name!r}")

    def continue_as_new(self, *args: Any, **kwargs: Any) -> Any:
        """Close this run and start a fresh one of the same workflow id with these
        arguments and an empty history. Events not yet consumed move to the new run."""
        self._check_running()
        self._check_cancel(None)
        encoded_args = self._encode(list(args), "the arguments of continue_as_new()")
        encoded_kwargs = self._encode(kwargs, "the keyword arguments of continue_as_new()")
        self._check_size(
            {"args": encoded_args, "kwargs": encoded_kwargs}, "the input of continue_as_new()", "workflow_input"
        )
        self.continue_request = ContinueAsNew(encoded_args, encoded_kwargs)
        raise self.continue_request

    def patched(self, change_id: str) -> bool:
        """Whether this run takes the code path added with ``change_id``.

        True for runs that reach this point under the new code (a marker is
        recorded), False for histories recorded by the old code. Markers are
        found by change id, not by position: once no open run needs the old
        branch (``durable_replay`` tells), the ``patched()`` call can go.
        """
        self._check_running()
        if change_id not in self._patches:
            next_id = self._next_task_id + 1
            if change_id in self._markers:
                self._patches[change_id] = True
            elif next_id <= self._patch_horizon or self._history_closed:
                self._patches[change_id] = False  # history went past this point under the old code
            else:
                self._markers.add(change_id)
                self.new_events.append(Event(kind=EventKind.PATCH_MARKER.value, timestamp=self._now, name=change_id))
                self._patches[change_id] = True
        return self._patches[change_id]

    def wait_all(self, tasks: Iterable[Task]) -> list[Any]:
        """Results of all ``tasks``; raises the first failure (in history order) at once."""
        tasks = list(tasks)
        while True:
            self._check_running()
            entries = self._lookup_all(tasks)
            done = [entry for entry in entries if entry is not None]
            failures = [entry for entry in done if entry[1].kind in FAILURE_KINDS]
            if failures:
                first = min(failures, key=lambda entry: entry[0])
                self._learns(first[0])
                self._check_cancel(first[0])
                return self._consume_entry(first)  # raises
            if len(done) == len(tasks):
                break
            self._check_cancel(None)
            pending = next(t for t, entry in zip(tasks, entries, strict=True) if entry is None)
            self._suspend(pending.description)
        self._learns(max((entry[0] for entry in done), default=None))
        self._check_cancel(max((entry[0] for entry in done), default=None) if done else 0)
        return [self._take(t, entry) for t, entry in zip(tasks, done, strict=True)]

    def wait_any(self, tasks: Iterable[Task]) -> Task:
        """The first of ``tasks`` to complete (in history order)."""
        tasks = list(tasks)
        if not tasks:
            raise ValueError("wait_any() needs at least one task.")
        while True:
            self._check_running()
            done = [(entry, t) for t, entry in zip(tasks, self._lookup_all(tasks), strict=True) if entry is not None]
            if done:
                break
            self._check_cancel(None)
            self._suspend(" or ".join(t.description for t in tasks))
        entry, winner = min(done, key=lambda pair: pair[0][0])
        self._learns(entry[0])
        self._check_cancel(entry[0])
        if isinstance(winner, EventTask):
            self._bind(winner, entry)
        self._advance_time(entry)
        return winner

    # -- machinery -------------------------------------------------------------

    def _check_running(self) -> None:
        if self.fatal is not None:
            raise Abort()
        if self.continue_request is not None:
            raise self.continue_request  # the run is closing: no durable call after continue_as_new()
        if self.suspended_on is not None:
            # A durable call after the suspension: fine in a ``finally:`` the
            # suspension is unwinding through, swallowed if it was caught and done with.
            if not isinstance(sys.exc_info()[1], Suspend):
                self.swallowed = True
            raise Suspend()

    def _next_call(self, kind: EventKind, name: str) -> int:
        self._check_cancel(self._recorded_index.get(self._next_task_id + 1), waiting=False)
        self._next_task_id += 1
        task_id = self._next_task_id
        recorded = self._recorded.get(task_id)
        if recorded is not None and (recorded.kind != kind or recorded.name != name):
            self._fail(
                NonDeterminismError(
                    f"Workflow code does not match its history at sequence number {task_id}: "
                    f"history recorded {describe_call(recorded.kind, recorded.name)}, "
                    f"the code asked for {describe_call(kind, name)}."
                )
            )
        return task_id

    def _record(self, kind: EventKind, task_id: int, name: str, payload: dict[str, Any]) -> None:
        self.new_events.append(Event(kind=kind.value, timestamp=self._now, name=name, task_id=task_id, payload=payload))

    def _consume(self, task: Task) -> Any:
        while True:
            self._check_running()
            entry = self._lookup(task)
            if entry is None and task.task_id in self._canceled_timers:
                raise CancelledError(f"{task.description} was canceled with cancel_timer().")
            if entry is not None:
                self._learns(entry[0])
            self._check_cancel(entry[0] if entry is not None else None)
            if entry is not None:
                return self._take(task, entry)
            self._suspend(task.description)

    def _lookup(self, task: Task, skip: int = 0) -> Entry | None:
        """What answers ``task`` in history, or None; ``skip`` passes over events of the
        same name that other tasks of one wait_all() will take."""
        if not isinstance(task, EventTask):
            return self._completions.get(task.task_id)
        if task.task_id in self._bound:
            return self._bound[task.task_id]
        arrived = self._events.get(task.name, [])
        position = self._event_cursor.get(task.name, 0) + skip
        return arrived[position] if position < len(arrived) else None

    def _lookup_all(self, tasks: list[Task]) -> list[Entry | None]:
        taken: dict[str, int] = {}
        found: dict[int, Entry | None] = {}
        for task in tasks:
            if task.task_id in found:
                continue  # the same task twice: one answer
            if isinstance(task, EventTask) and task.task_id not in self._bound:
                found[task.task_id] = self._lookup(task, skip=taken.get(task.name, 0))
                taken[task.name] = taken.get(task.name, 0) + 1
            else:
                found[task.task_id] = self._lookup(task)
        return [found[task.task_id] for task in tasks]

    def _bind(self, task: EventTask, entry: Entry) -> None:
        if task.task_id not in self._bound:
            self._bound[task.task_id] = entry
            self._event_cursor[task.name] = self._event_cursor.get(task.name, 0) + 1

    def _take(self, task: Task, entry: Entry) -> Any:
        if isinstance(task, EventTask):
            self._bind(task, entry)
        return self._consume_entry(entry)

    def _check_cancel(self, answered_at: int | None, *, waiting: bool = True) -> None:
        """Raise ``CancelledError`` once, at the first durable call that history does not
        answer from before the cancellation request (deterministic on replay)."""
        if self._cancel_index is None or self._cancel_raised:
            return
        if answered_at is None or answered_at > self._cancel_index:
            self._learns(self._cancel_index, waiting=waiting)
            self._cancel_raised = True
            raise CancelledError("The workflow was asked to cancel.")

    def _learns(self, index: int | None, *, waiting: bool = True) -> None:
        """The code goes on with what history event ``index`` told it (see ``vars_before``),
        at a wait, or (``waiting=False``) at a new call, which a replay of the events before
        ``index`` would have made and gone on from: what it then set is not known here."""
        if (
            self._vars_boundary is not None
            and index is not None
            and index >= self._vars_boundary
            and self.vars_before is None
            and not self.vars_before_unknown
        ):
            if waiting:
                self.vars_before = dict(self.vars)
            else:
                self.vars_before_unknown = True

    def _consume_entry(self, entry: Entry) -> Any:
        self._advance_time(entry)
        event = entry[1]
        if event.kind == EventKind.ACTIVITY_FAILED:
            raise ActivityError.from_failure(
                event.payload.get("error", {}),
                activity_name=self._recorded[event.task_id].name if event.task_id in self._recorded else "",
                attempt=event.payload.get("attempt", 0),
            )
        if event.kind == EventKind.CHILD_WORKFLOW_FAILED:
            raise ChildWorkflowError.from_failure(
                event.payload.get("error") or {},
                status=event.payload.get("status", "failed"),
                workflow_id=event.payload.get("workflow_id", ""),
            )
        if event.kind in (EventKind.ACTIVITY_COMPLETED, EventKind.CHILD_WORKFLOW_COMPLETED):
            return self._converter.from_json(event.payload.get("result"))
        if event.kind == EventKind.EVENT_RAISED:
            return self._converter.from_json(event.payload.get("payload"))
        return None

    def _advance_time(self, entry: Entry) -> None:
        _, _, task_time, task_number = entry
        self._now = max(self._now, task_time)
        if task_number == self._latest_task_number:
            self._consumed_latest = True

    def unconsumed_events(self) -> list[Event]:
        """External events no wait has consumed, in arrival order (carried to a continued run)."""
        left = [entry for name, entries in self._events.items() for entry in entries[self._event_cursor.get(name, 0) :]]
        return [entry[1] for entry in sorted(left, key=lambda entry: entry[0])]

    def _suspend(self, waiting_on: str) -> None:
        """Wait for the next workflow task: park the code's thread (a ResidentRun), which
        raises ``Suspend`` if the run is dropped meanwhile, or unwind the code at once."""
        self.suspended_on = waiting_on
        if self._park is None:
            raise Suspend()
        self._park()
        self.suspended_on = None

    def _fail(self, error: BaseException) -> Any:
        self.fatal = error
        raise Abort()

    def _encode(self, value: Any, what: str, kind: str | None = None) -> Any:
        try:
            encoded = self._converter.to_json(value)
        except SerializationError as exc:
            raise SerializationError(f"Cannot serialise {what}: {exc.detail}") from None
        if kind is not None:
            self._check_size(encoded, what, kind)
        return encoded

    def _check_size(self, encoded: Any, what: str, kind: str) -> None:
        """``PayloadTooLarge`` in the workflow code for a value over its kind's limit."""
        check_payload_size(encoded, what=what, kind=kind, limits=self._payload_limits)

    def _check_new_call_size(self, payload: dict[str, Any], what: str, kind: str) -> None:
        """The size check of a durable call's input, before the call takes its sequence number,
        so that a refused call leaves no gap, on replay too. A call that history recorded with
        this very input is not measured again: it passed once (even if the limit was lowered
        since), and replays as recorded."""
        if not self._payload_limits or self._payload_limits.get(kind) is None:
            return
        recorded = self._recorded.get(self._next_task_id + 1)
        if (
            recorded is not None
            and recorded.payload.get("args") == payload["args"]
            and recorded.payload.get("kwargs") == payload["kwargs"]
        ):
            return
        self._check_size({"args": payload["args"], "kwargs": payload["kwargs"]}, what, kind)

    def unmatched_history(self) -> NonDeterminismError | None:
        if self._next_task_id < self._max_recorded:
            missing = self._recorded[min(k for k in self._recorded if k > self._next_task_id)]
            return NonDeterminismError(
                f"Workflow code does not match its history at sequence number "
                f"{missing.task_id}: history recorded "
                f"{describe_call(missing.kind, missing.name)}, the code made no such call "
                f"(it made {self._next_task_id} durable calls before it "
                + ("waited on " + self.suspended_on if self.suspended_on else "finished")
                + ")."
            )
        return None


def _describe_delay(delay: float | datetime.timedelta) -> str:
    return str(delay) if isinstance(delay, datetime.timedelta) else f"{delay}s"


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
