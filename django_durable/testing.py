"""Test helpers for projects that use django-durable.

``WorkflowEnvironment`` runs workflows inside an ordinary Django test (a
``TestCase`` or pytest-django's ``db`` fixture): in this process and thread,
against the real store, so handles, ``vars()``, ``describe()``, ``history()``
and the admin all work. Its clock stands still until the test moves it, so a
workflow that sleeps thirty days finishes in milliseconds, and activities can
be replaced by fakes::

    from django_durable.testing import WorkflowEnvironment

    def test_subscription(db):
        with WorkflowEnvironment(activities={charge: lambda customer_id, amount: "receipt"}) as env:
            handle = env.start(subscription, 42, 100, 3)
            env.run_until_idle()
            assert handle.vars() == {"cycle": 0}
            env.advance(days=30)
            assert env.result(handle) == {"paid": 300}
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from . import registry, store
from .client import WorkflowHandle, start_workflow
from .exceptions import DurableError, NotRegistered, TimeoutError
from .models import OPEN_STATUSES, WorkflowInstance, WorkflowStatus, WorkItemKind
from .worker import Worker

__all__ = ["StepLimitExceeded", "WorkflowEnvironment", "WorkflowStuck"]


class WorkflowStuck(DurableError):
    """The run is open but nothing can move it on: no timer, retry or activity is due,
    so no amount of (virtual) time will close it. The message says what it waits on."""

    default_detail = "The workflow run can never progress."
    default_code = "workflow_stuck"


class StepLimitExceeded(DurableError):
    """The environment did ``max_steps`` rounds of work without getting where it was
    asked to (a workflow that never goes idle, or never closes)."""

    default_detail = "The workflow environment exceeded its step limit."
    default_code = "step_limit_exceeded"


class WorkflowEnvironment:
    """Runs workflows in the calling thread under a controlled clock. Use it as a
    context manager, inside a test that has database access.

    ``activities`` maps activities (the decorated function or its registered name)
    to fakes that run instead of them while the environment is active. A plain
    function keeps the original's options (retry policy, timeouts, queue); a fake
    that is itself a ``@durable.activity`` brings its own. ``start_time`` (an aware
    datetime) is where the clock starts, by default the real current time.
    ``queues`` limits the work run to those queues (by default all of them).
    ``max_steps`` bounds the rounds of work of one call, so that a workflow that
    never settles fails the test instead of hanging it.
    """

    def __init__(
        self,
        *,
        activities: Mapping[Any, Callable[..., Any]] | None = None,
        start_time: datetime.datetime | None = None,
        queues: Sequence[str] | None = None,
        max_steps: int = 10_000,
    ) -> None:
        if start_time is not None and start_time.tzinfo is None:
            raise ValueError("start_time must be a timezone-aware datetime.")
        self._now = start_time or datetime.datetime.now(datetime.timezone.utc)
        self._fakes = _resolve_fakes(activities or {})
        self._queues = list(queues) if queues is not None else None
        self.max_steps = max_steps
        self._originals: dict[str, registry.ActivityDefinition] = {}
        self._worker: Worker | None = None

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> WorkflowEnvironment:
        if store.clock_override is not None:
            raise RuntimeError("Another WorkflowEnvironment is active; environments do not nest.")
        originals = {name: registry.get_activity_definition(name) for name in self._fakes}
        replacements = {}
        for name, fake in self._fakes.items():
            own = getattr(fake, "__durable_activity__", None)
            if isinstance(own, registry.ActivityDefinition):
                replacements[name] = dataclasses.replace(own, name=name)
            else:
                replacements[name] = dataclasses.replace(originals[name], fn=fake)
        self._worker = Worker(queues=self._queues, concurrency=1, name="durable-testing")
        # Replay every workflow task from the top, as after a worker restart: code that
        # does not replay deterministically (or that changed under a run) fails in tests.
        self._worker.cache.size = 0  # the worker's committer shares this cache
        self._originals = originals
        registry._activities.update(replacements)
        store.clock_override = self._clock
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        store.clock_override = None
        registry._activities.update(self._originals)
        self._originals.clear()
        if self._worker is not None:
            self._worker.cache.clear()  # workflow code parked between tasks: unwind it
        self._worker = None

    def _clock(self) -> datetime.datetime:
        return self._now

    # -- the clock -----------------------------------------------------------------

    @property
    def now(self) -> datetime.datetime:
        """The environment's clock: what ``ctx.now()`` and every due time are measured by."""
        return self._now

    def advance(self, delta: datetime.timedelta | float | None = None, /, **timedelta_kwargs: float) -> None:
        """Move the clock forward by ``delta`` (a timedelta or seconds) or by
        ``timedelta`` keywords (``days=30``), running everything that falls due on
        the way at its own time, in order: a workflow that sleeps a day in a loop
        goes round once per day passed."""
        self._require_active()
        if delta is None:
            step = datetime.timedelta(**timedelta_kwargs)
        elif timedelta_kwargs:
            raise TypeError("advance() takes a delta or timedelta keywords, not both.")
        else:
            step = delta if isinstance(delta, datetime.timedelta) else datetime.timedelta(seconds=delta)
        if step < datetime.timedelta(0):
            raise ValueError("The clock cannot go backwards.")
        target = self._now + step
        self.run_until_idle()
        for _ in range(self.max_steps):
            due = self._next_due_at()
            if due is None or due > target:
                break
            self._now = max(self._now, due)
            self.run_until_idle()
        else:
            raise StepLimitExceeded(f"Work kept falling due after {self.max_steps} steps before {target}.")
        self._now = target
        self.run_until_idle()

    # -- running -------------------------------------------------------------------

    def start(self, workflow: Any, *args: Any, **kwargs: Any) -> WorkflowHandle:
        """``durable.start_workflow`` (same arguments). Nothing runs until the
        environment is asked to (``run_until_idle``, ``advance``, ``result``)."""
        self._require_active()
        return start_workflow(workflow, *args, **kwargs)

    def run_until_idle(self) -> None:
        """Fire due timers and run due workflow tasks and activities, here, until
        nothing more is due. The clock does not move."""
        worker = self._require_active()
        for _ in range(self.max_steps):
            if self._queues is None:
                # Every queue that has work: children and activities may name their own.
                worker.queues = store.queues_with_work()
            if not worker.run_inline_once():
                return
        raise StepLimitExceeded(
            f"Still busy after {self.max_steps} rounds of work without the clock moving: a workflow "
            "that never waits (zero-length timers in a loop?)."
        )

    def result(self, handle: WorkflowHandle, timeout: datetime.timedelta | float | None = None) -> Any:
        """Run until ``handle``'s workflow closes, moving the clock to the next timer,
        retry or timeout whenever nothing is due; return its result (following
        continue-as-new) or raise ``WorkflowFailed`` like ``handle.result()``.

        Raises ``WorkflowStuck`` when the run waits on something that nothing
        scheduled will bring (an event nobody sends, an activity awaiting completion
        by token), and ``durable.TimeoutError`` if ``timeout`` (virtual time) passes first.
        """
        self._require_active()
        if isinstance(timeout, (int, float)):
            timeout = datetime.timedelta(seconds=timeout)
        deadline = None if timeout is None else self._now + timeout
        for _ in range(self.max_steps):
            self.run_until_idle()
            run = _latest_run(handle)
            if run.status not in OPEN_STATUSES:
                return handle.result(timeout=0)
            due = self._next_due_at()
            if due is None:
                raise WorkflowStuck(_stuck_message(run))
            if deadline is not None and due > deadline:
                self._now = max(self._now, deadline)
                raise TimeoutError(
                    f"Workflow {run.workflow_id!r} is still {run.status} after {timeout} of virtual time"
                    + (f", waiting on {run.waiting_on}." if run.waiting_on else ".")
                )
            self._now = max(self._now, due)
        raise StepLimitExceeded(f"Workflow {handle.workflow_id!r} was still open after {self.max_steps} steps.")

    # -- assertions ------------------------------------------------------------------

    def history_kinds(self, handle: WorkflowHandle) -> list[str]:
        """The kinds of the run's history events in order, e.g. ``["ExecutionStarted",
        "WorkflowTaskStarted", "TimerStarted", ...]``."""
        return [event.kind for event in handle.history()]

    # -- internals -------------------------------------------------------------------

    def _require_active(self) -> Worker:
        if self._worker is None:
            raise RuntimeError("Use the WorkflowEnvironment in a with block.")
        return self._worker

    def _next_due_at(self) -> datetime.datetime | None:
        return store.next_wakeup(queues=self._queues)


def _resolve_fakes(activities: Mapping[Any, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    fakes: dict[str, Callable[..., Any]] = {}
    known = registry.registered_activities()
    for target, fake in activities.items():
        name = registry.activity_name(target)
        if name not in known:
            raise NotRegistered(
                f"Cannot fake activity {name!r}: no activity is registered under that name "
                f"(registered: {', '.join(sorted(known)) or 'none'})."
            )
        if not callable(fake):
            raise TypeError(f"The fake for activity {name!r} must be callable, not {fake!r}.")
        fakes[name] = fake
    return fakes


def _latest_run(handle: WorkflowHandle) -> WorkflowInstance:
    return store.last_of_chain(handle._instance())


def _stuck_message(run: WorkflowInstance) -> str:
    lines = [
        f"Workflow {run.workflow_id!r} (run {run.run_id}) can never progress: it is {run.status}"
        + (f", waiting on {run.waiting_on}" if run.waiting_on else "")
        + ", and nothing is due (no timer, retry, timeout or activity), so moving the clock will not help."
    ]
    if run.waiting_on.startswith("event"):
        lines.append("Send the event with handle.signal(name, payload), then run the environment again.")
    if run.status == WorkflowStatus.SUSPENDED:
        lines.append("It is suspended: handle.resume() lets it go on.")
    for work in store.pending_work(run.pk):
        if work["kind"] == WorkItemKind.ACTIVITY and work["lease_owner"]:
            lines.append(
                f"Activity {work['name']!r} (activity id {work['task_id']}) awaits completion by task token "
                "and has no timeout: finish it with durable.complete_activity_by_id() or fail_activity_by_id()."
            )
        elif work["kind"] == WorkItemKind.WORKFLOW and work["parked_at"] and work["failures"]:
            error = work["last_error"] or {}
            lines.append(
                f"Its workflow task failed {work['failures']} times and is parked: {error.get('type', '')}: "
                f"{error.get('message', '').rstrip('.')}. Fix the code, then handle.retry()."
            )
    others = [
        f"{other.workflow_id!r} ({other.status}, waiting on {other.waiting_on or 'nothing'})"
        for other in WorkflowInstance.objects.filter(status__in=OPEN_STATUSES).exclude(pk=run.pk)[:5]
    ]
    if others:
        lines.append(f"Other open runs: {'; '.join(others)}.")
    return "\n".join(lines)
