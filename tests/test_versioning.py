"""Versioning: ``ctx.patched()`` and ``manage.py durable_replay``.

The first part drives the pure engine over hand-built histories, as tests/test_engine.py
does. The rest deploys two versions of one workflow (tests/testapp/versioning_workflows.py
reads the version from DURABLE_TEST_WORKFLOW_VERSION) to real worker subprocesses, and runs
``durable_replay`` in-process or, for the deploy story, as its own process.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

import django_durable as durable
from django_durable.engine.replay import check_history
from django_durable.exceptions import NonDeterminismError
from django_durable.models import WorkflowInstance
from tests.conftest import REPO, wait_for
from tests.test_engine import (  # noqa: F401 - engine_mode runs each engine test in both modes
    Run,
    activity_options,
    assert_completed,
    assert_non_determinism,
    completed,
    engine_mode,
    workflow_options,
)
from tests.testapp import versioning_workflows as vw
from tests.testapp.models import ActivityRun

pytestmark = pytest.mark.engine

TIMEOUT = 60


# -- ctx.patched() in the engine -------------------------------------------------------------


def charge_then_ship(ctx):
    receipt = ctx.call_activity("charge").result()
    return ctx.call_activity("ship", receipt).result()


def with_fraud_check(seen: list[bool]):
    """charge_then_ship with a fraud check added behind patched(); ``seen`` collects its answers."""

    def charge_check_ship(ctx):
        receipt = ctx.call_activity("charge").result()
        checked = ctx.patched("fraud-check")
        seen.append(checked)
        if checked:
            ctx.call_activity("fraud_check", receipt).result()
        return ctx.call_activity("ship", receipt).result()

    return charge_check_ship


def charge_check_ship_unguarded(ctx):
    """The fraud check with its patched() call removed."""
    receipt = ctx.call_activity("charge").result()
    ctx.call_activity("fraud_check", receipt).result()
    return ctx.call_activity("ship", receipt).result()


def calls(events) -> list[tuple[str, int | None, str]]:
    return [
        (event.kind, event.task_id, event.name)
        for event in events
        if event.kind in ("ActivityScheduled", "PatchMarker")
    ]


def check(run: Run, fn) -> Exception | None:
    """What durable_replay would say about ``run``'s stored history under ``fn``."""
    return check_history(
        fn,
        workflow_id="order-42",
        run_id=run.run_id,
        workflow_name=run.fn.__name__,
        queue="default",
        history=run.history,
        converter=run.converter,
        activity_options=activity_options,
        workflow_options=workflow_options,
    )


def test_patched_is_false_for_a_history_the_old_code_recorded_and_the_old_branch_replays():
    run = Run(charge_then_ship)
    run.task()
    run.task(completed(1, "receipt-1"))  # ship scheduled, as sequence number 2
    seen: list[bool] = []
    run.fn = with_fraud_check(seen)
    assert check(run, run.fn) is None
    assert isinstance(check(run, charge_check_ship_unguarded), NonDeterminismError)
    assert seen == [False]

    outcome = run.task(completed(2, "shipped"))
    assert_completed(outcome)
    assert outcome.result == "shipped"
    assert seen == [False, False]
    assert calls(run.history) == [
        ("ActivityScheduled", 1, "charge"),
        ("ActivityScheduled", 2, "ship"),
    ]


def test_patched_is_true_for_a_new_run_records_a_marker_once_and_replays_true(engine_mode: str):  # noqa: F811
    seen: list[bool] = []
    run = Run(with_fraud_check(seen))
    run.task()
    outcome = run.task(completed(1, "receipt-1"))
    # The marker takes no sequence number: the fraud check is the second durable call.
    assert calls(outcome.new_events) == [
        ("PatchMarker", None, "fraud-check"),
        ("ActivityScheduled", 2, "fraud_check"),
    ]
    assert seen == [True]

    run.task(completed(2, "clean"))
    outcome = run.task(completed(3, "shipped"))
    assert_completed(outcome)
    assert outcome.result == "shipped"
    # Replayed twice from the marker; resident code asks once.
    assert seen == ([True, True, True] if engine_mode == "replay" else [True])
    assert [event.kind for event in run.history].count("PatchMarker") == 1
    assert check(run, run.fn) is None


def test_patched_is_memoised_within_a_run():
    answers: list[tuple[bool, bool]] = []

    def asks_twice(ctx):
        first = ctx.patched("x")
        ctx.call_activity("a").result()
        answers.append((first, ctx.patched("x")))

    fresh = Run(asks_twice)
    fresh.task()
    assert_completed(fresh.task(completed(1)))
    assert answers == [(True, True)]
    assert calls(fresh.history) == [("PatchMarker", None, "x"), ("ActivityScheduled", 1, "a")]

    def old(ctx):
        ctx.call_activity("a").result()

    answers.clear()
    recorded = Run(old)
    recorded.task()
    recorded.fn = asks_twice
    # The first call was made where history holds activity 'a': False, and it stays False
    # even though, at the second call, history has nothing further.
    assert_completed(recorded.task(completed(1)))
    assert answers == [(False, False)]
    assert "PatchMarker" not in [event.kind for event in recorded.history]


def test_markers_are_matched_by_change_id_not_by_position():
    run = Run(with_fraud_check([]))
    run.task()
    run.task(completed(1, "receipt-1"))  # the marker, then fraud_check as sequence number 2
    answers: dict[str, bool] = {}

    def reordered(ctx):
        # The fraud-check question moved before charge; another change asked where it was.
        answers["fraud-check"] = ctx.patched("fraud-check")
        receipt = ctx.call_activity("charge").result()
        answers["refund-policy"] = ctx.patched("refund-policy")
        if answers["fraud-check"]:
            ctx.call_activity("fraud_check", receipt).result()
        return ctx.call_activity("ship", receipt).result()

    run.fn = reordered
    assert check(run, reordered) is None
    run.task(completed(2, "clean"))
    outcome = run.task(completed(3, "shipped"))
    assert_completed(outcome)
    # Its own marker, found though asked elsewhere; the other id gets nothing from it, and
    # as history went past that point under the code without it, it is False.
    assert answers == {"fraud-check": True, "refund-policy": False}
    assert [event.name for event in run.history if event.kind == "PatchMarker"] == ["fraud-check"]


def test_a_run_suspended_before_the_patch_point_takes_the_new_branch_after_the_deploy():
    run = Run(charge_then_ship)
    run.task()  # waiting on charge, before the point where the fraud check goes
    seen: list[bool] = []
    run.fn = with_fraud_check(seen)
    assert check(run, run.fn) is None

    outcome = run.task(completed(1, "receipt-1"))
    assert outcome.task_error is None
    assert seen == [True]
    assert calls(outcome.new_events) == [
        ("PatchMarker", None, "fraud-check"),
        ("ActivityScheduled", 2, "fraud_check"),
    ]


def test_removing_a_patched_call_is_safe_for_runs_that_hold_its_marker():
    """Once no open run predates the patch, the call goes and the new branch stays."""
    marked = Run(with_fraud_check([]))
    marked.task()
    marked.task(completed(1, "receipt-1"))  # marker, fraud_check 2
    marked.fn = charge_check_ship_unguarded
    assert check(marked, charge_check_ship_unguarded) is None
    outcome = marked.task(completed(2, "clean"))
    assert outcome.task_error is None
    assert calls(outcome.new_events) == [("ActivityScheduled", 3, "ship")]
    outcome = marked.task(completed(3, "shipped"))
    assert_completed(outcome)
    assert outcome.result == "shipped"
    assert check(marked, charge_check_ship_unguarded) is None  # the closed run replays too

    # A run recorded before the patch but not yet at its point has nothing to keep either.
    before_the_point = Run(charge_then_ship)
    before_the_point.task()
    before_the_point.fn = charge_check_ship_unguarded
    assert check(before_the_point, charge_check_ship_unguarded) is None
    assert calls(before_the_point.task(completed(1, "receipt-1")).new_events) == [
        ("ActivityScheduled", 2, "fraud_check"),
    ]


def test_removing_the_new_branch_breaks_runs_that_took_it():
    marked = Run(with_fraud_check([]))
    marked.task()
    marked.task(completed(1, "receipt-1"))

    def reverted(ctx):  # the patch taken back, its call kept
        receipt = ctx.call_activity("charge").result()
        ctx.patched("fraud-check")
        return ctx.call_activity("ship", receipt).result()

    for code in (reverted, charge_then_ship):
        error = check(marked, code)
        assert isinstance(error, NonDeterminismError), code
        assert "history recorded activity 'fraud_check', the code asked for activity 'ship'" in (str(error))
    marked.fn = charge_then_ship
    assert_non_determinism(
        marked.task(completed(2, "clean")),
        "sequence number 2",
        "history recorded activity 'fraud_check', the code asked for activity 'ship'",
    )


def test_the_old_branch_must_stay_while_a_run_recorded_before_the_patch_is_open():
    def call_kept(ctx):
        receipt = ctx.call_activity("charge").result()
        ctx.patched("fraud-check")
        ctx.call_activity("fraud_check", receipt).result()
        return ctx.call_activity("ship", receipt).result()

    predates = Run(charge_then_ship)
    predates.task()
    predates.task(completed(1, "receipt-1"))  # went past the patch point: ship is 2
    assert check(predates, with_fraud_check([])) is None
    # Without the old branch it breaks, whether the patched() call stays or goes.
    for code in (call_kept, charge_check_ship_unguarded):
        error = check(predates, code)
        assert isinstance(error, NonDeterminismError), code
        assert "history recorded activity 'ship', the code asked for activity 'fraud_check'" in (str(error))
    predates.fn = charge_check_ship_unguarded
    assert_non_determinism(
        predates.task(completed(2, "shipped")),
        "sequence number 2",
        "history recorded activity 'ship', the code asked for activity 'fraud_check'",
    )

    # Runs that hold the marker replay either way.
    marked = Run(with_fraud_check([]))
    marked.task()
    marked.task(completed(1, "receipt-1"))
    for code in (call_kept, charge_check_ship_unguarded):
        assert check(marked, code) is None, code


def test_a_closed_run_recorded_before_a_patch_at_its_end_still_replays():
    """The old code made no durable call after the patch point and the run completed:
    history went past that point, so patched() must be False, not a new marker."""

    def audited(ctx):
        receipt = ctx.call_activity("charge").result()
        if ctx.patched("audit"):
            ctx.call_activity("audit", receipt).result()
        return receipt

    def charge_only(ctx):
        return ctx.call_activity("charge").result()

    run = Run(charge_only)
    run.task()
    assert_completed(run.task(completed(1, "receipt-1")))
    assert check(run, audited) is None


# -- durable_replay on runs recorded by real workers ---------------------------------------------

V1 = {vw.VERSION_VARIABLE: "1"}


def finished(worker) -> None:
    code = worker.wait(TIMEOUT)
    assert code == 0, f"worker exited with {code}:\n{worker.log()}"


def waiting_for_event(handle, name: str) -> bool:
    description = handle.describe()
    return description.status == "running" and description.waiting_on == f"event {name!r}"


@pytest.fixture
def recorded_under_v1(start_worker) -> dict[str, durable.WorkflowHandle]:
    """Runs recorded by version 1: signups of ann and bea and a reminder waiting on events,
    cy's signup completed."""
    handles = {
        user: durable.start_workflow(vw.versioned_signup, user, workflow_id=f"signup-{user}")
        for user in ("ann", "bea", "cy")
    }
    handles["reminder"] = durable.start_workflow(vw.versioned_reminder, "dan", workflow_id="reminder-dan")
    handles["cy"].signal("verified")
    finished(start_worker(batch=True, env=V1))
    assert handles["cy"].result(timeout=TIMEOUT) == {"account": "account-cy", "welcomed": False}
    for user in ("ann", "bea"):
        assert waiting_for_event(handles[user], "verified"), handles[user].describe()
    assert waiting_for_event(handles["reminder"], "done")
    return handles


def durable_replay(monkeypatch: pytest.MonkeyPatch, version: str, *args: str) -> tuple[int, str, str]:
    """Run the command in-process with ``version`` deployed: (exit status, stdout, stderr)."""
    monkeypatch.setenv(vw.VERSION_VARIABLE, version)
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("durable_replay", *args, stdout=out, stderr=err)
    except SystemExit as exit:
        return int(exit.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def durable_replay_json(monkeypatch: pytest.MonkeyPatch, version: str, *args: str) -> tuple[int, dict]:
    code, out, _ = durable_replay(monkeypatch, version, "--json", *args)
    return code, json.loads(out)


def broken_ids(report: dict) -> set[tuple[str, str]]:
    return {(run["workflow_id"], run["run_id"]) for run in report["broken_runs"]}


@pytest.mark.workers
def test_durable_replay_reports_the_open_runs_that_would_break(recorded_under_v1, monkeypatch):
    ann, bea = recorded_under_v1["ann"], recorded_under_v1["bea"]
    code, out, _ = durable_replay(monkeypatch, "1")
    assert (code, out.strip()) == (0, "Checked 3, broken 0, skipped 0.")

    code, out, _ = durable_replay(monkeypatch, "2")
    assert code == 1, out
    lines = out.strip().splitlines()
    assert lines[-1] == "Checked 3, broken 2, skipped 0."
    assert len(lines) == 3, out
    for handle in (ann, bea):
        line = next(line for line in lines if line.startswith(f"{handle.workflow_id} "))
        assert f"run {handle.run_id}, versioned_signup, running" in line
        assert "NonDeterminismError: Workflow code does not match its history at sequence number 2" in (line)
        assert "history recorded wait for event 'verified'" in line
        assert "asked for activity 'send_welcome_email'" in line

    code, out, _ = durable_replay(monkeypatch, "2", "versioned_reminder")
    assert (code, out.strip()) == (0, "Checked 1, broken 0, skipped 0.")

    code, out, _ = durable_replay(monkeypatch, "2-patched", "-v", "2")
    assert code == 0, out
    assert out.strip().splitlines()[-1] == "Checked 3, broken 0, skipped 0."
    assert f"signup-ann (run {ann.run_id}, versioned_signup, running): replays" in out


@pytest.mark.workers
def test_durable_replay_json_workflow_id_all_and_limit(recorded_under_v1, monkeypatch):
    ann, bea, cy = (recorded_under_v1[user] for user in ("ann", "bea", "cy"))

    code, report = durable_replay_json(monkeypatch, "2")
    assert code == 1
    assert (report["checked"], report["broken"], report["skipped"]) == (3, 2, 0)
    assert report["skipped_workflows"] == {}
    assert broken_ids(report) == {(ann.workflow_id, ann.run_id), (bea.workflow_id, bea.run_id)}
    for run in report["broken_runs"]:
        assert (run["workflow_name"], run["status"]) == ("versioned_signup", "running")
        assert run["error"]["type"] == "django_durable.exceptions.NonDeterminismError"
        assert "sequence number 2" in run["error"]["message"]

    code, report = durable_replay_json(monkeypatch, "2", "--workflow-id", "signup-ann")
    assert (code, report["checked"], broken_ids(report)) == (1, 1, {(ann.workflow_id, ann.run_id)})
    code, report = durable_replay_json(monkeypatch, "2", "--workflow-id", "reminder-dan", "--workflow-id", "signup-cy")
    assert (code, report["checked"], report["broken"]) == (0, 1, 0)  # cy is closed

    code, report = durable_replay_json(monkeypatch, "2", "--all")
    assert (code, report["checked"], report["broken"]) == (1, 4, 3)
    assert (cy.workflow_id, cy.run_id) in broken_ids(report)
    assert {run["status"] for run in report["broken_runs"]} == {"running", "completed"}
    code, report = durable_replay_json(monkeypatch, "2-patched", "--all")
    assert (code, report["checked"], report["broken"]) == (0, 4, 0)

    code, report = durable_replay_json(monkeypatch, "2", "--limit", "1", "versioned_signup")
    newest = {(bea.workflow_id, bea.run_id)}
    assert (code, report["checked"], broken_ids(report)) == (1, 1, newest)
    code, report = durable_replay_json(monkeypatch, "2", "--limit", "1")
    assert (code, report["checked"], report["broken"]) == (1, 2, 1)  # one signup, one reminder


@pytest.mark.workers
def test_durable_replay_skips_runs_of_workflows_no_longer_registered(recorded_under_v1, monkeypatch):
    reminder = recorded_under_v1["reminder"]
    WorkflowInstance.objects.filter(workflow_id=reminder.workflow_id).update(workflow_name="retired_reminder")

    code, out, err = durable_replay(monkeypatch, "1")
    assert (code, out.strip()) == (0, "Checked 2, broken 0, skipped 1.")
    assert "Skipped 1 run(s) of 'retired_reminder': no workflow is registered under that name" in err
    code, report = durable_replay_json(monkeypatch, "2")
    assert (code, report["checked"], report["broken"], report["skipped"]) == (1, 2, 2, 1)
    assert report["skipped_workflows"] == {"retired_reminder": 1}

    with pytest.raises(CommandError, match="'retired_reminder'") as error:
        durable_replay(monkeypatch, "1", "retired_reminder")
    assert error.value.returncode == 2


@pytest.mark.database
@pytest.mark.django_db
def test_unknown_workflow_names_and_a_bad_limit_are_command_errors(monkeypatch):
    with pytest.raises(CommandError) as error:
        durable_replay(monkeypatch, "1", "versioned_signup", "no_such_workflow", "nor_this")
    assert error.value.returncode == 2
    message = str(error.value)
    assert message.startswith("No workflow is registered as 'no_such_workflow', 'nor_this'.")
    assert "versioned_signup" in message.split("Registered workflows:")[1]

    with pytest.raises(CommandError, match="--limit must be at least 1") as error:
        durable_replay(monkeypatch, "1", "--limit", "0")
    assert error.value.returncode == 2

    assert durable_replay(monkeypatch, "2")[:2] == (0, "Checked 0, broken 0, skipped 0.\n")


# -- a deploy, with real workers on each version --------------------------------------------------


def durable_replay_process(version: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``manage.py durable_replay`` as the deploy script would run it, with ``version`` as the code."""
    return subprocess.run(
        [sys.executable, "-m", "django", "durable_replay", "--settings", "tests.settings", *args],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DURABLE_DB_NAME": str(connection.settings_dict["NAME"]),
            vw.VERSION_VARIABLE: version,
        },
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def welcome_emails() -> list[str]:
    emails = ActivityRun.objects.filter(key__startswith="send_welcome_email:")
    return list(emails.order_by("id").values_list("key", flat=True))


def patch_markers(handle) -> list[str]:
    return [event.name for event in handle.history() if event.kind == "PatchMarker"]


@pytest.mark.workers
def test_deploy_story_durable_replay_gates_the_change_and_patched_makes_it_safe(start_worker):
    ann = durable.start_workflow(vw.versioned_signup, "ann", workflow_id="signup-ann")
    finished(start_worker(batch=True, env=V1))
    assert waiting_for_event(ann, "verified"), ann.describe()
    recorded_by_v1 = [(event.kind, event.name) for event in ann.history()]

    # Before deploying version 2, the deploy script runs durable_replay with the new code.
    gate = durable_replay_process("2")
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert f"signup-ann (run {ann.run_id}, versioned_signup, running): NonDeterminismError:" in gate.stdout
    assert "sequence number 2" in gate.stdout
    assert gate.stdout.strip().endswith("Checked 1, broken 1, skipped 0.")

    # Deployed anyway: ann's next workflow task fails, the run is left as it was.
    worker = start_worker(env={vw.VERSION_VARIABLE: "2"})
    ann.signal("verified")
    task_error = wait_for(lambda: ann.describe().task_error, timeout=TIMEOUT, what="the non-determinism")
    assert task_error["type"] == "django_durable.exceptions.NonDeterminismError"
    assert "sequence number 2" in task_error["message"]
    worker.terminate()
    finished(worker)
    assert ann.status() == "running"
    assert [(event.kind, event.name) for event in ann.history()] == recorded_by_v1
    assert welcome_emails() == []

    # The fix puts the email behind ctx.patched(): the gate passes, and it is deployed.
    gate = durable_replay_process("2-patched")
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert gate.stdout.strip() == "Checked 1, broken 0, skipped 0."
    bob = durable.start_workflow(vw.versioned_signup, "bob", workflow_id="signup-bob")
    bob.signal("verified")
    assert ann.retry()  # now, not after the failed task's backoff
    finished(start_worker(batch=True, env={vw.VERSION_VARIABLE: "2-patched"}))
    assert ann.result(timeout=TIMEOUT) == {"account": "account-ann", "welcomed": False}
    assert bob.result(timeout=TIMEOUT) == {"account": "account-bob", "welcomed": True}
    assert welcome_emails() == ["send_welcome_email:bob"]
    assert (patch_markers(ann), patch_markers(bob)) == ([], [vw.WELCOME_PATCH])

    # Every stored run replays on the deployed code; a rollback to version 1 would break bob's.
    gate = durable_replay_process("2-patched", "--all")
    assert (gate.returncode, gate.stdout.strip()) == (0, "Checked 2, broken 0, skipped 0."), gate.stderr
    rollback = durable_replay_process("1", "--all", "--json")
    assert rollback.returncode == 1, rollback.stdout + rollback.stderr
    report = json.loads(rollback.stdout)
    (broken,) = report["broken_runs"]
    assert (broken["workflow_id"], broken["status"]) == ("signup-bob", "completed")
    assert (
        "sequence number 2: history recorded activity 'send_welcome_email', "
        "the code asked for wait for event 'verified'"
    ) in broken["error"]["message"]


@pytest.mark.workers
def test_deploy_story_the_patched_call_goes_once_no_open_run_predates_it(recorded_under_v1, monkeypatch, start_worker):
    ann, bea = recorded_under_v1["ann"], recorded_under_v1["bea"]
    patched_version = {vw.VERSION_VARIABLE: "2-patched"}
    carol = durable.start_workflow(vw.versioned_signup, "carol", workflow_id="signup-carol")
    finished(start_worker(batch=True, env=patched_version))
    assert waiting_for_event(carol, "verified"), carol.describe()
    assert patch_markers(carol) == [vw.WELCOME_PATCH]
    assert welcome_emails() == ["send_welcome_email:carol"]

    # Version 3 drops the patched() call and the old branch: ann and bea, recorded by
    # version 1 and still open, need that branch.
    code, report = durable_replay_json(monkeypatch, "3")
    assert (code, report["checked"]) == (1, 4)
    assert broken_ids(report) == {(ann.workflow_id, ann.run_id), (bea.workflow_id, bea.run_id)}
    for run in report["broken_runs"]:
        assert (
            "sequence number 2: history recorded wait for event 'verified', "
            "the code asked for activity 'send_welcome_email'"
        ) in run["error"]["message"]

    ann.signal("verified")
    bea.signal("verified")
    finished(start_worker(batch=True, env=patched_version))
    for user, handle in (("ann", ann), ("bea", bea)):
        assert handle.result(timeout=TIMEOUT) == {"account": f"account-{user}", "welcomed": False}

    # Only carol (holding the marker) and the reminder are open now: the clean-up replays.
    code, out, _ = durable_replay(monkeypatch, "3", "-v", "2")
    assert code == 0, out
    assert out.strip().splitlines()[-1] == "Checked 2, broken 0, skipped 0."
    assert f"signup-carol (run {carol.run_id}, versioned_signup, running): replays" in out

    dave = durable.start_workflow(vw.versioned_signup, "dave", workflow_id="signup-dave")
    dave.signal("verified")
    carol.signal("verified")
    finished(start_worker(batch=True, env={vw.VERSION_VARIABLE: "3"}))
    assert carol.result(timeout=TIMEOUT) == {"account": "account-carol", "welcomed": True}
    assert dave.result(timeout=TIMEOUT) == {"account": "account-dave", "welcomed": True}
    # Carol's email is not sent again: her marker keeps her on the path she took.
    assert welcome_emails() == ["send_welcome_email:carol", "send_welcome_email:dave"]
    assert (patch_markers(carol), patch_markers(dave)) == ([vw.WELCOME_PATCH], [])

    # Closed runs recorded before the patch no longer replay; nothing replays closed runs
    # but rerun, so only --all shows them.
    code, report = durable_replay_json(monkeypatch, "3", "--all", "versioned_signup")
    assert (code, report["checked"]) == (1, 5)
    predating = (ann, bea, recorded_under_v1["cy"])
    assert broken_ids(report) == {(handle.workflow_id, handle.run_id) for handle in predating}
