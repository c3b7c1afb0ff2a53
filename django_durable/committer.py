"""The committer: one thread recording the results of a worker's activity threads.

Activity threads hand their results over (``submit``) and are free for their next
attempt at once; the committer records what has gathered in one transaction (group
commit), several results of one run making one step of it.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from django.db import DatabaseError, close_old_connections

from . import store
from .connections import refresh_connections
from .executors.activities import RunningActivity, commit_activities
from .executors.cache import RunCache
from .executors.outcomes import record_outcome

logger = logging.getLogger("django_durable.worker")


class Handed(NamedTuple):
    """A result handed to the committer, and its attempt: the worker holds the attempt,
    its lease renewed, until the committer reports it ``finished``."""

    completion: store.Completion
    running: RunningActivity


class Committer:
    """Records handed-over results in group commits, from a thread of its own.

    Around each commit it asks the worker for room for the activities the commit
    schedules (``eager``, given how many attempts the commit takes off its hands),
    gives them to the worker (``start_eager``), and reports the attempts it recorded,
    or gave up on, as ``finished`` (with how many of them the eager activities refilled).
    """

    batch_size = 100  # the most results one commit records

    def __init__(
        self,
        *,
        cache: RunCache,
        eager: Callable[[int], store.Eager | None],
        start_eager: Callable[[store.Eager | None], None],
        finished: Callable[[list[RunningActivity], int], None],
    ) -> None:
        self._cache = cache
        self._eager = eager
        self._start_eager = start_eager
        self._finished = finished
        self._to_commit: deque[Handed] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self.commits = self.results_committed = 0
        self._thread = threading.Thread(target=self._commit_forever, name="durable-committer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, completion: store.Completion, running: RunningActivity) -> None:
        with self._ready:
            self._to_commit.append(Handed(completion, running))
            self._ready.notify()

    def stop(self) -> None:
        """Record everything handed over, then end the thread; returns when it has."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _commit_forever(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._commit(batch)
            except BaseException:  # the committer must outlive anything: a stop waits on it
                logger.exception("Committer error; the batch's leases will expire and its activities be retried.")
                self._finished([handed.running for handed in batch], 0)
        close_old_connections()

    def _next_batch(self) -> list[Handed] | None:
        """What has gathered (several results of one run make one step); None once
        stopped with nothing left."""
        with self._ready:
            while not self._to_commit:
                if self._stopping:
                    return None
                self._ready.wait()
            batch: list[Handed] = []
            while self._to_commit and len(batch) < self.batch_size:
                batch.append(self._to_commit.popleft())
            return batch

    def _commit(self, batch: list[Handed]) -> None:
        """Record the batch in one transaction; should a database error stop it, each
        result on its own, a transient error tried again for as long as its lease holds
        (a deadlock with a parent or child run, a lost connection: see ``record_outcome``)."""
        try:
            self._commit_once(batch)
            return
        except DatabaseError:
            logger.warning(
                "Database error recording %d activities (%s); recording them again, one by one.",
                len(batch),
                ", ".join(handed.completion.item.name for handed in batch),
                exc_info=True,
            )
        close_old_connections()
        for handed in batch:
            item = handed.completion.item
            try:
                record_outcome(
                    functools.partial(self._commit_alone, handed),
                    lease=handed.running.lease,
                    what=f"activity {item.name!r} attempt {item.attempt}",
                )
            except DatabaseError:
                logger.exception(
                    "Could not record activity %s attempt %d; its lease will expire and it will be retried.",
                    item.name,
                    item.attempt,
                )
                self._finished([handed.running], 0)

    def _commit_alone(self, handed: Handed) -> None:
        # A fresh Completion: a failed try's flags (lost, ran) do not carry over.
        fresh = store.Completion(handed.completion.item, handed.completion.result)
        self._commit_once([Handed(fresh, handed.running)], again=True)

    def _commit_once(self, batch: list[Handed], *, again: bool = False) -> None:
        """One transaction recording the batch; a database error is raised, the batch still
        held (its leases renewed), anything else ends it."""
        completions = [handed.completion for handed in batch]
        eager = self._eager(len(batch))
        failed = False
        try:
            refresh_connections()
            commit_activities(completions, cache=self._cache, eager=eager)
        except DatabaseError:
            failed = True
            raise
        except Exception:
            logger.exception("Unexpected error recording activities %s", [c.item.name for c in completions])
        else:
            self.commits += 1
            self.results_committed += len(batch)
            for completion in completions:
                if completion.lost:
                    logger.warning(
                        "Activity outcome discarded: %s%s",
                        store.lease_lost(completion.item),
                        " (or a try that failed went through)" if again else "",
                    )
        finally:
            # Before these are finished: a stopping worker waits for them too.
            self._start_eager(eager)
            if not failed:
                self._finished([handed.running for handed in batch], len(eager.claims) if eager is not None else 0)
