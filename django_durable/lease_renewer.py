"""The lease renewer: one thread keeping the leases of the work a worker holds."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from django.db import DatabaseError, close_old_connections

from . import store
from .conf import durable_settings
from .executors.activities import RunningActivity

logger = logging.getLogger("django_durable.worker")


class Held(NamedTuple):
    """What a worker holds leases on: its activity attempts, running or finished and
    waiting to be recorded, and the workflow tasks its main loop is running."""

    activities: list[RunningActivity]
    workflow_tasks: list[store.Claim]


class LeaseRenewer:
    """Renews the leases of what the worker holds (``held()``) every third of a lease,
    from a thread of its own so that a long run of workflow tasks in the main loop
    cannot starve renewal, and upserts the worker's heartbeat row every REAP_INTERVAL."""

    def __init__(
        self,
        *,
        name: str,
        queues: Sequence[str],
        concurrency: int,
        lease_seconds: float,
        held: Callable[[], Held],
    ) -> None:
        self._name = name
        self._queues = list(queues)
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._held = held
        self._stop = threading.Event()
        self._last_beat = -float("inf")
        self._beat_started = False
        self._thread = threading.Thread(target=self._renew_forever, name="durable-lease-renewer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Renew no more, mark the worker stopped; returns once the thread has ended."""
        self._stop.set()
        self._thread.join()

    def _renew_forever(self) -> None:
        # The heartbeat row is written from this thread, not the main loop, so that a
        # worker busy with a long run of workflow tasks still reports itself.
        self._record_heartbeat()
        while not self._stop.wait(self._lease_seconds / 3):
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
                store.worker_stopped(self._name)
                return
            store.record_worker_heartbeat(
                self._name,
                socket.gethostname(),
                os.getpid(),
                self._queues,
                self._concurrency,
                starting=not self._beat_started,
            )
            self._beat_started = True
        except Exception as exc:  # noqa: BLE001 - the lease renewer must outlive any bookkeeping failure
            logger.warning("Could not record the worker's heartbeat (%s); retrying.", exc)

    def _renew_leases(self) -> None:
        held = self._held()
        renewing = _latest_attempts(held.activities)
        leases = [
            store.LeaseRenewal(
                running.item.id, running.item.attempt, store.attempt_deadline(running.item, running.heartbeat_at)
            )
            for running in renewing
        ]
        leases += [store.LeaseRenewal(task.id, task.attempt, None) for task in held.workflow_tasks]
        asked_at = time.monotonic()
        lost = store.renew_leases(owner=self._name, leases=leases, lease_seconds=self._lease_seconds)
        for running in renewing:  # a result waiting to be recorded is tried again while its lease holds
            running.lease.renewed(asked_at=asked_at, lost=running.item.id in lost)
        held = self._held()  # what finished meanwhile was not lost
        still_here = {running.item.id for running in held.activities}
        still_here.update(task.id for task in held.workflow_tasks)
        for item_id in lost & still_here:
            logger.warning("Lost the lease of work item %s; its outcome will be discarded.", item_id)


def _latest_attempts(activities: list[RunningActivity]) -> list[RunningActivity]:
    """Of ``activities``, each the latest attempt of its work item among them: a timed-out
    attempt's thread can outlive it while the worker runs the retry of the same item."""
    latest: dict[int, int] = {}
    for running in activities:
        latest[running.item.id] = max(latest.get(running.item.id, running.item.attempt), running.item.attempt)
    return [running for running in activities if running.item.attempt == latest[running.item.id]]
