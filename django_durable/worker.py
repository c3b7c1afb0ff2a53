"""The ``Worker``: claims workflow tasks, activity tasks and due timers, and runs them.

Workflow tasks run in the worker's main thread (replay is short and must not
race with itself); activities run in a thread pool, or are sent to a remote
executor (Celery) that claims and runs them, and with CELERY_WORKFLOW_TASKS so
are workflow tasks. One loop also renews the
leases of running work and reaps work whose claimer died.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from django.db import DatabaseError, close_old_connections, connections

from . import notify, store
from .conf import durable_settings
from .executors import load_executor
from .executors.cache import RunCache
from .executors.outcomes import record_outcome
from .executors.run import (
    RunningActivity,
    commit_activities,
    execute_activity,
    execute_workflow_task,
    execute_workflow_tasks,
    run_activity_function,
)
from .faults import crash_point
from .models import WorkItemKind

logger = logging.getLogger("django_durable.worker")

_last_connection_check = threading.local()


def refresh_connections(*, at_most_every: float = 1.0) -> None:
    """``close_old_connections()``, skipped when this thread ran it less than
    ``at_most_every`` seconds ago and its connections saw no error since. With the
    worker's health-checked persistent connections each run costs a query on the
    next use: once per step under load, where a connection just used is known good."""
    checked = getattr(_last_connection_check, "at", None)
    now = time.monotonic()
    if (
        checked is not None
        and now - checked < at_most_every
        and not any(conn.errors_occurred for conn in connections.all(initialized_only=True))
    ):
        return
    _last_connection_check.at = now
    close_old_connections()


class Worker:
    # Attempts a worker holds at most per activity thread, finished ones waiting to be
    # recorded included (see ``_room``), and the most results one commit records.
    held_per_thread = 4
    commit_batch_size = 100

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
        self._wakeup = threading.Event()
        self._lock = threading.Lock()
        # Keyed by (item id, attempt): a timed-out attempt's thread can outlive
        # it while this worker runs the retry of the same item.
        self._running: dict[tuple[int, int], RunningActivity] = {}
        self._busy = 0  # of _running, those whose function has not returned yet
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="durable-activity")
        self._last_reap = 0.0
        self._db_error_backoff = 0.0
        self._workflow_tasks: list[store.Claim] = []  # claimed, being run by the main loop
        self._listener: notify.Listener | None = None
        self.cache = RunCache(durable_settings.WORKFLOW_CACHE_SIZE)
        # Leases are renewed from a thread of their own so that a long run of
        # workflow tasks in the main loop cannot starve renewal.
        self._renewer_stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_forever, name="durable-lease-renewer", daemon=True)
        # Activity threads hand their results to one committer, which records what has
        # gathered in one transaction (group commit); they are free for the next attempt.
        self._to_commit: deque[store.Completion] = deque()
        self._commit_ready = threading.Condition()
        self._committer_stop = False
        self._commits = self._results_committed = 0
        self._committer = threading.Thread(target=self._commit_forever, name="durable-committer", daemon=True)
        self._last_beat = -float("inf")
        self._beat_started = False
        # None: activities run in self._pool; else they are sent to this executor.
        self.executor = load_executor(durable_settings.ACTIVITY_EXECUTOR)
        # With CELERY_WORKFLOW_TASKS, due workflow tasks are sent to the executor too.
        self.remote_workflow_tasks = bool(
            durable_settings.CELERY_WORKFLOW_TASKS and hasattr(self.executor, "send_workflow_task")
        )

    # -- lifecycle ---------------------------------------------------------------

    def run(self) -> None:
        self._configure_connections()
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
                self._wait(idle_wait)
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
            self.name, self._results_committed, self._commits, stats["inline"], stats["declined"],
            stats["resumed"], stats["replayed"],
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
        if self._stopping.is_set():
            logger.warning("Second %s: exiting now, leaving running work to lease expiry.", signal.Signals(signum).name)
            os._exit(1)
        logger.warning(
            "%s received: finishing %d running activities, then exiting (send it again to exit now).",
            signal.Signals(signum).name, len(self._running),
        )
        self.stop()

    def _finish_running(self) -> None:
        while self._running:
            self._wakeup.wait(self.poll_interval)
            self._wakeup.clear()
        self._pool.shutdown(wait=True)
        with self._commit_ready:
            self._committer_stop = True
            self._commit_ready.notify()
        if self._committer.is_alive():
            self._committer.join()
        self.cache.clear()
        self._renewer_stop.set()
        self._renewer.join()
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
            self._reap()
            fired = store.fire_due_timers(queues=self.queues, limit=durable_settings.CLAIM_BATCH_SIZE)
            if self.remote_workflow_tasks:
                workflow_tasks: list[object] = [] if self._stopping.is_set() else self._dispatch(WorkItemKind.WORKFLOW)
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
                activities = [] if self._stopping.is_set() else self._dispatch(WorkItemKind.ACTIVITY)
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

    def _claim(self, kind: str, limit: int) -> list[store.Claim]:
        items = store.claim(
            owner=self.name, kind=kind, queues=self.queues, limit=limit, lease_seconds=self.lease_seconds
        )
        for item in items:
            logger.debug("Claimed %s %s (item %s, attempt %s)", item.kind, item.name, item.id, item.attempt)
            crash_point("after_claim", item.kind)
        return items

    def _dispatch(self, kind: str) -> list[tuple[int, str]]:
        assert self.executor is not None
        send = self.executor.send_workflow_task if kind == WorkItemKind.WORKFLOW else self.executor.send
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
                logger.exception("Could not send %s item %s to the %s executor; retrying after %ss.", kind,
                                 item_id, durable_settings.ACTIVITY_EXECUTOR, durable_settings.DISPATCH_TIMEOUT)
                break
            logger.debug("Sent %s item %s (queue %s) to the executor", kind, item_id, queue)
        return sent

    def _renew_forever(self) -> None:
        # The heartbeat row is written from this thread, not the main loop, so that a
        # worker busy with a long run of workflow tasks still reports itself.
        self._record_heartbeat()
        while not self._renewer_stop.wait(self.lease_seconds / 3):
            try:
                close_old_connections()
                self._renew_leases()
            except DatabaseError as exc:
                logger.warning("Could not renew leases (%s); retrying.", exc)
            self._record_heartbeat()
        self._record_heartbeat(stopped=True)
        close_old_connections()

    def _record_heartbeat(self, *, stopped: bool = False) -> None:
        """Upsert this worker's WorkerHeartbeat row every REAP_INTERVAL (for the dashboard)."""
        if not stopped and time.monotonic() - self._last_beat < durable_settings.REAP_INTERVAL:
            return
        self._last_beat = time.monotonic()
        try:
            if stopped:
                store.worker_stopped(self.name)
                return
            store.record_worker_heartbeat(
                self.name, socket.gethostname(), os.getpid(), self.queues, self.concurrency,
                starting=not self._beat_started,
            )
            self._beat_started = True
        except Exception as exc:  # noqa: BLE001 - the lease renewer must outlive any bookkeeping failure
            logger.warning("Could not record the worker's heartbeat (%s); retrying.", exc)

    def _renew_leases(self) -> None:
        with self._lock:
            renewing = [running for running in self._running.values() if self._is_current(running.item)]
            leases = [
                store.LeaseRenewal(running.item.id, running.item.attempt,
                                   store.attempt_deadline(running.item, running.heartbeat_at))
                for running in renewing
            ]
            leases += [store.LeaseRenewal(task.id, task.attempt, None) for task in self._workflow_tasks]
        asked_at = time.monotonic()
        lost = store.renew_leases(owner=self.name, leases=leases, lease_seconds=self.lease_seconds)
        for running in renewing:  # a result waiting to be recorded is tried again while its lease holds
            running.lease.renewed(asked_at=asked_at, lost=running.item.id in lost)
        with self._lock:  # what finished meanwhile was not lost
            still_here = {running.item.id for running in self._running.values()}
            still_here.update(task.id for task in self._workflow_tasks)
        for item_id in lost & still_here:
            logger.warning("Lost the lease of work item %s; its outcome will be discarded.", item_id)

    def _is_current(self, item: store.Claim) -> bool:
        """Whether ``item`` is the latest attempt of its work item running here."""
        return all(attempt <= item.attempt for item_id, attempt in self._running if item_id == item.id)

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

    def _room(self, *, leaving: int = 0) -> tuple[int, int]:
        """How many more attempts this worker takes now: any attempt while a thread is
        idle for it (it never waits for one, its start-to-close clock running), and in all
        up to ``held_per_thread`` attempts a thread held, finished ones waiting to be
        recorded included (``leaving``: finished ones the caller is recording)."""
        with self._lock:
            held_room = self.concurrency * self.held_per_thread - len(self._running) + leaving
            return max(0, min(self.concurrency - self._busy, held_room)), max(0, held_room)

    def _eager(self, *, leaving: int = 0) -> store.Eager | None:
        """Room for activities a commit schedules, taken at once by this worker's threads;
        those that no timeout would hurt may also wait for one (``Eager.spare``), so that
        they stay with the worker that holds their run's code."""
        if self.executor is not None or self._stopping.is_set():
            return None
        free, held_room = self._room(leaving=leaving)
        if held_room <= 0:
            return None
        return store.Eager(owner=self.name, queues=self.queues, limit=free, lease_seconds=self.lease_seconds,
                           spare=held_room - free)

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
            logger.exception("Database error recording activity %s; its lease will expire and it will be retried.", item.name)
        except Exception:
            logger.exception("Unexpected error running activity %s", item.name)
        finally:
            with self._lock:
                self._busy -= 1
            if completion is not None:
                # It stays in _running, its lease renewed, until the committer has recorded it.
                with self._commit_ready:
                    self._to_commit.append(completion)
                    self._commit_ready.notify()
            else:
                refresh_connections()
                self._finished([running], refilled=0)

    def _finished(self, done: list[RunningActivity], *, refilled: int) -> None:
        with self._lock:
            for running in done:
                self._running.pop((running.item.id, running.item.attempt), None)
        # Threads the commit refilled leave nothing for the loop to claim; waking it
        # anyway would cost a round of claim queries per step.
        if refilled < len(done) or self._stopping.is_set():
            self._wake()

    # -- group commit ------------------------------------------------------------

    def _commit_forever(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._commit(batch)
            except BaseException:  # the committer must outlive anything: a stop waits on it
                logger.exception("Committer error; the batch's leases will expire and its activities be retried.")
                with self._lock:
                    for completion in batch:
                        self._running.pop((completion.item.id, completion.item.attempt), None)
                self._wake()
        close_old_connections()

    def _next_batch(self) -> list[store.Completion] | None:
        """What has gathered (several results of one run make one step); None once
        stopped with nothing left."""
        with self._commit_ready:
            while not self._to_commit:
                if self._committer_stop:
                    return None
                self._commit_ready.wait()
            batch: list[store.Completion] = []
            while self._to_commit and len(batch) < self.commit_batch_size:
                batch.append(self._to_commit.popleft())
            return batch

    def _commit(self, batch: list[store.Completion]) -> None:
        """Record the batch in one transaction; should a database error stop it, each
        result on its own, a transient error tried again for as long as its lease holds
        (a deadlock with a parent or child run, a lost connection: see ``record_outcome``)."""
        try:
            self._commit_once(batch)
            return
        except DatabaseError:
            logger.warning("Database error recording %d activities (%s); recording them again, one by one.",
                           len(batch), ", ".join(c.item.name for c in batch), exc_info=True)
        close_old_connections()
        for completion in batch:
            item = completion.item
            with self._lock:
                running = self._running[(item.id, item.attempt)]  # held until recorded or dropped here
            try:
                record_outcome(functools.partial(self._commit_alone, completion), lease=running.lease,
                               what=f"activity {item.name!r} attempt {item.attempt}")
            except DatabaseError:
                logger.exception("Could not record activity %s attempt %d; its lease will expire and it will be "
                                 "retried.", item.name, item.attempt)
                self._finished([running], refilled=0)

    def _commit_alone(self, completion: store.Completion) -> None:
        # A fresh Completion: a failed try's flags (lost, ran) do not carry over.
        self._commit_once([store.Completion(completion.item, completion.result)], again=True)

    def _commit_once(self, batch: list[store.Completion], *, again: bool = False) -> None:
        """One transaction recording the batch; a database error is raised, the batch still
        held (in ``_running``, its leases renewed), anything else ends it."""
        with self._lock:
            done = [self._running[key] for c in batch if (key := (c.item.id, c.item.attempt)) in self._running]
        eager = self._eager(leaving=len(batch))
        failed = False
        try:
            refresh_connections()
            commit_activities(batch, cache=self.cache, eager=eager)
        except DatabaseError:
            failed = True
            raise
        except Exception:
            logger.exception("Unexpected error recording activities %s", [c.item.name for c in batch])
        else:
            self._commits += 1
            self._results_committed += len(batch)
            for completion in batch:
                if completion.lost:
                    logger.warning("Activity outcome discarded: %s%s", store.lease_lost(completion.item),
                                   " (or a try that failed went through)" if again else "")
        finally:
            # Before these leave _running: a stopping worker waits for them too.
            self._start_eager(eager)
            if not failed:
                self._finished(done, refilled=len(eager.claims) if eager is not None else 0)
