"""Recording a finished attempt's outcome through transient database errors.

An outcome (a result, a failure, a wait for a task token) that a deadlock, a
serialization failure, a lock timeout or a lost connection kept from committing is
recorded again, with backoff, for as long as the attempt's lease holds: dropped,
the lease would expire and the activity run again. Trying again is always safe,
whatever the lease: every outcome is fenced on the attempt, so a try that did
commit although its caller saw an error leaves the next one finding the attempt
gone (``lost``), never recording it twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, close_old_connections, connection

logger = logging.getLogger("django_durable.worker")

# What Django raises for a deadlock, a serialization failure, a lock timeout ("database
# is locked") or a lost connection; an IntegrityError, a DataError or a ProgrammingError
# would fail the same way again.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 5.0

T = TypeVar("T")


class Lease:
    """What this process knows of an attempt's lease: when it was last extended (the
    claim, then each renewal, on the monotonic clock and read before the renewal's
    statement, so never later than the database's), and whether a renewal found it
    expired or taken."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.renewed_at = time.monotonic()
        self.lost = False

    def renewed(self, *, asked_at: float, lost: bool) -> None:
        """A renewal asked at ``asked_at`` extended the lease, or found it lost."""
        if lost:
            self.lost = True
        else:
            self.renewed_at = max(self.renewed_at, asked_at)

    def holds(self) -> bool:
        """Whether the lease is still valid: renewed less than a lease ago and not found lost.
        Past that no reaper waits any longer, and another worker may run the attempt."""
        return not self.lost and time.monotonic() - self.renewed_at < self.seconds


def record_outcome(record: Callable[[], T], *, lease: Lease, what: str) -> T:
    """``record()``, tried again after a transient database error, backing off from 50 ms to
    5 s, while ``lease`` holds (the lease renewer keeps it while this runs). Any other error,
    or a transient one once the lease is gone, is raised; so is one inside a transaction of
    the caller's (a test's), which this cannot retry alone."""
    backoff = FIRST_BACKOFF
    tries = 1
    while True:
        try:
            return record()
        except TRANSIENT_ERRORS as exc:
            if connection.in_atomic_block or not lease.holds():
                raise
            logger.warning(
                "Database error recording %s (%s); its lease holds: trying again in %.2fs (try %d).",
                what,
                str(exc).strip() or type(exc).__name__,
                backoff,
                tries + 1,
            )
        close_old_connections()  # a lost connection is replaced; one that is fine is kept
        _pause.wait(backoff)  # not time.sleep(): under libfaketime it fails or hangs
        backoff = min(backoff * 2, MAX_BACKOFF)
        tries += 1


_pause = threading.Event()  # never set
