"""The worker's cache of resident runs: workflow code parked between its tasks."""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict

from ..engine.resident import ResidentRun


class RunCache:
    """Recently run workflows' code by run (``WorkflowInstance`` id), least recently used
    dropped first. A run is taken out while one of its tasks runs and put back after
    the task's commit, so no two threads ever drive one run."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._runs: OrderedDict[int, ResidentRun] = OrderedDict()
        self._lock = threading.Lock()
        # How workflow tasks ran: "inline" (with an activity's result), "resumed" (held
        # code), "replayed" (from history), "declined" (inline not possible): the worker
        # logs them when it stops, so one can see whether the fast paths are taken.
        self.stats: Counter[str] = Counter()

    def count(self, outcome: str) -> None:
        with self._lock:
            self.stats[outcome] += 1

    def __len__(self) -> int:
        return len(self._runs)

    def take(self, instance_id: int) -> ResidentRun | None:
        with self._lock:
            return self._runs.pop(instance_id, None)

    def put(self, instance_id: int, resident: ResidentRun) -> None:
        if self.size <= 0:
            resident.close()
            return
        with self._lock:
            stale = self._runs.pop(instance_id, None)
            self._runs[instance_id] = resident
            evicted = [self._runs.popitem(last=False)[1] for _ in range(len(self._runs) - self.size)]
        for run in [*evicted, *([stale] if stale is not None else [])]:
            run.close()

    def clear(self) -> None:
        with self._lock:
            runs = list(self._runs.values())
            self._runs.clear()
        for run in runs:
            run.close()
