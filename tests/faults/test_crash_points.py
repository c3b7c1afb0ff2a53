"""Each named crash point (django_durable/faults.py), reproduced deterministically.

A worker started with ``DURABLE_CRASH_POINTS=<point>`` exits hard (``os._exit``) the
first time it reaches that point. The test then looks at what the crash left in the
database (a "before ... commit" point must leave nothing of its transaction, an
"after" point all of it), starts a clean worker, and checks that the workflow ends
right: every activity recorded once, side effects <= attempts (tests/faults/invariants.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import django_durable as durable
from django_durable import faults
from django_durable.engine.events import EventKind
from django_durable.models import (
    HistoryEvent,
    InboxEvent,
    WorkflowInstance,
    WorkflowStatus,
    WorkItem,
    WorkItemKind,
)
from tests.conftest import REPO
from tests.faults.kit import UPPER, completions, crashed_at, runs, stop, verdict
from tests.testapp.workflows import retrying, sequence, sleeper, wo_one_gate

pytestmark = pytest.mark.workers


def armed(spec: str) -> dict[str, str]:
    # A short lease for the worker that crashes: it has expired by the time the next
    # worker has booted, so recovery starts at once. (Its work never outlives it.)
    return {"DURABLE_CRASH_POINTS": spec, "DURABLE_TEST_LEASE_SECONDS": "0.5"}


# A long lease for the worker that recovers: a loaded machine starving its renewer must not
# expire its own attempts, so each run or retry these tests count comes from the crash alone.
CLEAN = {"DURABLE_TEST_LEASE_SECONDS": "20"}


def events_of(handle: durable.WorkflowHandle, kind: str) -> list[dict]:
    """``kind`` events of the run, recorded in history or still waiting in its inbox."""
    found = []
    for model in (HistoryEvent, InboxEvent):
        found += model.objects.filter(instance__run_id=handle.run_id, kind=kind).values("task_id", "payload")
    return found


def the_item(handle: durable.WorkflowHandle, kind: str) -> WorkItem:
    return WorkItem.objects.get(instance__run_id=handle.run_id, kind=kind)


def leased_by(item: WorkItem, worker: object) -> bool:
    return item.lease_owner is not None and f":{worker.pid}:" in item.lease_owner


# -- the spec ------------------------------------------------------------------------


@pytest.mark.engine
def test_the_spec_is_read_strictly():
    entries = faults.parse(
        " after_claim:workflow , before_task_commit@3, after_activity_commit%0.5=stop,before_activity_commit@2=error"
    )
    assert [(e.point, e.detail, e.nth, e.probability, e.action) for e in entries] == [
        ("after_claim", "workflow", 1, None, "exit"),
        ("before_task_commit", "", 3, None, "exit"),
        ("after_activity_commit", "", 1, 0.5, "stop"),
        ("before_activity_commit", "", 2, None, "error"),
    ]
    assert entries[0].matches("after_claim", "workflow") and not entries[0].matches("after_claim", "activity")
    assert faults.parse("after_claim")[0].matches("after_claim", "activity")
    for bad, says in [
        ("before_comit", "unknown crash point 'before_comit'"),
        ("after_claim@0", "@N counts from 1"),
        ("after_claim%2", "%P must be a probability"),
        ("after_claim%1.2.3", "%P must be a probability"),
        ("after_claim=explode", "unknown action 'explode'"),
        ("after claim", "cannot read 'after claim'"),
    ]:
        with pytest.raises(ValueError, match=says.replace("(", r"\(")):
            faults.parse(bad)
    assert faults.parse("") == [] and not faults.armed()  # the suite itself runs unarmed


def test_an_armed_point_exits_at_its_nth_hit_and_others_pass():
    code = (
        "from django_durable.faults import crash_point\n"
        "for n in range(1, 4):\n"
        "    crash_point('after_claim', 'activity')\n"
        "    crash_point('before_heartbeat')\n"
        "    print('passed', n, flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "DURABLE_CRASH_POINTS": "after_claim:workflow,before_heartbeat@2"}
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=UPPER
    )
    assert proc.returncode == faults.DEFAULT_EXIT_CODE, proc
    assert proc.stdout.split("\n")[:-1] == ["passed 1"]
    assert "django-durable crash point before_heartbeat reached (hit 2, pid" in proc.stderr

    env["DURABLE_CRASH_POINTS"] = "no_such_point"
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=UPPER
    )
    assert proc.returncode == 1 and "unknown crash point 'no_such_point'" in proc.stderr, proc


# -- claims ----------------------------------------------------------------------------


def test_after_claim_of_a_workflow_task(start_worker):
    handle = durable.start_workflow(sequence, "acw", 2, workflow_id="acw")
    first = start_worker(env=armed("after_claim:workflow"))
    crashed_at(first, "after_claim:workflow")
    # Claimed, then nothing: no event written, the task still leased to the dead worker.
    assert WorkflowInstance.objects.get(run_id=handle.run_id).history_length == 1
    task = the_item(handle, WorkItemKind.WORKFLOW)
    assert task.attempt == 1 and leased_by(task, first)

    second = start_worker(env=CLEAN)
    assert handle.result(timeout=UPPER) == 2
    stop(second)
    assert "Reaped workflow sequence" in second.log()
    assert runs("acw:0") == [1] and runs("acw:1") == [1]
    verdict({"acw": 2}).assert_ok()


def test_after_claim_of_an_activity(start_worker):
    handle = durable.start_workflow(retrying, "aca", 0, workflow_id="aca")
    first = start_worker(env=armed("after_claim:activity"))
    crashed_at(first, "after_claim:activity")
    # Leased (at once, by the commit that scheduled it) but never started.
    item = the_item(handle, WorkItemKind.ACTIVITY)
    assert item.attempt == 1 and leased_by(item, first)
    assert runs("aca") == []

    second = start_worker(env=CLEAN)
    assert handle.result(timeout=UPPER) == 2  # the attempt that ran
    stop(second)
    assert runs("aca") == [2]  # attempt 1 was claimed, never run
    assert completions(handle) == [(EventKind.ACTIVITY_COMPLETED, 2)]
    verdict({"aca": 2}).assert_ok()


# -- workflow tasks -------------------------------------------------------------------------


def test_before_a_workflow_task_commits(start_worker):
    handle = durable.start_workflow(sequence, "btc", 1, workflow_id="btc")
    first = start_worker(env=armed("before_task_commit"))
    crashed_at(first, "before_task_commit")
    # The transaction never committed: no event, no activity; the task is still leased.
    assert WorkflowInstance.objects.get(run_id=handle.run_id).history_length == 1
    assert HistoryEvent.objects.filter(instance__run_id=handle.run_id).count() == 1
    assert list(WorkItem.objects.filter(instance__run_id=handle.run_id).values_list("kind", flat=True)) == [
        WorkItemKind.WORKFLOW
    ]
    assert leased_by(the_item(handle, WorkItemKind.WORKFLOW), first)

    second = start_worker(env=CLEAN)
    assert handle.result(timeout=UPPER) == 1
    stop(second)
    assert runs("btc:0") == [1]  # scheduled once, by the second worker's task
    verdict({"btc": 1}).assert_ok()


def test_after_a_workflow_task_commits(start_worker):
    handle = durable.start_workflow(retrying, "atc", 0, workflow_id="atc")
    first = start_worker(env=armed("after_task_commit"))
    crashed_at(first, "after_task_commit")
    # All of the task is there: the activity is scheduled (and leased to the dead worker
    # if it was taken at once), and never ran.
    assert WorkflowInstance.objects.get(run_id=handle.run_id).status == WorkflowStatus.RUNNING
    assert len(events_of(handle, EventKind.ACTIVITY_SCHEDULED)) == 1
    item = the_item(handle, WorkItemKind.ACTIVITY)
    assert item.lease_owner is None or leased_by(item, first)
    assert runs("atc") == []

    second = start_worker(env=CLEAN)
    assert handle.result(timeout=UPPER) == item.attempt + 1
    stop(second)
    assert runs("atc") == [item.attempt + 1]
    verdict({"atc": item.attempt + 1}).assert_ok()


# -- activities ----------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["before_activity_completion", "before_activity_commit"])
def test_before_an_activity_result_is_recorded(start_worker, point):
    key = point.replace("_", "-")
    handle = durable.start_workflow(retrying, key, 0, workflow_id=key)
    first = start_worker(env=armed(point))
    crashed_at(first, point)
    # The function ran (its side effect is there); its outcome is not: the attempt is
    # still leased to the dead worker and is retried once that lease expires.
    assert runs(key) == [1]
    assert events_of(handle, EventKind.ACTIVITY_COMPLETED) == []
    item = the_item(handle, WorkItemKind.ACTIVITY)
    assert item.attempt == 1 and leased_by(item, first)

    second = start_worker(env=CLEAN)
    assert handle.result(timeout=UPPER) == 2
    stop(second)
    assert "Reaped activity flaky" in second.log()
    assert runs(key) == [1, 2]
    assert completions(handle) == [(EventKind.ACTIVITY_COMPLETED, 2)]
    verdict({key: 2}).assert_ok()


def test_after_an_activity_result_commits(start_worker):
    handle = durable.start_workflow(sequence, "aac", 2, workflow_id="aac")
    first = start_worker(env=armed("after_activity_commit"))
    crashed_at(first, "after_activity_commit")
    assert runs("aac:0") == [1]
    assert [e["payload"]["attempt"] for e in events_of(handle, EventKind.ACTIVITY_COMPLETED)] == [1]
    assert not WorkItem.objects.filter(instance__run_id=handle.run_id, kind=WorkItemKind.ACTIVITY, task_id=1).exists()

    second = start_worker(env=CLEAN)
    assert handle.result(timeout=UPPER) == 2
    stop(second)
    assert runs("aac:0") == [1]  # recorded, so never run again
    assert len(runs("aac:1")) == 1
    verdict({"aac": 2}).assert_ok()


def test_before_a_heartbeat_is_recorded(start_worker, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    handle = durable.start_workflow(wo_one_gate, "bhb", str(gate), True, workflow_id="bhb")
    first = start_worker(env=armed("before_heartbeat"))
    crashed_at(first, "before_heartbeat")
    assert runs("bhb") == [1]
    item = the_item(handle, WorkItemKind.ACTIVITY)
    assert item.heartbeat_at is None and leased_by(item, first)

    (gate / "release-a").touch()
    second = start_worker(env=CLEAN)
    assert handle.result(timeout=UPPER) == "bhb"
    stop(second)
    assert runs("bhb") == [1, 2] and runs("bhb:done") == [2]
    verdict({"bhb": "bhb"}).assert_ok()


# -- timers -----------------------------------------------------------------------------------


def test_before_a_timer_firing_commits(start_worker):
    handle = durable.start_workflow(sleeper, 0.3, workflow_id="btm")
    first = start_worker(env=armed("before_timer_commit"))
    crashed_at(first, "before_timer_commit")
    # Rolled back: the timer is still there, unfired.
    timer = the_item(handle, WorkItemKind.TIMER)
    assert timer.lease_owner is None
    assert events_of(handle, EventKind.TIMER_FIRED) == []

    second = start_worker(env=CLEAN)
    result = handle.result(timeout=UPPER)
    stop(second)
    assert result["slept"] >= 0.3
    # Each of its two timers (sleep, then sleep_until) fired once.
    assert sorted(e["task_id"] for e in events_of(handle, EventKind.TIMER_FIRED)) == [1, 2]
    verdict({"btm": result}).assert_ok()
