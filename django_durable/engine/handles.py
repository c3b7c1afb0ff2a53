"""What workflow code holds and what unwinds it.

A durable call returns a ``Task`` (an ``EventTask`` for an external event), whose
``result()`` asks the context for the outcome. ``Suspend``, ``Abort`` and
``ContinueAsNew`` unwind the code; they are ``BaseException``s so that
``except Exception`` in user code cannot swallow them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import WorkflowContext


class Suspend(BaseException):
    """Unwinds workflow code that waits for something history does not hold yet."""


class Abort(BaseException):
    """Unwinds workflow code after an engine-level error (e.g. non-determinism)."""


class ContinueAsNew(BaseException):
    """Unwinds workflow code that called ``ctx.continue_as_new()``."""

    def __init__(self, args: Any, kwargs: Any) -> None:
        super().__init__()
        self.args_json = args
        self.kwargs_json = kwargs


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


class EventTask(Task):
    """Waits for the next external event of ``name`` that no earlier wait consumed."""

    def __init__(self, ctx: WorkflowContext, task_id: int, name: str) -> None:
        super().__init__(ctx, task_id, f"event {name!r}")
        self.name = name
