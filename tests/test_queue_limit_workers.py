"""Flow control through real ``durable_worker`` processes: a limited queue's limits
(``DURABLE["QUEUES"]``) hold across every worker and thread, and a killed worker's attempts
hold their slots until their leases expire and are reaped.

Each attempt records its span (wall clock: every process shares this machine's) and its
lease's claim time (the database's clock, which the rate limit counts) in a file of its own
(tests/testapp/flow_workflows.py); the assertions read those files, and the order of a
worker's log lines, never how long something took. Every wait awaits an event with a
generous upper bound; nothing sleeps a fixed time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

import django_durable as durable
from tests.conftest import WorkerProcess, wait_for
from tests.faults.kit import assert_no_trouble, wait_ready
from tests.testapp.flow_workflows import held_fan_out, limited_fan_out

pytestmark = pytest.mark.workers

UPPER = 60.0  # an upper bound on any single wait, never an expected duration
# A lease a loaded machine cannot starve the renewer of (the suite's is 2 s): an attempt lost
# and run again would overlap itself, and look like a limit broken.
PATIENT = "20"
STEP = 0.3  # how long a limited_step holds its slot
Record = dict[str, Any]
StartWorker = Callable[..., WorkerProcess]


# -- helpers ----------------------------------------------------------------------


def start_limited(
    start_worker: StartWorker, limits: Mapping[str, Any], count: int = 1, lease: str = PATIENT
) -> list[WorkerProcess]:
    """``count`` ready workers with 8 activity threads each, on the queues default and
    limited, this queue's ``limits`` their setting."""
    env = {"DURABLE_TEST_QUEUES": json.dumps({"limited": limits}), "DURABLE_TEST_LEASE_SECONDS": lease}
    workers = [start_worker(queues="default,limited", concurrency=8, env=env) for _ in range(count)]
    wait_ready(*workers)
    return workers


def read_records(directory: Path, pattern: str = "[!s]*.json") -> list[Record]:
    """The records of finished attempts (``pattern``: of started ones, ``started-*.json``)."""
    return [json.loads(path.read_text()) for path in sorted(directory.glob(pattern))]


def fan_out(directory: Path, labels: list[str], workers: Iterable[WorkerProcess]) -> list[Record]:
    """Run ``limited_fan_out`` over ``labels`` to completion; the attempts' records, each
    label's one attempt (a second would be a lost lease, not flow control)."""
    directory.mkdir()
    handle = durable.start_workflow(limited_fan_out, str(directory), labels, STEP)
    assert handle.result(timeout=UPPER) == labels
    records = read_records(directory)
    assert sorted((r["label"], r["attempt"]) for r in records) == sorted((label, 1) for label in labels)
    assert_no_trouble(*workers)
    return records


def most_at_once(records: Iterable[Record]) -> int:
    """The most spans [start, end) of ``records`` that overlap at one moment."""
    # An end sorts before a start at the same moment: spans that only touch do not overlap.
    moments = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    running = most = 0
    for _, step in moments:
        running += step
        most = max(most, running)
    return most


def by(records: Iterable[Record], field: str) -> dict[Any, list[Record]]:
    grouped: dict[Any, list[Record]] = {}
    for record in records:
        grouped.setdefault(record[field], []).append(record)
    return grouped


def busiest_window(claimed: Iterable[float], period: float) -> int:
    """The most claim times in any window [t, t + period), in whole microseconds (the
    database's resolution), so that float rounding cannot move a claim across a window's edge."""
    times = sorted(round(t * 1_000_000) for t in claimed)
    width = round(period * 1_000_000)
    return max(sum(1 for t in times if start <= t < start + width) for start in times)


def wait_started(directory: Path, count: int) -> list[Record]:
    """Wait until ``count`` held_step attempts announced their start; their records."""
    wait_for(
        lambda: len(list(directory.glob("started-*.json"))) >= count,
        timeout=UPPER,
        what=f"{count} held_step attempts to start",
    )
    return read_records(directory, "started-*.json")


STATE_LINE = re.compile(r"^(claimed|lease_expired) .*\bname=held_step\b.*\bitem=(\d+) attempt=(\d+)", re.MULTILINE)


def held_step_leases(worker: WorkerProcess) -> list[tuple[str, int, int]]:
    """The worker's leases of held_step attempts and its reaps of expired ones, in the order
    it committed them (its loop thread does both): (claimed | lease_expired, item, attempt)."""
    return [(change, int(item), int(attempt)) for change, item, attempt in STATE_LINE.findall(worker.log())]


# -- the limits ---------------------------------------------------------------------


def test_concurrency_holds_across_workers_and_threads(start_worker: StartWorker, tmp_path: Path) -> None:
    workers = start_limited(start_worker, {"concurrency": 2}, count=3)

    records = fan_out(tmp_path / "records", [f"step{n}" for n in range(12)], workers)

    # 24 idle threads wanted them all: 2 at once is the limit, and the queue was kept full.
    assert most_at_once(records) == 2, sorted((r["start"], r["end"], r["pid"]) for r in records)


def test_the_rate_limit_counts_starts_in_a_sliding_window(start_worker: StartWorker, tmp_path: Path) -> None:
    limit, period = 3, 1.0
    workers = start_limited(start_worker, {"rate_limit": {"limit": limit, "period": period}}, count=2)

    records = fan_out(tmp_path / "records", [f"tick{n}" for n in range(10)], workers)

    claimed = [r["claimed"] for r in records]
    assert busiest_window(claimed, period) == limit, sorted(claimed)


def test_one_attempt_per_key_while_keys_run_side_by_side(start_worker: StartWorker, tmp_path: Path) -> None:
    workers = start_limited(start_worker, {"key_concurrency": 1}, count=2)
    labels = [f"{key}/{n}" for n in range(4) for key in ("a", "b")]

    records = fan_out(tmp_path / "records", labels, workers)

    keys = by(records, "concurrency_key")
    assert sorted(keys) == ["a", "b"]
    assert [most_at_once(keys["a"]), most_at_once(keys["b"])] == [1, 1], sorted(
        (r["start"], r["end"], r["label"]) for r in records
    )
    assert most_at_once(records) == 2  # no queue-wide limit: a and b overlapped


def test_worker_concurrency_limits_each_worker_process(start_worker: StartWorker, tmp_path: Path) -> None:
    workers = start_limited(start_worker, {"worker_concurrency": 1}, count=2)

    records = fan_out(tmp_path / "records", [f"job{n}" for n in range(8)], workers)

    pids = by(records, "pid")
    assert sorted(pids) == sorted(worker.pid for worker in workers), "each worker runs some"
    assert {pid: most_at_once(spans) for pid, spans in pids.items()} == {worker.pid: 1 for worker in workers}


# -- a killed worker ------------------------------------------------------------------


def test_a_killed_workers_attempts_hold_their_slots_until_reaped(start_worker: StartWorker, tmp_path: Path) -> None:
    limits = {"concurrency": 2}
    directory, release = tmp_path / "records", tmp_path / "release"
    directory.mkdir()
    labels = [f"held{n}" for n in range(6)]
    # The suite's short lease (2 s), which expires soon after the kill.
    (doomed,) = start_limited(start_worker, limits, lease="2")
    handle = durable.start_workflow(held_fan_out, str(directory), labels, str(release))
    doomed_started = wait_started(directory, 2)
    assert {r["pid"] for r in doomed_started} == {doomed.pid}

    (survivor,) = start_limited(start_worker, limits)
    doomed.kill()
    doomed.wait(UPPER)
    # The survivor takes the slots back once the dead worker's leases expire and it reaps them.
    wait_started(directory, 4)
    release.touch()
    assert handle.result(timeout=UPPER) == labels

    # Until the release the survivor held what it took: it took 2, and each only once the
    # dead worker's lease of a slot had been reaped (in the order of its log).
    started = read_records(directory, "started-*.json")
    before_release = by([r for r in started if not r["released_before_start"]], "pid")
    assert sorted(len(runs) for runs in before_release.values()) == [2, 2], before_release
    survivor_log = held_step_leases(survivor)
    changes = [change for change, _, _ in survivor_log]
    assert changes.count("lease_expired") == 2, survivor_log
    claims = [i for i, change in enumerate(changes) if change == "claimed"]
    for taken, at in enumerate(claims[:2], start=1):
        reaped_before = changes[:at].count("lease_expired")
        assert taken <= reaped_before, f"claim {taken} with {2 - reaped_before} dead leases live: {survivor_log}"

    # Then it ran everything, the dead worker's attempts again, never more than 2 at once.
    records = read_records(directory)
    assert {r["pid"] for r in records} == {survivor.pid}
    dead_labels = {r["label"] for r in doomed_started}
    assert sorted((r["label"], r["attempt"]) for r in records) == sorted(
        (label, 2 if label in dead_labels else 1) for label in labels
    )
    assert most_at_once(records) == 2
    assert_no_trouble(survivor)
