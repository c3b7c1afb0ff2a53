"""One replay set-up for every place that runs workflow code: the worker's workflow tasks,
``durable_replay`` and the admin's time travel. Each replays with the project's converter
and registry, and under the worker's guards: a query from workflow code raises
``DatabaseAccessInWorkflow``, and code that runs ``WORKFLOW_TASK_TIMEOUT`` seconds without
reaching a durable call is stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from django.db import connections

from .. import registry
from ..conf import durable_settings
from ..converter import get_converter, payload_limits
from ..engine import TaskOutcome, run_workflow_task
from ..engine.events import Event
from ..engine.replay import VarsAt, check_history, vars_at
from ..engine.resident import ResidentRun
from ..exceptions import DatabaseAccessInWorkflow


def replay_options() -> dict[str, Any]:
    """What every replay of registered workflow code takes: the project's converter and
    registry, and the worker's guards."""
    return {
        "converter": get_converter(),
        "activity_options": registry.activity_call_options,
        "workflow_options": registry.workflow_call_options,
        "task_timeout": durable_settings.WORKFLOW_TASK_TIMEOUT,
        "code_guard": no_database_access,
    }


def run_task(*, workflow_name: str, resident: ResidentRun | None, **task: Any) -> TaskOutcome:
    """A worker's workflow task of a registered workflow, with the history limits
    (``task``: ids, queue, history, inbox, now)."""
    return run_workflow_task(
        registry.get_workflow_definition(workflow_name).fn,
        workflow_name=workflow_name,
        history_warn_events=durable_settings.HISTORY_WARN_EVENTS,
        history_max_events=durable_settings.HISTORY_MAX_EVENTS,
        history_warn_bytes=durable_settings.HISTORY_WARN_BYTES,
        history_max_bytes=durable_settings.HISTORY_MAX_BYTES,
        payload_limits=payload_limits(),
        resident=resident,
        **replay_options(),
        **task,
    )


def replay_error(
    fn: Callable[..., Any],
    *,
    workflow_id: str,
    run_id: str,
    workflow_name: str,
    queue: str,
    history: Sequence[Event],
) -> BaseException | None:
    """``durable_replay``: what the next workflow task of a stored run would fail with under
    the current code (``NonDeterminismError``, a guard's error, a crash), or None."""
    try:
        return check_history(
            fn,
            workflow_id=workflow_id,
            run_id=run_id,
            workflow_name=workflow_name,
            queue=queue,
            history=history,
            **replay_options(),
        )
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the worker would fail the workflow task the same way
        return exc


def replay_vars_at(
    fn: Callable[..., Any],
    *,
    workflow_id: str,
    run_id: str,
    workflow_name: str,
    queue: str,
    history: Sequence[Event],
    seq: int,
) -> VarsAt:
    """The admin's time travel: the run's variables as of event ``seq``, and as of the one
    before, from one replay (what stops it is ``error``)."""
    return vars_at(
        fn,
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_name=workflow_name,
        queue=queue,
        history=history,
        seq=seq,
        **replay_options(),
    )


@contextmanager
def no_database_access() -> Iterator[None]:
    """Workflow code's thread: a query on any database raises ``DatabaseAccessInWorkflow``
    (the workflow task fails), and the thread's connections are closed when it ends."""
    with ExitStack() as stack:
        for alias in connections:
            stack.enter_context(connections[alias].execute_wrapper(_refuse_query))
        try:
            yield
        finally:
            connections.close_all()  # this thread's own, should the code have connected


def _refuse_query(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    raise DatabaseAccessInWorkflow(
        f"Workflow code ran a database query ({' '.join(str(sql).split())[:120]}). Workflow code is "
        "replayed and must be deterministic: query the database in an activity."
    )
