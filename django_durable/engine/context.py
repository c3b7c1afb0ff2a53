"""``WorkflowContext``: the durable calls available to workflow code.

Workflow code runs from the top on every workflow task. Each durable call gets
the next sequence number (its ``task_id``) and is matched against history: a
call history already answers returns at once; the first one it cannot answer
unwinds the function with ``Suspend``, a ``BaseException`` so that
``except Exception`` in user code cannot swallow it.
"""

from __future__ import annotations

import datetime
import random as _random
import sys
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import ActivityError, NonDeterminismError, SerializationError
from .events import Event, EventKind, describe_call

if TYPE_CHECKING:
    from ..converter import DataConverter


class Suspend(BaseException):
    """Unwinds workflow code that waits for something history does not hold yet."""


class Abort(BaseException):
    """Unwinds workflow code after an engine-level error (e.g. non-determinism)."""


class Task:
    """A durable call's pending outcome; ``result()`` returns it or raises."""

    def __init__(self, ctx: WorkflowContext, task_id: int, description: str) -> None:
        self._ctx = ctx
        self.task_id = task_id
        self.description = description

    def result(self) -> Any:
        return self._ctx._consume(self)

    def __repr__(self) -> str:
        return f"<Task #{self.task_id} {self.description}>"


class WorkflowContext:
    def __init__(
        self,
        *,
        workflow_id: str,
        run_id: str,
        workflow_name: str,
        queue: str,
        history: Sequence[Event],
        converter: DataConverter,
        activity_options: Any,
    ) -> None:
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.workflow_name = workflow_name
        self.queue = queue
        self._converter = converter
        self._activity_options = activity_options
        self._recorded: dict[int, Event] = {}
        # task_id -> (index in history, the completion event, its workflow task's time and number)
        self._completions: dict[int, tuple[int, Event, datetime.datetime, int]] = {}
        task_time: datetime.datetime | None = None
        task_number = 0
        self.started_at: datetime.datetime | None = None
        for index, event in enumerate(history):
            if event.kind == EventKind.WORKFLOW_TASK_STARTED:
                task_time = event.timestamp
                task_number += 1
                if self.started_at is None:
                    self.started_at = task_time
            elif event.kind in (EventKind.ACTIVITY_SCHEDULED, EventKind.TIMER_STARTED):
                assert event.task_id is not None
                self._recorded[event.task_id] = event
            elif event.kind in (
                EventKind.ACTIVITY_COMPLETED,
                EventKind.ACTIVITY_FAILED,
                EventKind.TIMER_FIRED,
            ):
                assert event.task_id is not None and task_time is not None
                self._completions.setdefault(event.task_id, (index, event, task_time, task_number))
        self._latest_task_number = task_number
        assert self.started_at is not None, "history must contain a WorkflowTaskStarted event"
        self._now = self.started_at
        self._next_task_id = 0
        self._max_recorded = max(self._recorded, default=0)
        self._rng = _random.Random(uuid.UUID(run_id).int if _is_uuid(run_id) else run_id)
        self._consumed_latest = False
        self.new_events: list[Event] = []
        self.vars: dict[str, Any] = {}
        self.suspended_on: str | None = None
        self.swallowed = False
        self.fatal: BaseException | None = None

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
        self.vars[name] = self._encode(value, f"variable {name!r}")

    # -- durable calls -------------------------------------------------------

    def call_activity(self, activity: Any, *args: Any, **kwargs: Any) -> Task:
        self._check_running()
        name, options = self._activity_options(activity)
        # Encoded before the call takes a sequence number, on replay too: a
        # value that cannot be encoded raises here, every time, leaving no gap.
        payload = {
            "args": self._encode(list(args), f"the arguments of activity {name!r}"),
            "kwargs": self._encode(kwargs, f"the keyword arguments of activity {name!r}"),
            "options": options,
        }
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

    def wait_all(self, tasks: Iterable[Task]) -> list[Any]:
        """Results of all ``tasks``; raises the first failure (in history order) at once."""
        self._check_running()
        tasks = list(tasks)
        done = [self._completions[t.task_id] for t in tasks if t.task_id in self._completions]
        failures = [entry for entry in done if entry[1].kind == EventKind.ACTIVITY_FAILED]
        if failures:
            first = min(failures, key=lambda entry: entry[0])
            return self._consume_entry(first)  # raises
        if len(done) < len(tasks):
            pending = next(t for t in tasks if t.task_id not in self._completions)
            self._suspend(pending.description)
        return [t.result() for t in tasks]

    def wait_any(self, tasks: Iterable[Task]) -> Task:
        """The first of ``tasks`` to complete (in history order)."""
        self._check_running()
        tasks = list(tasks)
        if not tasks:
            raise ValueError("wait_any() needs at least one task.")
        done = [t for t in tasks if t.task_id in self._completions]
        if not done:
            self._suspend(" or ".join(t.description for t in tasks))
        winner = min(done, key=lambda t: self._completions[t.task_id][0])
        self._advance_time(self._completions[winner.task_id])
        return winner

    # -- machinery -------------------------------------------------------------

    def _check_running(self) -> None:
        if self.fatal is not None:
            raise Abort()
        if self.suspended_on is not None:
            # A durable call after the suspension: fine in a ``finally:`` the
            # suspension is unwinding through, swallowed if it was caught and done with.
            if not isinstance(sys.exc_info()[1], Suspend):
                self.swallowed = True
            raise Suspend()

    def _next_call(self, kind: EventKind, name: str) -> int:
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
        self.new_events.append(
            Event(kind=kind.value, timestamp=self._now, name=name, task_id=task_id, payload=payload)
        )

    def _consume(self, task: Task) -> Any:
        self._check_running()
        entry = self._completions.get(task.task_id)
        if entry is None:
            self._suspend(task.description)
        return self._consume_entry(entry)

    def _consume_entry(self, entry: tuple[int, Event, datetime.datetime, int]) -> Any:
        self._advance_time(entry)
        event = entry[1]
        if event.kind == EventKind.ACTIVITY_FAILED:
            error = event.payload.get("error", {})
            raise ActivityError(
                error.get("message", ""),
                type=error.get("type", ""),
                traceback=error.get("traceback", ""),
                details=error.get("details"),
                activity_name=self._recorded[event.task_id].name if event.task_id in self._recorded else "",
                attempt=event.payload.get("attempt", 0),
            )
        if event.kind == EventKind.ACTIVITY_COMPLETED:
            return self._converter.from_json(event.payload.get("result"))
        return None

    def _advance_time(self, entry: tuple[int, Event, datetime.datetime, int]) -> None:
        _, _, task_time, task_number = entry
        if task_time > self._now:
            self._now = task_time
        if task_number == self._latest_task_number:
            self._consumed_latest = True

    def _suspend(self, waiting_on: str) -> Any:
        self.suspended_on = waiting_on
        raise Suspend()

    def _fail(self, error: BaseException) -> Any:
        self.fatal = error
        raise Abort()

    def _encode(self, value: Any, what: str) -> Any:
        try:
            return self._converter.to_json(value)
        except SerializationError as exc:
            raise SerializationError(f"Cannot serialise {what}: {exc.detail}") from None

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


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
