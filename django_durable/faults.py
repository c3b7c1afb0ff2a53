"""Named crash points, for fault-injection tests only.

The worker, the executors and the store call ``crash_point("name")`` at the
places where a process dying would hurt most. Nothing happens unless the
environment variable ``DURABLE_CRASH_POINTS`` arms some of them; it is read once,
at import, so an unarmed process pays one function call and one truth test.

    DURABLE_CRASH_POINTS="after_claim:workflow,before_task_commit@3,after_activity_commit%0.05=stop"

Each comma-separated entry is ``point[:detail][@N | %P][=action]``:

- ``point``: one of the names below; ``:detail`` narrows it (``after_claim:activity``),
  an entry without a detail matches every detail.
- ``@N``: act at the N-th time the entry matches (default: the first), once.
- ``%P``: act each time with probability P (0 < P <= 1), drawn from a generator
  seeded by ``DURABLE_CRASH_SEED`` (else the pid).
- ``=action``: ``exit`` (default): ``os._exit(DURABLE_CRASH_EXIT_CODE)`` (86
  unless set), no cleanup, no ``finally`` blocks, an open transaction never
  commits; ``kill``: SIGKILL itself; ``stop``: SIGSTOP itself (every thread
  freezes right there, e.g. inside an open transaction) until a SIGCONT;
  ``hold``: park only the calling thread there (the rest of the process goes on,
  e.g. renewing leases) until the file ``held-<point>-<pid>`` it creates in
  ``DURABLE_CRASH_DIR`` (default: the temporary directory) is deleted;
  ``error``: raise a transient ``django.db.OperationalError`` there, as a deadlock,
  a lock timeout or a lost connection would (at a "before ... commit" point the
  transaction rolls back); the process goes on.

Every action first writes one line to stderr: ``django-durable crash point
<point>[:<detail>] reached (hit N, pid P): <action>``.

The points (where a "before ... commit" point fires inside the transaction, so
the commit never happens; an "after" point fires right after the commit returned):

``after_claim:workflow`` / ``after_claim:activity``
    worker.py: a claim (or an activity leased at once by the commit that scheduled
    it) is committed; the work has not started.
``before_task_commit``
    store/workflow_tasks.py: a workflow task's decisions (history, work items, the run's row) are
    written, its transaction is not committed. Also a task run inline within an
    activity's completion.
``after_task_commit``
    executors/workflow_tasks.py: a workflow task committed; the worker has not acted on it
    (no eager activity started, no parent-close policy applied).
``before_activity_completion``
    executors/activities.py: an activity's function returned (its side effects happened);
    nothing about its outcome is written yet.
``before_activity_commit``
    store/activities.py: the attempt's work item is deleted under the run's lock and its result
    is about to be recorded; the transaction is not committed.
``after_activity_commit``
    executors/activities.py: an activity's result (and an inline workflow task) committed.
``before_timer_commit``
    store/maintenance.py: a due timer's ``TimerFired`` is delivered, its transaction not committed.
``before_heartbeat``
    executors/activities.py: an activity called ``heartbeat()``; nothing is written yet.
``before_schedule_commit``
    store/schedules.py: a schedule's due ticks are processed under its row's lock (their runs
    created, the next tick planned), the transaction not committed.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import signal
import tempfile
import threading
from pathlib import Path

POINTS = frozenset(
    {
        "after_claim",
        "before_task_commit",
        "after_task_commit",
        "before_activity_completion",
        "before_activity_commit",
        "after_activity_commit",
        "before_timer_commit",
        "before_heartbeat",
        "before_schedule_commit",
    }
)
ACTIONS = ("exit", "kill", "stop", "hold", "error")
ENV = "DURABLE_CRASH_POINTS"
DEFAULT_EXIT_CODE = 86

_ENTRY = re.compile(
    r"^(?P<point>[a-z_]+)(?::(?P<detail>[a-z_]+))?"
    r"(?:@(?P<nth>\d+)|%(?P<probability>[0-9.]+))?"
    r"(?:=(?P<action>[a-z]+))?$"
)


@dataclasses.dataclass
class Entry:
    point: str
    detail: str = ""
    nth: int = 1
    probability: float | None = None
    action: str = "exit"
    hits: int = 0

    def matches(self, point: str, detail: str) -> bool:
        return self.point == point and (not self.detail or self.detail == detail)


def parse(spec: str) -> list[Entry]:
    """The entries of a ``DURABLE_CRASH_POINTS`` value; ValueError naming what is wrong."""
    entries = []
    for raw in (part.strip() for part in spec.split(",")):
        if not raw:
            continue
        match = _ENTRY.match(raw)
        if match is None:
            raise ValueError(f"{ENV}: cannot read {raw!r}; expected point[:detail][@N|%P][=exit|kill|stop|hold|error]")
        if match["point"] not in POINTS:
            raise ValueError(f"{ENV}: unknown crash point {match['point']!r}; known: {', '.join(sorted(POINTS))}")
        action = match["action"] or "exit"
        if action not in ACTIONS:
            raise ValueError(f"{ENV}: unknown action {action!r} in {raw!r}; known: {', '.join(ACTIONS)}")
        entry = Entry(point=match["point"], detail=match["detail"] or "", action=action)
        if match["nth"] is not None:
            entry.nth = int(match["nth"])
            if entry.nth < 1:
                raise ValueError(f"{ENV}: @N counts from 1 in {raw!r}")
        if match["probability"] is not None:
            try:
                entry.probability = float(match["probability"])
            except ValueError:
                entry.probability = -1.0
            if not 0 < entry.probability <= 1:
                raise ValueError(f"{ENV}: %P must be a probability in (0, 1] in {raw!r}")
        entries.append(entry)
    return entries


_entries: list[Entry] = []
_lock = threading.Lock()
_random = random.Random()
_never = threading.Event()


def configure(spec: str | None, *, seed: str | None = None) -> None:
    """Arm the crash points of ``spec`` (None or "": none); done once at import from the environment."""
    global _entries
    entries = parse(spec or "")
    _random.seed(seed if seed is not None else os.getpid())
    _entries = entries


def armed() -> bool:
    return bool(_entries)


def crash_point(point: str, detail: str = "") -> None:
    """Act here if ``DURABLE_CRASH_POINTS`` arms this point (see the module's docstring)."""
    if not _entries:
        return
    with _lock:  # every matching entry counts the hit; the first one due acts
        due = [entry for entry in _entries if entry.matches(point, detail) and _due(entry)]
    if due:
        _act(due[0], point, detail)


def _due(entry: Entry) -> bool:
    entry.hits += 1
    if entry.probability is not None:
        return _random.random() < entry.probability
    return entry.hits == entry.nth


def _act(entry: Entry, point: str, detail: str) -> None:
    where = f"{point}:{detail}" if detail else point
    os.write(
        2,
        f"django-durable crash point {where} reached (hit {entry.hits}, pid {os.getpid()}): {entry.action}\n".encode(),
    )
    if entry.action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
        os.write(2, f"django-durable crash point {where}: resumed (pid {os.getpid()})\n".encode())
        return
    if entry.action == "hold":
        held = Path(os.environ.get("DURABLE_CRASH_DIR") or tempfile.gettempdir(), f"held-{point}-{os.getpid()}")
        held.touch()
        while held.exists():
            _never.wait(0.01)  # not time.sleep(): under libfaketime it fails (EINVAL) or hangs
        os.write(2, f"django-durable crash point {where}: released (pid {os.getpid()})\n".encode())
        return
    if entry.action == "error":
        from django.db import OperationalError  # importable before Django is configured

        raise OperationalError(f"django-durable crash point {where}: injected transient database error")
    if entry.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(int(os.environ.get("DURABLE_CRASH_EXIT_CODE", DEFAULT_EXIT_CODE)))


configure(os.environ.get(ENV), seed=os.environ.get("DURABLE_CRASH_SEED"))
