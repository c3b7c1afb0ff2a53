"""``@workflow`` and ``@activity``: register plain functions under a name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, overload

from django.core.exceptions import ImproperlyConfigured

from .exceptions import NotRegistered
from .retry import RetryPolicy

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class WorkflowDefinition:
    name: str
    fn: Callable[..., Any]
    queue: str | None = None


@dataclasses.dataclass(frozen=True)
class ActivityDefinition:
    name: str
    fn: Callable[..., Any]
    queue: str | None = None
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    start_to_close_timeout: float | None = None
    schedule_to_close_timeout: float | None = None
    heartbeat_timeout: float | None = None


_workflows: dict[str, WorkflowDefinition] = {}
_activities: dict[str, ActivityDefinition] = {}


def _register(table: dict[str, Any], kind: str, definition: Any) -> None:
    existing = table.get(definition.name)
    if existing is not None and _origin(existing.fn) != _origin(definition.fn):
        raise ImproperlyConfigured(
            f"Two {kind}s are registered as {definition.name!r}: {_origin(existing.fn)} and "
            f"{_origin(definition.fn)}. Give one of them another name with name=..."
        )
    table[definition.name] = definition


def _origin(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if hasattr(value, "total_seconds") else float(value)


@overload
def workflow(fn: F, /) -> F: ...
@overload
def workflow(*, name: str | None = None, queue: str | None = None) -> Callable[[F], F]: ...
def workflow(fn: Any = None, /, *, name: str | None = None, queue: str | None = None) -> Any:
    """Register a workflow: ``def wf(ctx: WorkflowContext, *args, **kwargs)``."""

    def decorate(func: F) -> F:
        definition = WorkflowDefinition(name=name or func.__name__, fn=func, queue=queue)
        _register(_workflows, "workflow", definition)
        func.__durable_workflow__ = definition  # type: ignore[attr-defined]
        return func

    return decorate(fn) if fn is not None else decorate


@overload
def activity(fn: F, /) -> F: ...
@overload
def activity(
    *,
    name: str | None = None,
    queue: str | None = None,
    retry: RetryPolicy | None = None,
    start_to_close_timeout: Any = None,
    schedule_to_close_timeout: Any = None,
    heartbeat_timeout: Any = None,
) -> Callable[[F], F]: ...
def activity(
    fn: Any = None,
    /,
    *,
    name: str | None = None,
    queue: str | None = None,
    retry: RetryPolicy | None = None,
    start_to_close_timeout: Any = None,
    schedule_to_close_timeout: Any = None,
    heartbeat_timeout: Any = None,
) -> Any:
    """Register an activity. Timeouts are seconds or ``timedelta``."""

    def decorate(func: F) -> F:
        definition = ActivityDefinition(
            name=name or func.__name__,
            fn=func,
            queue=queue,
            retry=retry or RetryPolicy(),
            start_to_close_timeout=_seconds(start_to_close_timeout),
            schedule_to_close_timeout=_seconds(schedule_to_close_timeout),
            heartbeat_timeout=_seconds(heartbeat_timeout),
        )
        _register(_activities, "activity", definition)
        func.__durable_activity__ = definition  # type: ignore[attr-defined]
        return func

    return decorate(fn) if fn is not None else decorate


def workflow_name(fn_or_name: Any) -> str:
    if isinstance(fn_or_name, str):
        return fn_or_name
    definition = getattr(fn_or_name, "__durable_workflow__", None)
    if definition is None:
        raise NotRegistered(f"{fn_or_name!r} is not decorated with @durable.workflow.")
    return definition.name


def activity_name(fn_or_name: Any) -> str:
    if isinstance(fn_or_name, str):
        return fn_or_name
    definition = getattr(fn_or_name, "__durable_activity__", None)
    if definition is None:
        raise NotRegistered(f"{fn_or_name!r} is not decorated with @durable.activity.")
    return definition.name


def get_workflow_definition(fn_or_name: Any) -> WorkflowDefinition:
    name = workflow_name(fn_or_name)
    try:
        return _workflows[name]
    except KeyError:
        raise NotRegistered(f"No workflow is registered as {name!r}.") from None


def get_activity_definition(fn_or_name: Any) -> ActivityDefinition:
    name = activity_name(fn_or_name)
    try:
        return _activities[name]
    except KeyError:
        raise NotRegistered(f"No activity is registered as {name!r}.") from None


def registered_workflows() -> dict[str, WorkflowDefinition]:
    return dict(_workflows)


def registered_activities() -> dict[str, ActivityDefinition]:
    return dict(_activities)


def activity_call_options(fn_or_name: Any) -> tuple[str, dict[str, Any]]:
    """The name and options recorded when a workflow schedules ``fn_or_name``.

    An activity registered only in other processes (another queue's workers)
    may be called by name; it gets the default retry policy and no timeouts.
    """
    name = activity_name(fn_or_name)
    definition = _activities.get(name)
    if definition is None:
        return name, {"queue": None, "retry": None}
    return name, {
        "queue": definition.queue,
        "retry": definition.retry.to_json(),
        "start_to_close_timeout": definition.start_to_close_timeout,
        "schedule_to_close_timeout": definition.schedule_to_close_timeout,
        "heartbeat_timeout": definition.heartbeat_timeout,
    }


def workflow_call_options(fn_or_name: Any) -> tuple[str, str | None]:
    """The name and queue recorded when a workflow starts ``fn_or_name`` as its child.

    As with activities, a workflow registered only in other processes may be named.
    """
    name = workflow_name(fn_or_name)
    definition = _workflows.get(name)
    return name, definition.queue if definition is not None else None
