"""``@workflow`` and ``@activity``: register plain functions under a name."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from django.core.exceptions import ImproperlyConfigured

from .engine.call_options import RESERVED_ACTIVITY_KEYWORDS
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

# Workflows and activities of the app itself (the Tasks backend's django_durable.run_task):
# the HTTP API and the admin never start them.
INTERNAL_PREFIX = "django_durable."


@dataclasses.dataclass(frozen=True)
class _Condition:
    holds: Callable[[], bool]
    hint: str


# (kind, name) -> when the definition exists. Asked at every lookup, not once at start-up,
# so that it follows the settings of the moment (a test's override_settings included).
_conditions: dict[tuple[str, str], _Condition] = {}


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
        _refuse_reserved_parameters(func, name or func.__name__)
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


def _refuse_reserved_parameters(func: Callable[..., Any], name: str) -> None:
    """An activity taking ``concurrency_key`` or ``priority`` would no longer receive it:
    ``call_activity`` keeps those keywords for itself since flow control."""
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):  # a callable without a signature Python can read
        return
    clash = [keyword for keyword in RESERVED_ACTIVITY_KEYWORDS if keyword in parameters]
    if clash:
        raise ImproperlyConfigured(
            f"Activity {name!r} has a parameter named {' and '.join(map(repr, clash))}: call_activity() reserves "
            f"{' and '.join(RESERVED_ACTIVITY_KEYWORDS)} for itself since django-durable's flow control (a "
            "breaking change: they set the call's concurrency key and priority and are not passed to the "
            "activity). Rename the parameter."
        )


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


def is_internal(name: str) -> bool:
    return name.startswith(INTERNAL_PREFIX)


def not_registered(kind: str, name: str, hint: str = "") -> NotRegistered:
    """The one answer for a name that cannot be used, whatever the reason."""
    return NotRegistered(f"No {kind} is registered as {name!r}.{f' {hint}' if hint else ''}")


def exists_only_when(kind: str, name: str, condition: Callable[[], bool], *, hint: str) -> None:
    """Make the registered ``kind`` ("workflow" or "activity") ``name`` unknown to lookups
    while ``condition()`` is false; ``hint`` tells a Python caller what makes it exist."""
    _conditions[(kind, name)] = _Condition(condition, hint)


def _unavailable(kind: str, name: str) -> _Condition | None:
    condition = _conditions.get((kind, name))
    return condition if condition is not None and not condition.holds() else None


def _lookup(table: dict[str, Any], kind: str, name: str) -> Any:
    definition = table.get(name)
    if definition is None:
        raise not_registered(kind, name)
    unavailable = _unavailable(kind, name)
    if unavailable is not None:
        raise not_registered(kind, name, unavailable.hint)
    return definition


def get_workflow_definition(fn_or_name: Any) -> WorkflowDefinition:
    definition: WorkflowDefinition = _lookup(_workflows, "workflow", workflow_name(fn_or_name))
    return definition


def get_activity_definition(fn_or_name: Any) -> ActivityDefinition:
    definition: ActivityDefinition = _lookup(_activities, "activity", activity_name(fn_or_name))
    return definition


def registered_workflows() -> dict[str, WorkflowDefinition]:
    return {name: item for name, item in _workflows.items() if _unavailable("workflow", name) is None}


def registered_activities() -> dict[str, ActivityDefinition]:
    return {name: item for name, item in _activities.items() if _unavailable("activity", name) is None}


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
