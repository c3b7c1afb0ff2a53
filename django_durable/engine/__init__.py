"""The replay engine: pure Python, no database.

History plus a workflow function in, new history events out. Everything the
store and the worker need crosses this boundary as plain data
(:class:`~django_durable.engine.events.Event`).
"""

from .context import WorkflowContext
from .events import Event, EventKind
from .handles import Task
from .replay import TaskOutcome, run_workflow_task

__all__ = ["Event", "EventKind", "Task", "TaskOutcome", "WorkflowContext", "run_workflow_task"]
