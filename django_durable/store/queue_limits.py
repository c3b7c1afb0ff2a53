"""Flow control where work is leased: which queues are limited, and how many of a limited
queue's waiting attempts may be leased now, under the lock of the queue's ``QueueState`` row.

The leasing of a limited queue is serialised on that row (a plain ``FOR UPDATE``; on SQLite
the write transaction's lock): every count taken under it is exact. Unlimited queues never
touch it; a worker learns which queues are limited from the settings and, every
``QUEUE_LIMITS_REFRESH`` seconds, from the operators' overrides.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import connection
from django.db.models import Count, QuerySet

from ..conf import durable_settings
from ..models import QueueState, WorkItem, WorkItemKind
from ..queues import QueueLimits, configured_limits, parse_queue_limits
from .clock import _seconds, db_now
from .dialects import dialect_for

logger = logging.getLogger("django_durable.worker")

# How many waiting attempts a pick under ``key_concurrency`` looks through for keys with a
# free slot: beyond it, attempts of free keys wait behind those of full ones.
KEY_SCAN = 1000


@dataclasses.dataclass
class _Known:
    limits: Mapping[str, QueueLimits]
    until: float


_known: _Known | None = None
_states: set[str] = set()  # queues whose QueueState row this process knows exists
_lock = threading.Lock()


def limited_queues() -> Mapping[str, QueueLimits]:
    """The limited queues and their limits, as of at most ``QUEUE_LIMITS_REFRESH`` seconds ago:
    which queues go through a queue's lock (the limits applied are read under it)."""
    global _known
    known = _known
    if known is None or time.monotonic() >= known.until:
        limits = dict(configured_limits(durable_settings.QUEUES))
        for queue, override in QueueState.objects.filter(limits__isnull=False).values_list("queue", "limits"):
            limits[queue] = _effective(queue, override)
        known = _Known(
            {queue: limit for queue, limit in limits.items() if limit.limited},
            time.monotonic() + float(durable_settings.QUEUE_LIMITS_REFRESH),
        )
        _known = known
    return known.limits


def known_limited_queues() -> Mapping[str, QueueLimits]:
    """``limited_queues()`` without a query, for paths inside a transaction (a commit's eager
    leasing): as last read, or the settings' alone before the first read."""
    known = _known
    if known is not None:
        return known.limits
    return {queue: limit for queue, limit in configured_limits(durable_settings.QUEUES).items() if limit.limited}


def forget() -> None:
    """Reread the limits at the next lease (a changed setting, an override just saved)."""
    global _known
    _known = None


def ensure_state(queue: str) -> None:
    """Create the queue's row, before a transaction locks it: creating it inside one would
    take a gap lock on MySQL that two workers' inserts deadlock on."""
    if queue in _states:
        return
    QueueState.objects.get_or_create(queue=queue)
    with _lock:
        _states.add(queue)


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "DURABLE":
        forget()
        _states.clear()  # a test's database may have been flushed with it


setting_changed.connect(_reload)


def _held(queue: str) -> QuerySet[WorkItem]:
    """The queue's attempts that hold a slot: leased and running (one waiting for completion
    by task token does not)."""
    return WorkItem.objects.filter(
        kind=WorkItemKind.ACTIVITY, queue=queue, lease_owner__isnull=False, awaiting_completion=False
    )


@dataclasses.dataclass
class Gate:
    """A limited queue's row, locked for the rest of the caller's transaction."""

    state_id: int
    queue: str
    limits: QueueLimits
    starts: list[float]
    clock: datetime.datetime | None = None  # read once the lock was held (a rate limit's)

    def pick(
        self,
        candidates: QuerySet[WorkItem],
        want: int,
        *,
        now: datetime.datetime,
        worker: str | None = None,
        in_flight: QuerySet[WorkItem] | None = None,
    ) -> list[int]:
        """The ids of up to ``want`` of ``candidates`` (waiting attempts of the queue) that the
        limits let start now, in due order. ``worker``: the owner prefix of the leasing worker
        process (``worker_concurrency``). ``in_flight``: attempts sent to a remote executor and
        not yet leased, which will take slots when they are (dispatch)."""
        limits = self.limits
        scan = want if limits.key_concurrency is None else max(KEY_SCAN, want)
        candidates = candidates.order_by("due_at", "id")
        if connection.features.has_select_for_update_skip_locked:
            # Never wait on an item's row while holding the queue's lock: a commit that locked
            # that row may be waiting for the queue's lock in turn (its eager leasing).
            candidates = candidates.select_for_update(skip_locked=True)
        # The waiting attempts first: an idle queue costs no count.
        waiting = list(candidates.values_list("id", "concurrency_key")[:scan])
        if not waiting:
            return []
        room = self.room(want, now=now, worker=worker, in_flight=in_flight)
        if room <= 0:
            return []
        if limits.key_concurrency is None:
            return [item_id for item_id, _ in waiting[:room]]
        held = _held(self.queue) if in_flight is None else _held(self.queue) | in_flight
        return _pick_by_key(waiting, room, key_counts(held, {key for _, key in waiting}), limits.key_concurrency)

    def room(
        self,
        want: int,
        *,
        now: datetime.datetime,
        worker: str | None = None,
        in_flight: QuerySet[WorkItem] | None = None,
    ) -> int:
        """How many of ``want`` more attempts the queue's limits (but its keys') let start now."""
        limits = self.limits
        room = want
        if limits.concurrency is not None:
            held = _held(self.queue) if in_flight is None else _held(self.queue) | in_flight
            room = min(room, limits.concurrency - held.count())
        if limits.worker_concurrency is not None and worker is not None:
            # A Celery process's owners share a prefix ending in ":"; a durable_worker is its name.
            mine = _held(self.queue).filter(
                **({"lease_owner__startswith": worker} if worker.endswith(":") else {"lease_owner": worker})
            )
            room = min(room, limits.worker_concurrency - mine.count())
        if limits.rate_limit is not None:
            # Every start kept counts, even one after ``now``: on PostgreSQL ``now`` is when this
            # transaction began, maybe before a claim that took the lock first.
            edge = (self.clock or now).timestamp() - limits.rate_limit.period
            pending = in_flight.count() if in_flight is not None else 0
            room = min(room, limits.rate_limit.limit - sum(t > edge for t in self.starts) - pending)
        return max(room, 0)

    def started(self, count: int, now: datetime.datetime) -> None:
        """Record ``count`` attempts leased at ``now`` in the rate limit's window: the latest
        ``limit`` starts are all any window needs."""
        if count and self.limits.rate_limit is not None:
            stamp = (self.clock or now).timestamp()
            self.starts = sorted([*self.starts, *[stamp] * count])[-self.limits.rate_limit.limit :]
            QueueState.objects.filter(pk=self.state_id).update(recent_starts=self.starts)


def key_counts(held: QuerySet[WorkItem], keys: set[str]) -> dict[str, int]:
    """How many attempts of ``held`` each of ``keys`` has."""
    keys.discard("")
    if not keys:
        return {}
    return dict(
        held.filter(concurrency_key__in=keys)
        .order_by()
        .values_list("concurrency_key")
        .annotate(n=Count("id"))
        .values_list("concurrency_key", "n")
    )


def _pick_by_key(waiting: list[tuple[int, str]], room: int, counts: dict[str, int], per_key: int) -> list[int]:
    """Up to ``room`` of ``waiting`` (in order) whose key has a slot left (``counts``: held per key)."""
    picked = []
    for item_id, key in waiting:
        if key:  # attempts without a key are held by the queue's other limits only
            if counts.get(key, 0) >= per_key:
                continue
            counts[key] = counts.get(key, 0) + 1
        picked.append(item_id)
        if len(picked) == room:
            break
    return picked


@dataclasses.dataclass
class _Free:
    gate: Gate
    room: int
    keys: dict[str, int]


@dataclasses.dataclass
class EagerSlots:
    """The free slots of the limited queues a commit leases new attempts of at once (eager
    leasing), taken under their locks for the rest of the commit's transaction: the attempts
    it leases are not in the table yet, so they are counted here."""

    owner: str
    now: datetime.datetime
    queues: dict[str, _Free | None] = dataclasses.field(default_factory=dict)

    def take(self, queue: str, key: str) -> bool:
        """Whether one more attempt of ``queue`` (with ``key``) may be leased at once."""
        if queue not in self.queues:
            # A queue whose row this process has not seen is left to a claim, which creates the
            # row outside any transaction.
            # Without waiting: a commit holds its runs' rows, and another commit that holds
            # this queue's lock may want one of them (or this commit's other queue) next.
            gate = lock(queue, skip_locked=True) if queue in _states else None
            self.queues[queue] = _Free(gate, self._room(gate), {}) if gate is not None else None
        free = self.queues[queue]
        if free is None or free.room <= 0 or free.gate.limits.rate_limit is not None:
            # A rate-limited queue's starts are counted where the claim stamps them, only.
            return False
        per_key = free.gate.limits.key_concurrency
        if per_key is not None and key:
            if key not in free.keys:
                free.keys[key] = key_counts(_held(queue), {key}).get(key, 0)
            if free.keys[key] >= per_key:
                return False
            free.keys[key] += 1
        free.room -= 1
        return True

    def _room(self, gate: Gate) -> int:
        """The free slots no waiting attempt is owed: a freed slot goes to the attempt that
        has waited longest, not to the next attempt of the run that freed it."""
        room = gate.room(sys.maxsize, now=self.now, worker=self.owner)
        if room <= 0:
            return 0
        waiting = WorkItem.objects.filter(
            kind=WorkItemKind.ACTIVITY,
            queue=gate.queue,
            lease_owner__isnull=True,
            parked_at__isnull=True,
            due_at__lte=self.now,
        )
        return room - waiting[: min(room, KEY_SCAN)].count()


def _effective(queue: str, override: object) -> QueueLimits:
    """The queue's limits: its override when there is one (None: there is not), else the
    settings'. An override that cannot be read (written by hand) is logged and ignored: it
    must not stop every worker."""
    if override is not None:
        try:
            return parse_queue_limits(queue, override)
        except ImproperlyConfigured as error:
            logger.error("Queue %r: its override of the limits is ignored: %s", queue, error)
    return configured_limits(durable_settings.QUEUES).get(queue, QueueLimits())


def lock(queue: str, *, skip_locked: bool = False) -> Gate | None:
    """Lock the queue's row (``ensure_state`` made it) in the caller's transaction, and read
    its limits there: an override saved a moment ago applies to this very lease. With
    ``skip_locked``, None while another transaction holds it."""
    rows = QueueState.objects.select_for_update(skip_locked=skip_locked and _skips_locked()).filter(queue=queue)
    state = rows.values("id", "limits", "recent_starts").first()
    if state is None:
        if not skip_locked:
            _states.discard(queue)  # deleted by hand (or a test's flush): made again next time
        return None
    limits = _effective(queue, state["limits"])
    gate = Gate(state["id"], queue, limits, [float(t) for t in state["recent_starts"] or ()])
    if limits.rate_limit is not None:
        # The starts are stamped with the clock once the lock is held: on PostgreSQL the
        # transaction's clock may be from before a wait for it, and the window would slide
        # early by that wait.
        gate.clock = dialect_for(connection).read_wall_clock()
    return gate


def lease_clock(gate: Gate | None) -> datetime.datetime:
    """The time a lease under ``gate`` is taken at: for a rate limit, the clock read once the
    lock was held, which its window counts (``claimed_at`` then says when it really started)."""
    if gate is not None and gate.clock is not None:
        return gate.clock
    return db_now()


def _skips_locked() -> bool:
    return bool(connection.features.has_select_for_update_skip_locked)


def in_flight(queue: str, now: datetime.datetime, dispatch_timeout: float) -> QuerySet[WorkItem]:
    """The queue's attempts sent to a remote executor within ``dispatch_timeout`` and not yet leased."""
    return WorkItem.objects.filter(
        kind=WorkItemKind.ACTIVITY,
        queue=queue,
        lease_owner__isnull=True,
        dispatched_at__gt=now - _seconds(dispatch_timeout),
    )


def split(queues: Sequence[str]) -> tuple[list[str], list[str]]:
    """``queues`` as (unlimited, limited)."""
    limited = limited_queues()
    if not limited:
        return list(queues), []
    return [q for q in queues if q not in limited], [q for q in queues if q in limited]
