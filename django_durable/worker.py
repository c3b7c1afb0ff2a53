"""The ``Worker``: claims workflow tasks, activity tasks and due timers, and runs them.

Workflow tasks run in the worker's main thread (replay is short and must not
race with itself); activities run in a thread pool, or are sent to a remote
executor (Celery) that claims and runs them, and with CELERY_WORKFLOW_TASKS so
are workflow tasks. The loop also reaps work whose claimer died. Two threads of
their own serve it: the ``Committer`` records the activities' results, the
``LeaseRenewer`` renews the leases of the work it holds.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from django.db import DatabaseError, close_old_connections, connections

from . import notify, store
from .committer import Committer
from .conf import durable_settings
from .connections import refresh_connections
from .exceptions import DurableError
from .executors import WorkflowTaskExecutor, load_executor
from .executors.activities import (
    RunningActivity,
    execute_activity,
    run_activity_function,
)
from .executors.cache import RunCache
from .executors.workflow_tasks import execute_workflow_task, execute_workflow_tasks
from .faults import crash_point
from .lease_renewer import Held, LeaseRenewer
from .models import WorkItemKind
from .schedules.sync import declared_schedules, sync_schedules
from .store import schedules as schedule_store

logger = logging.getLogger("django_durable.worker")


class Worker:
    # Attempts a worker holds at most per activity thread, finished ones waiting to be
    # recorded included (see ``_room``).
    held_per_thread = 4

    def __init__(
        self,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        batch: bool = False,
        name: str | None = None,
    ) -> None:
        self.queues = list(queues or [durable_settings.DEFAULT_QUEUE])
        self.concurrency = concurrency or durable_settings.ACTIVITY_CONCURRENCY
        self.batch = batch
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_seconds: float = durable_settings.LEASE_SECONDS
        self.poll_interval: float = durable_settings.POLL_INTERVAL
        self._stopping = threading.Event()
        self._signalled = False  # set by the signal handler, which must take no lock
        self._wakeup = threading.Event()
        self._lock = threading.Lock()
        # Keyed by (item id, attempt): a timed-out attempt's thread can outlive
        # it while this worker runs the retry of the same item.
        self._running: dict[tuple[int, int], RunningActivity] = {}
        self._busy = 0  # of _running, those whose function has not returned yet
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="durable-activity")
        self._last_reap = 0.0
        self._schedules_due_at = 0.0  # time.monotonic() of the next look at the schedules
        self._schedules_synced = False  # DURABLE["SCHEDULES"], once per run(), retried after database errors
        self._db_error_backoff = 0.0
        self._workflow_tasks: list[store.Claim] = []  # claimed, being run by the main loop
        self._listener: notify.Listener | None = None
        self.cache = RunCache(durable_settings.WORKFLOW_CACHE_SIZE)
        self._renewer = LeaseRenewer(
            name=self.name,
            queues=self.queues,
            concurrency=self.concurrency,
            lease_seconds=self.lease_seconds,
            held=self._held,
        )
        self._committer = Committer(
            cache=self.cache, eager=self._eager, start_eager=self._start_eager, finished=self._finished
        )
        # None: activities run in self._pool; else they are sent to this executor.
        self.executor = load_executor(durable_settings.ACTIVITY_EXECUTOR)
        # With CELERY_WORKFLOW_TASKS, due workflow tasks are sent to the executor too.
        self.remote_workflow_tasks = bool(
            durable_settings.CELERY_WORKFLOW_TASKS and isinstance(self.executor, WorkflowTaskExecutor)
        )

    # -- lifecycle ---------------------------------------------------------------

    def run(self) -> None:
        self._configure_connections()
        declared_schedules()  # ImproperlyConfigured before anything starts; synced in the loop
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle_signal)
            signal.signal(signal.SIGINT, self._handle_signal)
        logger.info("Worker %s started on queues %s, %d activity threads", self.name, self.queues, self.concurrency)
        self._renewer.start()
        self._committer.start()
        # LISTEN before the first claim: work committed from then on wakes the loop at once.
        self._listener = notify.Listener([notify.WORK_CHANNEL]) if notify.supported() else None
        idle_wait = self._first_idle_wait()
        try:
            while not self._stopping.is_set():
                did_work = self._iterate()
                if did_work:
                    idle_wait = self._first_idle_wait()
                    continue
                if self.batch and self._idle():
                    logger.info("No work due: exiting (--batch).")
                    break
                self._wait(min(idle_wait, max(0.0, self._schedules_due_at - time.monotonic())))
                # Notifications make polling a fall-back; without them, back off while idle.
                idle_wait = min(idle_wait * 2, self.poll_interval)
        finally:
            self._finish_running()
            if self._listener is not None:
                self._listener.close()
        stats = self.cache.stats
        logger.info(
            "Worker %s stopped. Activity results: %d in %d commits, %d taken by their run's next step in the "
            "same commit (%d could not be). Workflow tasks: %d resumed held code; %d steps replayed history.",
            self.name,
            self._committer.results_committed,
            self._committer.commits,
            stats["inline"],
            stats["declined"],
            stats["resumed"],
            stats["replayed"],
        )

    def _first_idle_wait(self) -> float:
        return self.poll_interval if self._listener is not None else min(0.05, self.poll_interval)

    def _wait(self, timeout: float) -> None:
        """Until ``timeout``, new work on our queues (a notification), or ``_wake()``."""
        if self._listener is None:
            self._wakeup.wait(timeout)
            self._wakeup.clear()
            return
        deadline = time.monotonic() + timeout
        while not self._wakeup.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            received = self._listener.wait(remaining)
            if not received or any(queue in self.queues for _, queue in received):
                break  # ours, an interrupt, or a lost connection: look at the database
        self._wakeup.clear()

    def _wake(self) -> None:
        self._wakeup.set()
        if self._listener is not None:
            self._listener.interrupt()

    def _configure_connections(self) -> None:
        max_age = durable_settings.WORKER_CONN_MAX_AGE
        for alias in connections:
            connection = connections[alias]
            connection.settings_dict["CONN_MAX_AGE"] = max_age
            if max_age is None:
                # Persistent connections are checked once per loop (and per
                # activity) so a database restart costs one failed query at most.
                connection.settings_dict["CONN_HEALTH_CHECKS"] = True
            connection.close()  # reconnect with the new settings on next use

    def stop(self) -> None:
        """Stop claiming; running work finishes and the worker exits (the first signal)."""
        self._stopping.set()
        self._wake()

    def _handle_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signalled or self._stopping.is_set():
            logger.warning("Second %s: exiting now, leaving running work to lease expiry.", signal.Signals(signum).name)
            os._exit(1)
        self._signalled = True
        logger.warning(
            "%s received: finishing %d running activities, then exiting (send it again to exit now).",
            signal.Signals(signum).name,
            len(self._running),
        )
        # Not in the handler: it runs between two bytecodes of the main thread, which may be
        # holding the very lock Event.set() takes (a wait or a clear of ``_wakeup`` in
        # progress), and would then wait for itself forever. A bare thread takes no lock of
        # the threading module to start.
        _thread.start_new_thread(self.stop, ())

    def _finish_running(self) -> None:
        while self._running:
            self._wakeup.wait(self.poll_interval)
            self._wakeup.clear()
        self._pool.shutdown(wait=True)
        self._committer.stop()
        self.cache.clear()
        self._renewer.stop()
        close_old_connections()

    def _idle(self) -> bool:
        if self._running:
            return False
        try:
            due_in = store.seconds_until_due(queues=self.queues)
        except DatabaseError:
            return False
        return due_in is None or due_in > 0

    # -- the loop ------------------------------------------------------------

    def _iterate(self) -> bool:
        refresh_connections()
        try:
            if not self._schedules_synced:
                self._sync_schedules()
            self._reap()
            fired = store.fire_due_timers(queues=self.queues, limit=durable_settings.CLAIM_BATCH_SIZE)
            fired += self._fire_schedules()
            if self.remote_workflow_tasks:
                workflow_tasks: list[tuple[int, str]] | list[store.Claim] = (
                    [] if self._stopping.is_set() else self._dispatch(WorkItemKind.WORKFLOW)
                )
            else:
                workflow_tasks = self._claim(WorkItemKind.WORKFLOW, durable_settings.CLAIM_BATCH_SIZE)
                if workflow_tasks:
                    with self._lock:
                        self._workflow_tasks = list(workflow_tasks)
                    try:
                        self._run_workflow_tasks(workflow_tasks)
                    finally:
                        with self._lock:
                            self._workflow_tasks = []
            if self.executor is not None:
                activities: list[tuple[int, str]] | list[store.Claim] = (
                    [] if self._stopping.is_set() else self._dispatch(WorkItemKind.ACTIVITY)
                )
            else:
                free, _ = self._room()
                activities = [] if self._stopping.is_set() else self._claim(WorkItemKind.ACTIVITY, free)
                for item in activities:
                    self._start_activity(item)
        except DatabaseError as exc:
            # Log the first error in full, then one line per retry, backing off to 10 s.
            if self._db_error_backoff == 0:
                logger.exception("Database error in the worker loop; reconnecting.")
            else:
                logger.warning("Database still failing (%s); retrying in %.1fs.", exc, self._db_error_backoff)
            close_old_connections()
            self._stopping.wait(self._db_error_backoff or self.poll_interval)
            self._db_error_backoff = min(max(self._db_error_backoff * 2, self.poll_interval), 10.0)
            return False
        if self._db_error_backoff:
            logger.info("Database reachable again.")
            self._db_error_backoff = 0.0
        return bool(fired or workflow_tasks or activities)

    def _sync_schedules(self) -> None:
        try:
            sync_schedules()
        except DurableError as exc:  # e.g. a schedule deleted by hand while we synced it
            logger.warning('DURABLE["SCHEDULES"] not fully synced: %s', exc)
        self._schedules_synced = True

    def _fire_schedules(self, *, now: bool = False) -> int:
        """Fire the schedules' due ticks: at most every POLL_INTERVAL, and when the next is due."""
        if not now and time.monotonic() < self._schedules_due_at:
            return 0
        limit = durable_settings.CLAIM_BATCH_SIZE
        fired = schedule_store.fire_due_schedules(limit=limit)
        wait = self.poll_interval if fired.next_in is None else min(self.poll_interval, fired.next_in)
        self._schedules_due_at = time.monotonic() + (0.0 if fired.processed >= limit else wait)
        return fired.processed

    def _claim(self, kind: str, limit: int) -> list[store.Claim]:
        items = store.claim(
            owner=self.name, kind=kind, queues=self.queues, limit=limit, lease_seconds=self.lease_seconds
        )
        for item in items:
            logger.debug("Claimed %s %s (item %s, attempt %s)", item.kind, item.name, item.id, item.attempt)
            crash_point("after_claim", item.kind)
        return items

    def _dispatch(self, kind: str) -> list[tuple[int, str]]:
        executor = self.executor
        assert executor is not None
        if kind == WorkItemKind.WORKFLOW:
            assert isinstance(executor, WorkflowTaskExecutor)  # as remote_workflow_tasks requires
            send = executor.send_workflow_task
        else:
            send = executor.send
        sent = store.dispatch(
            kind=kind,
            queues=self.queues,
            limit=durable_settings.CLAIM_BATCH_SIZE,
            dispatch_timeout=durable_settings.DISPATCH_TIMEOUT,
        )
        for item_id, queue in sent:
            try:
                send(item_id, queue)
            except Exception:  # a broker outage must not stop timers, reaping or other work
                # Stop at the first failure (each costs a connection timeout); the items
                # stay marked as sent and go again after DISPATCH_TIMEOUT.
                logger.exception(
                    "Could not send %s item %s to the %s executor; retrying after %ss.",
                    kind,
                    item_id,
                    durable_settings.ACTIVITY_EXECUTOR,
                    durable_settings.DISPATCH_TIMEOUT,
                )
                break
            logger.debug("Sent %s item %s (queue %s) to the executor", kind, item_id, queue)
        return sent

    def _held(self) -> Held:
        with self._lock:
            return Held(list(self._running.values()), list(self._workflow_tasks))

    def _reap(self, *, now: bool = False) -> int:
        """Take back expired leases and settle orphaned children, every REAP_INTERVAL
        (or ``now``). Returns how many items and runs it acted on."""
        if not now and time.monotonic() - self._last_reap < durable_settings.REAP_INTERVAL:
            return 0
        self._last_reap = time.monotonic()
        reaped = store.reap_expired_leases(
            limit=100,
            workflow_backoff=durable_settings.WORKFLOW_TASK_RETRY_INITIAL,
            workflow_backoff_max=durable_settings.WORKFLOW_TASK_RETRY_MAXIMUM,
            max_failures=durable_settings.WORKFLOW_TASK_MAX_FAILURES,
        )
        return reaped + store.apply_parent_close_policies()

    # -- inline, for tests --------------------------------------------------------

    def run_inline_once(self) -> bool:
        """One round of the loop in the calling thread, for ``django_durable.testing``.

        Takes back expired leases, applies parent-close policies, fires due
        timers, then runs due workflow tasks and due activities one after the
        other, here: no thread, no lease renewal, no reconnecting (it may run
        inside a test's transaction). Database errors propagate. Returns whether
        it found any work.
        """
        reaped = self._reap(now=True)
        fired = store.fire_due_timers(queues=self.queues, limit=durable_settings.CLAIM_BATCH_SIZE)
        fired += self._fire_schedules(now=True)
        workflow_tasks = self._claim(WorkItemKind.WORKFLOW, durable_settings.CLAIM_BATCH_SIZE)
        for item in workflow_tasks:
            execute_workflow_task(item, self.cache)
        activities = self._claim(WorkItemKind.ACTIVITY, durable_settings.CLAIM_BATCH_SIZE)
        for item in activities:
            try:
                execute_activity(RunningActivity(item))
            except store.LeaseLost as exc:
                logger.warning("Activity outcome discarded: %s", exc)
        return bool(reaped or fired or workflow_tasks or activities)

    # -- workflow tasks ------------------------------------------------------

    def _run_workflow_tasks(self, items: list[store.Claim]) -> None:
        eager = self._eager()
        try:
            execute_workflow_tasks(items, self.cache, eager, settled=self._settled)
        finally:
            self._start_eager(eager)  # what committed (before a later error) is leased to us

    def _settled(self, item: store.Claim) -> None:
        """A claimed workflow task's outcome is recorded: its lease is renewed no more."""
        with self._lock:
            self._workflow_tasks = [task for task in self._workflow_tasks if task.id != item.id]

    def _room(self, leaving: int = 0) -> tuple[int, int]:
        """How many more attempts this worker takes now: any attempt while a thread is
        idle for it (it never waits for one, its start-to-close clock running), and in all
        up to ``held_per_thread`` attempts a thread held, finished ones waiting to be
        recorded included (``leaving``: finished ones the caller is recording)."""
        with self._lock:
            held_room = self.concurrency * self.held_per_thread - len(self._running) + leaving
            return max(0, min(self.concurrency - self._busy, held_room)), max(0, held_room)

    def _eager(self, leaving: int = 0) -> store.Eager | None:
        """Room for activities a commit schedules, taken at once by this worker's threads;
        those that no timeout would hurt may also wait for one (``Eager.spare``), so that
        they stay with the worker that holds their run's code."""
        if self.executor is not None or self._stopping.is_set():
            return None
        free, held_room = self._room(leaving)
        if held_room <= 0:
            return None
        return store.Eager(
            owner=self.name, queues=self.queues, limit=free, lease_seconds=self.lease_seconds, spare=held_room - free
        )

    def _start_eager(self, eager: store.Eager | None) -> None:
        for item in eager.claims if eager is not None else ():
            logger.debug("Took %s %s at once (item %s)", item.kind, item.name, item.id)
            crash_point("after_claim", item.kind)
            self._start_activity(item)

    # -- activities ----------------------------------------------------------

    def _start_activity(self, item: store.Claim) -> None:
        running = RunningActivity(item)
        with self._lock:
            self._running[(item.id, item.attempt)] = running
            self._busy += 1
        self._pool.submit(self._run_activity, running)

    def _run_activity(self, running: RunningActivity) -> None:
        item = running.item
        completion = None
        try:
            refresh_connections()
            completion = run_activity_function(running)
        except store.LeaseLost as exc:
            logger.warning("Activity outcome discarded: %s", exc)
        except DatabaseError:
            logger.exception(
                "Database error recording activity %s; its lease will expire and it will be retried.", item.name
            )
        except Exception:
            logger.exception("Unexpected error running activity %s", item.name)
        finally:
            with self._lock:
                self._busy -= 1
            if completion is not None:
                # It stays in _running, its lease renewed, until the committer has recorded it.
                self._committer.submit(completion, running)
            else:
                refresh_connections()
                self._finished([running], 0)

    def _finished(self, done: list[RunningActivity], refilled: int) -> None:
        with self._lock:
            for running in done:
                self._running.pop((running.item.id, running.item.attempt), None)
        # Threads the commit refilled leave nothing for the loop to claim; waking it
        # anyway would cost a round of claim queries per step.
        if refilled < len(done) or self._stopping.is_set():
            self._wake()
