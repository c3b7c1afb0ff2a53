"""``ResidentRun``: workflow code kept alive between workflow tasks.

The code runs in a thread of its own and parks there at the durable call it
waits on. The next workflow task hands it only the events that arrived since
(``resume``), so a step does not replay the run's whole history: per-step cost
stays flat however long the run. A worker keeps recent runs (see
``django_durable.executors.cache``); when it no longer holds one (a restart,
another worker took the run's last task, the cache evicted it) the run is
started again over its full history and the code replays up to where it was.

Exactly one side runs at a time: the driver (the caller of ``start``/``resume``)
waits while the code runs, and the code is parked while the driver works, so
the context is never touched by two threads at once.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ..exceptions import CancelledError, SerializationError, WorkflowTaskError
from .context import WorkflowContext
from .events import Event
from .failures import failure_from_exception
from .handles import Abort, ContinueAsNew, Suspend

logger = logging.getLogger("django_durable.engine")

RUNNING, COMPLETED, FAILED, CANCELED, CONTINUED_AS_NEW = (
    "running",
    "completed",
    "failed",
    "canceled",
    "continued_as_new",
)

# (status, result, error) of the code so far
Progress = tuple[str, Any, "dict[str, Any] | None"]

# How long close() waits for parked code to unwind: only code that swallows the
# unwinding and loops without a durable call takes longer, and is left behind.
CLOSE_TIMEOUT = 5.0


class ResidentRun:
    def __init__(
        self,
        fn: Callable[..., Any],
        ctx: WorkflowContext,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
        code_guard: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.ctx = ctx
        self._code_guard = code_guard or nullcontext
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._turn = threading.Condition()
        self._code_turn = False
        self._closing = False
        self._abandoned = False  # timed out: never driven again, nor waited for
        self._progress: Progress = (RUNNING, None, None)
        self._crash: BaseException | None = None
        self.finished = False
        self.timeout = timeout
        ctx._park = self._park
        self._thread = threading.Thread(target=self._body, name=f"durable-workflow-{ctx.workflow_id}"[:60], daemon=True)

    @property
    def length(self) -> int:
        """How many history events the code has seen (its run's history length, once committed)."""
        return self.ctx._length

    def start(self) -> Progress:
        """Run the code from the top over the context's history, until it waits or ends."""
        self._thread.start()
        return self._hand_over()

    def resume(self, events: Sequence[Event]) -> Progress:
        """A new workflow task: ``events`` followed the last commit; the code goes on."""
        assert not self.finished, "a finished run cannot resume"
        self.ctx.extend(events)
        return self._hand_over()

    def committed(self) -> None:
        self.ctx.committed()

    def close(self) -> None:
        """Unwind parked code (its ``finally`` blocks run) and end its thread."""
        if self._abandoned or not self._thread.is_alive():
            return
        if not self.finished:
            self._closing = True
            with self._turn:
                self._code_turn = True
                self._turn.notify_all()
                if not self._turn.wait_for(lambda: not self._code_turn, timeout=CLOSE_TIMEOUT):
                    logger.warning(
                        "Workflow %s did not unwind within %ss (it swallows the engine's Suspend and "
                        "loops); its thread is left behind.",
                        self.ctx.workflow_id,
                        CLOSE_TIMEOUT,
                    )
                    return
        self._thread.join()

    # -- the two sides --------------------------------------------------------

    def _hand_over(self) -> Progress:
        with self._turn:
            self._code_turn = True
            self._turn.notify_all()
            if not self._turn.wait_for(lambda: not self._code_turn, timeout=self.timeout):
                # Never to be driven again: its thread is left behind, and unwinds at its next
                # durable call instead of parking there for good.
                self.finished = self._abandoned = True
                frame = sys._current_frames().get(self._thread.ident or 0)
                where = "".join(traceback.format_stack(frame)) if frame is not None else "(unknown)"
                raise WorkflowTaskError(
                    f"Workflow code ran for more than {self.timeout}s without reaching a durable call "
                    f"(a loop or a blocking call in workflow code?). It was at:\n{where}"
                )
        if self._crash is not None:
            # sys.exit() or the like in workflow code: the workflow task fails, as if the
            # code had run in the worker's own thread.
            crash, self._crash = self._crash, None
            raise crash
        return self._progress

    def _park(self) -> None:
        """Called in the code's thread by a durable call that history cannot answer yet."""
        with self._turn:
            self._code_turn = False
            self._turn.notify_all()
            self._turn.wait_for(lambda: self._code_turn or self._abandoned)
        if self._closing or self._abandoned:
            raise Suspend()

    def _body(self) -> None:
        try:
            with self._code_guard():  # entered and left in the code's own thread
                self._run_code()
        except BaseException as exc:  # noqa: BLE001 - a bug of ours: never leave the driver waiting
            self._crash = exc
        finally:
            self.finished = True
            with self._turn:
                self._code_turn = False
                self._turn.notify_all()

    def _run_code(self) -> None:
        with self._turn:
            self._turn.wait_for(lambda: self._code_turn)
        ctx = self.ctx
        status, result, error = RUNNING, None, None
        try:
            value = self._fn(ctx, *self._args, **self._kwargs)
        except (Suspend, Abort, ContinueAsNew):
            pass
        except CancelledError as exc:
            status, error = CANCELED, failure_from_exception(exc)
        except Exception as exc:  # noqa: BLE001 - the workflow code failed: the workflow fails
            status, error = FAILED, failure_from_exception(exc)
        except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread, re-raised there
            self._crash = exc
        else:
            try:
                status, result = COMPLETED, ctx._encode(value, "the workflow's return value", kind="workflow_result")
            except SerializationError as exc:
                status, error = FAILED, failure_from_exception(exc)
        self._progress = _settle(ctx, status, result, error)


def _settle(ctx: WorkflowContext, status: str, result: Any, error: dict[str, Any] | None) -> Progress:
    request = ctx.continue_request
    if request is not None and ctx.fatal is None:
        # Once called, continue_as_new() decides, whatever the code did with its exception.
        return (
            CONTINUED_AS_NEW,
            {
                "args": request.args_json,
                "kwargs": request.kwargs_json,
                "events": [
                    {"name": event.name, "payload": event.payload, "timestamp": event.timestamp.isoformat()}
                    for event in ctx.unconsumed_events()
                ],
            },
            None,
        )
    return status, result, error
